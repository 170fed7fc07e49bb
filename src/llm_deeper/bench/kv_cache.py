"""`llm-deeper bench kv-cache`: what the KV cache buys, and what it costs.

1. Time per generated token against sequence length, with the cache (one position per step:
   flat in length) and without (the whole sequence again every step: linear in length), on
   SmolLM2-135M in the PyTorch engine.
2. KV-cache bytes per token for MHA, GQA, MQA and MLA at SmolLM2's shape and at a 7B Llama-2
   shape: computed from the config and measured from the allocated cache tensors.
Figures: kv_cache_time.png and kv_cache_bytes.png in --out.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..config import ModelConfig
from .common import json_line

SHAPES = {
    "smollm2-135m": dict(vocab_size=49152, context_length=8192, n_layer=30, n_head=9, d_model=576,
                         d_ff=1536, norm="rmsnorm", activation="swiglu", position="rope"),
    "llama2-7b": dict(vocab_size=32000, context_length=4096, n_layer=32, n_head=32, d_model=4096,
                      d_ff=11008, norm="rmsnorm", activation="swiglu", position="rope"),
}


def variants(shape: dict) -> dict[str, ModelConfig]:
    H, hd = shape["n_head"], shape["d_model"] // shape["n_head"]
    gqa = 3 if H % 3 == 0 else 8
    return {
        "MHA": ModelConfig(**shape, n_kv_head=H),
        f"GQA ({gqa} kv heads)": ModelConfig(**shape, n_kv_head=gqa),
        "MQA": ModelConfig(**shape, n_kv_head=1),
        # DeepSeek-V2's proportions: latent 4 x head_dim, RoPE key head_dim / 2
        "MLA": ModelConfig(**shape, attention="mla", kv_lora_rank=4 * hd,
                           qk_rope_head_dim=hd // 2, qk_nope_head_dim=hd, v_head_dim=hd),
    }


def run(lengths=(128, 256, 512, 1024, 2048), tokens: int = 4, out: str = "runs/bench",
        log=print) -> dict:
    import torch

    from ..pretrained import models
    from ..pretrained.weights import load_gguf
    from ..torch_engine.model import TorchGPT, make_cache

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"bench": "kv-cache", "bytes_per_token": {}}
    log("KV cache per token, float32 (bf16 halves these):")
    for shape_name, shape in SHAPES.items():
        for name, cfg in variants(shape).items():
            computed = 4 * cfg.kv_cache_numbers_per_token()
            measured = make_cache(cfg, 1, max_len=1, dtype=torch.float32,
                                  device="meta").nbytes_per_token()
            result["bytes_per_token"][f"{shape_name} {name}"] = measured
            log(f"  {shape_name:<13} {name:<18} {measured / 1024:>8.1f} KiB "
                f"(computed {computed / 1024:.1f})")
            assert measured == computed

    pre = load_gguf(models.gguf_file("smollm2-135m"))
    model = TorchGPT(pre.config, pre.params).eval()
    rows = []
    log(f"time per new token, SmolLM2-135M fp32, {tokens} tokens after a prompt of each length:")
    with torch.inference_mode():
        for L in lengths:
            ids = torch.randint(100, 40000, (1, L + tokens),
                                generator=torch.Generator().manual_seed(L))
            cache = make_cache(pre.config, 1, max_len=L + tokens)
            model(ids[:, :L], cache=cache)  # prefill (not timed)
            t0 = time.perf_counter()
            for i in range(tokens):
                model(ids[:, L + i:L + i + 1], cache=cache)
            cached = (time.perf_counter() - t0) / tokens
            t0 = time.perf_counter()
            for i in range(tokens):
                model(ids[:, :L + i + 1])
            uncached = (time.perf_counter() - t0) / tokens
            rows.append((L, cached, uncached))
            log(f"  length {L:>5}: with cache {1e3 * cached:8.1f} ms, "
                f"without {1e3 * uncached:8.1f} ms ({uncached / cached:.1f}x)")
    result["per_token_ms"] = {str(L): {"cached": round(1e3 * c, 2), "uncached": round(1e3 * u, 2)}
                              for L, c, u in rows}
    c_growth = rows[-1][1] / rows[0][1]
    u_growth = rows[-1][2] / rows[0][2]
    log(f"from length {rows[0][0]} to {rows[-1][0]} ({rows[-1][0] // rows[0][0]}x): cached time "
        f"x{c_growth:.2f}, uncached x{u_growth:.1f}")
    result.update(cached_growth=round(c_growth, 3), uncached_growth=round(u_growth, 2))
    _plot(rows, result["bytes_per_token"], out_dir)
    result["figures"] = [str(out_dir / "kv_cache_time.png"), str(out_dir / "kv_cache_bytes.png")]
    log(json_line(result))
    return result


def _plot(rows, bytes_per_token, out_dir: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    ax.plot(L, [1e3 * r[1] for r in rows], "o-", label="with KV cache")
    ax.plot(L, [1e3 * r[2] for r in rows], "s-", label="without (recompute all)")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("ms per new token")
    ax.set_title("SmolLM2-135M, CPU, float32")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "kv_cache_time.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=110)
    names = list(bytes_per_token)
    ax.barh(names, [v / 1024 for v in bytes_per_token.values()])
    ax.set_xscale("log")
    ax.set_xlabel("KiB per token (float32, all layers)")
    ax.set_title("KV cache size per token")
    fig.tight_layout()
    fig.savefig(out_dir / "kv_cache_bytes.png")
    plt.close(fig)
