"""`llm-deeper bench kv-cache`: what the KV cache buys, and what it costs.

1. Time per generated token against context length, with the cache (one new position per step:
   nearly flat in length) and without (the whole sequence again every step: growing with
   length), on SmolLM2-135M in the PyTorch engine.
2. KV-cache bytes per token for MHA, GQA, MQA and MLA: computed from the config (sizing.py) and
   measured from the cache tensors the engine allocates (on the meta device: no memory).

One timing is not a measurement. The first call at a new shape allocates buffers and fills the
CPU's caches; the OS, a garbage collection or a neighbour's process can take the core for
milliseconds at any moment. So `measure` runs, at every length, `warmup` untimed calls, then
`repeats` timed rounds, cached and uncached taking turns so that a slow spell of the machine
hits both; a round is long enough (`min_round`) that one interruption is a small part of it.
What is reported is the median of the rounds (one slow round does not move it) and the
interquartile range (the middle half of the rounds: the spread). Figures: kv_cache_time.png and
kv_bytes.png in --out, drawn by the same functions as docs/figures (figures/kv.py).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..figures import pyplot, save
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


def measure(model, cfg: ModelConfig, lengths, tokens: int = 4, repeats: int = 5,
            warmup: int = 1, min_round: float = 0.0, seed: int = 0, log=None,
            clock=time.perf_counter) -> list[dict]:
    """Seconds per new token after a prompt of each length, with and without the KV cache.

    Returns one row per length: {"length": L, "cached": [...], "uncached": [...]}, one entry per
    timed round (`repeats` of them). A round generates the `tokens` new tokens after the prompt
    (again and again, until it has lasted `min_round` seconds as the warm-up timed it: a round of
    a few milliseconds is at the mercy of one interruption) and reports its time per token.
    Cached: the prompt is prefilled into a cache once (not timed); each pass rewinds the cache to
    the prompt's end (cache.pos = L) and decodes the same tokens again, one position per call.
    Uncached: each new token runs the whole sequence so far. Before the timed rounds, `warmup`
    untimed calls of each (the first calls at a shape allocate). clock: wall-clock by default;
    time.process_time counts only this process's CPU time (with one thread, what the work took
    on a machine shared with other jobs, without the time they held the cores)."""
    import math

    import torch

    from ..torch_engine.model import make_cache

    def cached(ids, cache, L, n):
        t0 = clock()
        for i in range(n):
            if i % tokens == 0:
                cache.pos = L  # rewind: positions L.. are written again with the same values
            model(ids[:, L + i % tokens:L + i % tokens + 1], cache=cache)
        return (clock() - t0) / n

    def uncached(ids, L, n):
        t0 = clock()
        for i in range(n):
            model(ids[:, :L + i % tokens + 1])
        return (clock() - t0) / n

    rows = []
    with torch.inference_mode():
        for L in lengths:
            ids = torch.randint(0, cfg.vocab_size, (1, L + tokens),
                                generator=torch.Generator().manual_seed(seed + L))
            cache = make_cache(cfg, 1, max_len=L + tokens)
            model(ids[:, :L], cache=cache)  # prefill: not timed
            t_c = t_u = 1.0
            for _ in range(warmup):
                t_c, t_u = cached(ids, cache, L, 1), uncached(ids, L, 1)
            n_c, n_u = (tokens * max(1, math.ceil(min_round / (tokens * t))) for t in (t_c, t_u))
            row = {"length": L, "cached": [], "uncached": []}
            for _ in range(repeats):  # taking turns: a slow spell hits both
                row["cached"].append(cached(ids, cache, L, n_c))
                row["uncached"].append(uncached(ids, L, n_u))
            rows.append(row)
            if log:
                c, u = stats(row["cached"]), stats(row["uncached"])
                log(f"  length {L:>5}: with cache {1e3 * c[0]:8.2f} ms "
                    f"(IQR {1e3 * c[1]:.2f}-{1e3 * c[2]:.2f}), without {1e3 * u[0]:9.2f} ms "
                    f"(IQR {1e3 * u[1]:.2f}-{1e3 * u[2]:.2f}), {u[0] / c[0]:.1f}x")
    return rows


def stats(xs) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of the timed rounds."""
    q1, med, q3 = np.percentile(np.asarray(xs, dtype=float), [25, 50, 75])
    return float(med), float(q1), float(q3)


