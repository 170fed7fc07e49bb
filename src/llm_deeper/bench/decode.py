"""`llm-deeper bench decode`: greedy decode tokens/s of the PyTorch engine against HF
transformers `generate` on SmolLM2-135M-Instruct (both float32, both reading the same GGUF), at
batch 1 and batch 8, alternating in one run; and prefill tokens/s on a 128-token prompt (as
llama.cpp's `llama-bench -p 128` measures it: `bench llama-cpp` puts the two side by side).

Decoding one token reads every weight once, so the ceiling is memory bandwidth / weight bytes;
the benchmark measures the bandwidth (a large array copy) and says how close each engine gets.
Prefill is the opposite regime: 128 rows per weight read, compute-bound matrix products.
"""

from __future__ import annotations

import time

from ..errors import UserError
from .common import json_line, median

PROMPT = ("<|im_start|>user\nTell me a short story about a lighthouse keeper.<|im_end|>\n"
          "<|im_start|>assistant\n")


def memory_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    """Read bandwidth as decoding uses it: a sum over a 512 MB array (far larger than the
    caches) on all of torch's threads. (A single-threaded copy, measured here before, reads
    ~15 % slower than two threads can, and llama.cpp decoded faster than that "ceiling".)"""
    import torch

    a = torch.ones(mb * 1024 * 1024 // 4)
    a.sum()
    best = min(_t(a.sum) for _ in range(repeats))
    return a.nbytes / best / 1e9


def _t(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def prefill_tokens_per_s(model, n_tokens: int = 128, rounds: int = 5) -> float:
    """Median tokens/s of prefilling n_tokens random ids into an empty cache (the last row's
    logits only, as generation wants them)."""
    import torch

    from ..torch_engine.generate import prefill
    from ..torch_engine.model import make_cache

    p = next(model.parameters())
    ids = torch.randint(0, model.cfg.vocab_size, (1, n_tokens),
                        generator=torch.Generator().manual_seed(0)).to(p.device)

    @torch.inference_mode()
    def once():
        prefill(model, ids, make_cache(model.cfg, 1, n_tokens, p.dtype, p.device))
        if p.device.type == "cuda":
            torch.cuda.synchronize()

    once()
    return n_tokens / median([_t(once) for _ in range(rounds)])


def run(model: str = "smollm2-135m", batch_sizes=(1, 8), new_tokens: int = 64, rounds: int = 5,
        device: str = "cpu", prefill_tokens: int = 128, log=print) -> dict:
    import torch

    from ..pretrained import models
    from ..pretrained.weights import load_gguf
    from ..torch_engine.generate import greedy_batch
    from ..torch_engine.model import TorchGPT

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is available here.")
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise UserError("bench decode compares with transformers: 'uv sync --extra hf'.") from None
    path = models.gguf_file(model, "bench decode reads GGUF files")
    pre = load_gguf(path)
    ours = TorchGPT(pre.config, pre.params).eval().to(device).fuse_for_inference()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              dtype=torch.float32).eval().to(device)
    ids = torch.tensor([pre.tokenizer.encode(PROMPT)], device=device)
    weight_bytes = sum(v.nbytes for v in pre.params.values())
    bw = memory_bandwidth_gbs()
    ceiling = bw * 1e9 / weight_bytes
    log(f"bench decode: {model} fp32 ({weight_bytes / 1e6:.0f} MB of weights), prompt "
        f"{ids.shape[1]} tokens, {new_tokens} new tokens greedy, {rounds} alternating rounds; "
        f"memory bandwidth {bw:.1f} GB/s -> batch-1 ceiling ~{ceiling:.0f} tokens/s")

    def ours_fn(x):
        return greedy_batch(ours, x, new_tokens)

    @torch.inference_mode()
    def hf_fn(x):
        return hf.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=0)[:, x.shape[1]:]

    result = {"bench": "decode", "model": model, "device": device, "new_tokens": new_tokens,
              "memory_bandwidth_gbs": round(bw, 1),
              "batch1_ceiling_tokens_per_s": round(ceiling, 1)}
    for B in batch_sizes:
        x = ids.repeat(B, 1)
        a, b = ours_fn(x), hf_fn(x)  # warm-up, and the outputs must agree
        same = bool(torch.equal(a.cpu(), b.cpu()))
        times = {"ours": [], "hf": []}
        for _ in range(rounds):
            times["ours"].append(_t(lambda x=x: ours_fn(x)))
            times["hf"].append(_t(lambda x=x: hf_fn(x)))
        tps = {k: B * new_tokens / median(v) for k, v in times.items()}
        ratio = tps["ours"] / tps["hf"]
        log(f"batch {B}: ours {tps['ours']:.1f} tokens/s, HF generate {tps['hf']:.1f} tokens/s, "
            f"ratio {ratio:.2f}x, same tokens: {same}"
            + (f"; ours at {100 * tps['ours'] / ceiling:.0f} % of the bandwidth ceiling"
               if B == 1 else ""))
        result.update({f"batch{B}_ours_tokens_per_s": round(tps["ours"], 1),
                       f"batch{B}_hf_tokens_per_s": round(tps["hf"], 1),
                       f"batch{B}_ratio": round(ratio, 3), f"batch{B}_same_tokens": same})
    pp = prefill_tokens_per_s(ours, prefill_tokens, rounds)
    log(f"prefill {prefill_tokens} tokens: ours {pp:.0f} tokens/s")
    result[f"prefill{prefill_tokens}_ours_tokens_per_s"] = round(pp, 1)
    log(json_line(result))
    return result
