"""`llm-deeper bench decode`: greedy decode tokens/s of the PyTorch engine against HF
transformers `generate` on SmolLM2-135M-Instruct (both float32, both reading the same GGUF), at
batch 1 and batch 8, alternating in one run; and prefill tokens/s on a 128-token prompt (as
llama.cpp's `llama-bench -p 128` measures it: `bench llama-cpp` puts the two side by side).

Decoding one token reads every weight once, so the ceiling is memory bandwidth / weight bytes;
the benchmark measures the bandwidth (a large array copy) and says how close each engine gets.
Prefill is the opposite regime: 128 rows per weight read, compute-bound matrix products.

With `--quant int8` a third contestant joins: our engine with INT8 weights and activations
(quantization/torch_int8.py), timed in the same rounds; the JSON line gives its tokens/s, its
ratio to our float32 decode, whether its greedy tokens are the float32 ones, and both models'
perplexity on the same tokens of the works' validation text (2,048 by default, window 512,
stride 256).
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


def works_perplexity(model, tokenizer, n_tokens: int = 2048) -> float:
    """Perplexity on the first n_tokens of the works' validation split (the last 10 %)."""
    import numpy as np

    from ..data import load_text
    from ..evaluation.perplexity import perplexity, torch_logprobs

    text = load_text("works")
    ids = np.asarray(tokenizer.encode(text[int(len(text) * 0.9):][:20 * n_tokens]))[:n_tokens]
    return perplexity(torch_logprobs(model), ids, 512, 256).perplexity


def run(model: str = "smollm2-135m", batch_sizes=(1, 8), new_tokens: int = 64, rounds: int = 5,
        device: str = "cpu", prefill_tokens: int = 128, quant: str | None = None,
        ppl_tokens: int = 2048, log=print) -> dict:
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
    contestants = {"ours": ours}
    if quant:
        from ..quantization import torch_int8

        if device != "cpu":
            raise UserError(f"--quant {quant} runs PyTorch's CPU integer kernels: --device cpu.")
        contestants[quant] = torch_int8.quantize_for_inference(
            TorchGPT(pre.config, pre.params), quant,
            torch_int8.calibration_ids(pre.tokenizer, pre.chat_template))
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              dtype=torch.float32).eval().to(device)
    ids = torch.tensor([pre.tokenizer.encode(PROMPT)], device=device)
    weight_bytes = sum(v.nbytes for v in pre.params.values())
    bw = memory_bandwidth_gbs()
    ceiling = bw * 1e9 / weight_bytes
    log(f"bench decode: {model} fp32 ({weight_bytes / 1e6:.0f} MB of weights), prompt "
        f"{ids.shape[1]} tokens, {new_tokens} new tokens greedy, {rounds} alternating rounds; "
        f"memory bandwidth {bw:.1f} GB/s -> batch-1 ceiling ~{ceiling:.0f} tokens/s")

    def greedy(m):
        return lambda x: greedy_batch(m, x, new_tokens)

    @torch.inference_mode()
    def hf_fn(x):
        return hf.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=0)[:, x.shape[1]:]

    result = {"bench": "decode", "model": model, "device": device, "new_tokens": new_tokens,
              "memory_bandwidth_gbs": round(bw, 1),
              "batch1_ceiling_tokens_per_s": round(ceiling, 1)}
    fns = {**{k: greedy(m) for k, m in contestants.items()}, "hf": hf_fn}
    for B in batch_sizes:
        x = ids.repeat(B, 1)
        out = {k: fn(x).cpu() for k, fn in fns.items()}  # warm-up, and the outputs must agree
        same = bool(torch.equal(out["ours"], out["hf"]))
        times = {k: [] for k in fns}
        for _ in range(rounds):
            for k, fn in fns.items():
                times[k].append(_t(lambda x=x, fn=fn: fn(x)))
        tps = {k: B * new_tokens / median(v) for k, v in times.items()}
        ratio = tps["ours"] / tps["hf"]
        log(f"batch {B}: ours {tps['ours']:.1f} tokens/s, HF generate {tps['hf']:.1f} tokens/s, "
            f"ratio {ratio:.2f}x, same tokens: {same}"
            + (f"; ours at {100 * tps['ours'] / ceiling:.0f} % of the bandwidth ceiling"
               if B == 1 else ""))
        result.update({f"batch{B}_ours_tokens_per_s": round(tps["ours"], 1),
                       f"batch{B}_hf_tokens_per_s": round(tps["hf"], 1),
                       f"batch{B}_ratio": round(ratio, 3), f"batch{B}_same_tokens": same})
        if quant:
            q_ratio = tps[quant] / tps["ours"]
            agree = float((out[quant] == out["ours"]).float().mean())
            log(f"batch {B}: ours {quant} {tps[quant]:.1f} tokens/s = {q_ratio:.2f}x our float32; "
                f"{100 * agree:.0f} % of its greedy tokens are float32's")
            result.update({f"batch{B}_{quant}_tokens_per_s": round(tps[quant], 1),
                           f"batch{B}_{quant}_vs_fp32": round(q_ratio, 3),
                           f"batch{B}_{quant}_token_agreement": round(agree, 4)})
    for k, m in contestants.items():
        pp = prefill_tokens_per_s(m, prefill_tokens, rounds)
        log(f"prefill {prefill_tokens} tokens: {k} {pp:.0f} tokens/s")
        result[f"prefill{prefill_tokens}_{k}_tokens_per_s"] = round(pp, 1)
    if quant:
        q = contestants[quant]
        ppl = {k: works_perplexity(m, pre.tokenizer, ppl_tokens) for k, m in contestants.items()}
        change = 100 * (ppl[quant] / ppl["ours"] - 1)
        log(f"perplexity (works val, {ppl_tokens:,} tokens): float32 {ppl['ours']:.3f}, {quant} "
            f"{ppl[quant]:.3f} ({change:+.2f} %); weights read per token: "
            f"{torch_int8.weight_bytes(q) / 1e6:.0f} MB vs "
            f"{torch_int8.weight_bytes(ours) / 1e6:.0f} MB")
        result.update({"perplexity_fp32": round(ppl["ours"], 4),
                       f"perplexity_{quant}": round(ppl[quant], 4),
                       f"perplexity_{quant}_change_pct": round(change, 3),
                       "perplexity_tokens": ppl_tokens,
                       f"{quant}_weight_bytes": torch_int8.weight_bytes(q),
                       "fp32_weight_bytes": torch_int8.weight_bytes(ours)})
    log(json_line(result))
    return result