def growth(rows: list[dict], kind: str) -> float:
    """Median time per token at the longest length over that at the shortest."""
    return stats(rows[-1][kind])[0] / stats(rows[0][kind])[0]


def smollm2():
    """SmolLM2-135M in the PyTorch engine, float32, evaluation mode."""
    from ..pretrained import models
    from ..pretrained.weights import load_gguf
    from ..torch_engine.model import TorchGPT

    pre = load_gguf(models.gguf_file("smollm2-135m"))
    return TorchGPT(pre.config, pre.params).eval(), pre.config


def run(lengths=(128, 256, 512, 1024, 2048), tokens: int = 4, out: str = "runs/bench",
        log=print, repeats: int = 5, warmup: int = 1, min_round: float = 0.2) -> dict:
    import torch

    from ..torch_engine.model import make_cache

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

    model, cfg = smollm2()
    log(f"time per new token, SmolLM2-135M fp32, {tokens} new token(s) after a prompt of each "
        f"length; median and interquartile range of {repeats} rounds (each >= {min_round:g} s) "
        f"after {warmup} warm-up call(s):")
    rows = measure(model, cfg, lengths, tokens, repeats, warmup, min_round, log=log)
    result["per_token_ms"] = {
        str(r["length"]): {kind: {k: round(1e3 * v, 3) for k, v in
                                  zip(("median", "q1", "q3"), stats(r[kind]))}
                           for kind in ("cached", "uncached")} for r in rows}
    c_growth, u_growth = growth(rows, "cached"), growth(rows, "uncached")
    L0, L1 = rows[0]["length"], rows[-1]["length"]
    log(f"from length {L0} to {L1} ({L1 / L0:g}x): cached time x{c_growth:.2f}, "
        f"uncached x{u_growth:.1f} (medians)")
    result.update(cached_growth=round(c_growth, 3), uncached_growth=round(u_growth, 2),
                  repeats=repeats, warmup=warmup, tokens=tokens, min_round=min_round,
                  threads=torch.get_num_threads())
    draw_times(rows, out_dir / "kv_cache_time.png",
               f"SmolLM2-135M, float32, CPU ({torch.get_num_threads()} threads)")
    draw_bytes(out_dir / "kv_bytes.png")
    result["figures"] = [str(out_dir / "kv_cache_time.png"), str(out_dir / "kv_bytes.png")]
    log(json_line(result))
    return result


# --- the two figures (docs/figures/ through figures/kv.py, and `bench kv-cache --out`) -------

# The published config.json values of two real models (the same as tests/test_calc.py's)
LLAMA3_8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096,
                 intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, max_position_embeddings=8192, tie_word_embeddings=False)
DEEPSEEK_V2_LITE = dict(model_type="deepseek_v2", vocab_size=102400, hidden_size=2048,
                        intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=27,
                        num_attention_heads=16, num_key_value_heads=16, n_shared_experts=2,
                        n_routed_experts=64, num_experts_per_tok=6, first_k_dense_replace=1,
                        moe_layer_freq=1, kv_lora_rank=512, q_lora_rank=None,
                        qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128,
                        max_position_embeddings=163840, tie_word_embeddings=False)


def kv_variants(dtype: str = "bf16") -> list[tuple[str, str, object, bool, int]]:
    """(model, attention, Arch, as_mha, bytes per token) for MHA, GQA and MQA at Llama-3-8B's
    shape and MHA vs MLA at DeepSeek-V2-Lite's (its MHA: K of 128 + 64, V of 128 per head)."""
    from .. import sizing

    llama = sizing.from_hf(LLAMA3_8B, "Llama-3-8B")
    ds = sizing.from_hf(DEEPSEEK_V2_LITE, "DeepSeek-V2-Lite")
    rows = [("Llama-3-8B", f"MHA ({llama.n_head} KV heads)",
             dataclasses.replace(llama, n_kv_head=llama.n_head), False),
            ("Llama-3-8B", f"GQA ({llama.n_kv_head} KV heads, as released)", llama, False),
            ("Llama-3-8B", "MQA (1 KV head)", dataclasses.replace(llama, n_kv_head=1), False),
            ("DeepSeek-V2-Lite", f"MHA ({ds.n_head} heads)", ds, True),
            ("DeepSeek-V2-Lite", f"MLA (latent {ds.mla.kv_lora_rank} + RoPE key "
             f"{ds.mla.qk_rope_head_dim}, as released)", ds, False)]
    return [(m, kind, a, mha, int(sizing.kv_bytes(a, 1, 1, dtype, as_mha=mha)))
            for m, kind, a, mha in rows]


def draw_bytes(path: Path, dtype: str = "bf16") -> Path:
    """Left: KV-cache bytes per token; right: GB for one sequence against its length, with the
    weights of each model beside them."""
    from .. import sizing

    plt = pyplot()
    rows = kv_variants(dtype)
    colours = ["#4c72b0", "#55a868", "#c44e52", "#8172b2", "#dd8452"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1, 1.1]})
    labels = [f"{m}\n{kind}" for m, kind, *_ in rows]
    kib = [b / 1024 for *_, b in rows]
    ax.barh(labels[::-1], kib[::-1], color=colours[::-1])
    mha = {m: b for m, kind, _, _, b in rows if kind.startswith("MHA")}
    for i, (m, kind, _, _, b) in enumerate(rows[::-1]):
        share = "" if kind.startswith("MHA") else f" (1/{mha[m] / b:.1f} of MHA)"
        ax.text(b / 1024 * 1.06, i, f"{b / 1024:,.1f} KiB{share}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(kib) / 2, max(kib) * 12)
    ax.tick_params(axis="y", labelsize=8)
    ax.set(xlabel=f"KiB per token, all layers ({dtype})", title="KV cache per token")
    lengths = [2 ** k for k in range(10, 18)]  # 1k .. 128k tokens
    for (m, kind, a, mha, _), c in zip(rows, colours):
        bx.plot(lengths, [sizing.kv_bytes(a, n, 1, dtype, as_mha=mha) / 1e9 for n in lengths],
                "o-", ms=3, color=c, label=f"{m}: {kind.split(' (')[0]}")
    for (m, a), ls in ((("Llama-3-8B", rows[1][2]), ":"), (("DeepSeek-V2-Lite", rows[4][2]), "--")):
        w = sizing.params(a)["total"] * sizing.BITS[dtype] / 8 / 1e9
        bx.axhline(w, color="grey", ls=ls, lw=1)
        bx.text(lengths[0], w * 1.08, f"{m} weights, {w:.0f} GB", fontsize=8, color="grey")
    bx.set_xscale("log", base=2)
    bx.set_yscale("log")
    bx.set_xticks(lengths, [f"{n // 1024}k" for n in lengths])
    bx.set(xlabel="tokens in the sequence (batch 1)", ylabel=f"GB ({dtype})",
           title="KV cache for one sequence")
    bx.grid(alpha=0.3, which="both")
    bx.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save(fig, path)


def draw_times(rows: list[dict], path: Path, title: str, note: str = "") -> Path:
    """Time per new token against context length (rows of bench.kv_cache.measure): medians,
    the interquartile range as error bars, log-log axes (where slope 1 is linear growth)."""
    import numpy as np

    plt = pyplot()
    L = np.array([r["length"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for kind, marker, label in (("uncached", "s", "without a cache (recompute the sequence)"),
                                ("cached", "o", "with the KV cache")):
        med, q1, q3 = (1e3 * np.array(v) for v in zip(*(stats(r[kind]) for r in rows)))
        ax.errorbar(L, med, yerr=[med - q1, q3 - med], fmt=f"{marker}-", capsize=3, label=label)
        if kind == "uncached":
            ref = med[0] * L / L[0]
            ax.plot(L, ref, ":", color="grey", label="proportional to length (slope 1)")
    n = len(rows[0]["cached"])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(L, [str(x) for x in L])
    ax.set(xlabel="tokens already in the sequence", ylabel="ms per new token (log scale)",
           title=f"{title}\nmedian of {n} rounds{', ' + note if note else ''}, bars: "
                 "interquartile range")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
