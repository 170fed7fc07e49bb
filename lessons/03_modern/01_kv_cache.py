# %% [markdown]
# # The KV cache: O(n^2) becomes O(n)
#
# Generating token n+1 needs attention over the keys and values of tokens 1..n. Recomputing
# them every step costs work proportional to n per step (n^2 in total); keeping them costs
# memory instead: 2 x n_layer x n_kv_head x head_dim numbers per token.

# %%
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper import sizing
from llm_deeper.bench.kv_cache import growth, measure, stats
from llm_deeper.config import ModelConfig
from llm_deeper.torch_engine.model import TorchGPT, make_cache

from _common import OUT, QUICK, check

cfg = ModelConfig(vocab_size=256, context_length=1024, n_layer=4, n_head=8, n_kv_head=2,
                  d_model=256, d_ff=688, norm="rmsnorm", activation="swiglu", position="rope")
model = TorchGPT(cfg, seed=0).eval()
ids = torch.randint(0, 256, (1, 1024), generator=torch.Generator().manual_seed(0))

# %% [markdown]
# ## Same logits, either way

# %%
with torch.inference_mode():
    full = model(ids[:, :64])[0]
    cache = make_cache(cfg, 1)
    steps = [model(ids[:, :32], cache=cache)[0]] + [model(ids[:, t:t + 1], cache=cache)[0]
                                                   for t in range(32, 64)]
err = (torch.cat(steps, 1) - full).abs().max().item()
print(f"max |cached - uncached| over 64 positions: {err:.2e}")
check("the cache changes nothing but speed (float32, 1e-4)", err < 1e-4)

# %% [markdown]
# ## The work per new token
# With $N$ the weights that multiply (every matrix; the tied embedding once, as the head) and a
# sequence of $T = L + 1$ tokens, one new token costs
#
# * with the cache: $2N$ FLOPs for the matrices (a multiply and an add per weight), plus
#   $QK^\top$ and $PV$ of one query against $T$ keys: $4\,n_\text{layer}\,T\,d$;
# * without it: the whole sequence again, $2NT + 4\,n_\text{layer}\,T^2 d$ (counting the full
#   $T \times T$ square of scores; a causal kernel may skip the upper half, which halves that
#   term but not its growth).
#
# The ratio of the two grows like $T$: the cache turns $O(n)$ work per token into $O(1)$ for
# the matrices and $O(n)$ only for reading the cached keys and values.

# %%
N = sum(p.numel() for name, p in model.named_parameters() if "norm" not in name)
for L in (64, 256, 1000):
    T = L + 1
    f_cached = 2 * N + 4 * cfg.n_layer * T * cfg.d_model
    f_full = 2 * N * T + 4 * cfg.n_layer * T * T * cfg.d_model
    print(f"  L = {L:>4}: cached {f_cached / 1e6:6.2f} MFLOPs, recompute {f_full / 1e6:8.1f} "
          f"MFLOPs ({f_full / f_cached:.0f}x)")

# %% [markdown]
# ## Why one timing is not a measurement
# A clock read around one call measures that call *and* whatever else happened meanwhile: the
# first call at a new shape allocates memory and finds cold CPU caches; the OS may move the
# process to another core or run something else for a few milliseconds; on a shared machine,
# other processes take the cores (this lesson was written on 2 cores shared with five other
# jobs). Time the same forward pass several times in a row:

# %%
with torch.inference_mode():
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        model(ids[:, :200])  # a shape this model has not seen yet
        times.append(1e3 * (time.perf_counter() - t0))
print("one forward pass of 200 tokens, 5 times (ms):", " ".join(f"{t:.1f}" for t in times))
print(f"first {times[0]:.1f} ms, median {np.median(times):.1f} ms, spread (max / min) "
      f"{max(times) / min(times):.2f}")

# %% [markdown]
# So `bench.kv_cache.measure` (the same function `llm-deeper bench kv-cache` runs on
# SmolLM2) does at every length: an untimed warm-up call of each kind, then several timed
# rounds, cached and uncached taking turns (a slow spell hits both), each round long enough
# (here at least 10 ms: a cached step takes one or two milliseconds, and one interruption by
# the OS can take ten) to report a mean time per token. It reports the **median** of the rounds
# (one slow round does not move it) and the **interquartile range** (the middle half: how much
# the rounds disagree). Absolute times
# depend on the machine and its load; what must hold anywhere is the *shape*: the time without
# the cache grows with the length much faster than with it. The check compares the speed-up
# (uncached / cached) at the longest length with that at the shortest, with a margin, and never
# an absolute time.

# %%
lengths = (64, 256) if QUICK else (64, 128, 256, 512, 1000)
tokens, repeats = (1, 5) if QUICK else (4, 7)
print(f"time per new token, median (interquartile range) of {repeats} rounds, after a warm-up:")
rows = measure(model, cfg, lengths, tokens, repeats, warmup=1, min_round=0.01, log=print)
speedup = [stats(r["uncached"])[0] / stats(r["cached"])[0] for r in rows]
g_cached, g_uncached = growth(rows, "cached"), growth(rows, "uncached")
print(f"length x{lengths[-1] / lengths[0]:g}: cached time x{g_cached:.2f}, uncached "
      f"x{g_uncached:.2f}; speed-up {speedup[0]:.1f}x -> {speedup[-1]:.1f}x")
check("without the cache the time per token grows faster with length than with it "
      "(speed-up at the longest length > 1.3 x the speed-up at the shortest)",
      speedup[-1] > 1.3 * speedup[0])
if not QUICK:
    from llm_deeper.figures.kv import draw_times

    draw_times(rows, OUT / "kv_cache_time.png", "the lesson's 4-layer model, float32, CPU")
    print(f"figure: {OUT / 'kv_cache_time.png'}")

# %% [markdown]
# The cached time is not flat either: each new query still reads all $L$ cached keys and
# values, $4\,n_\text{layer}\,T\,d$ FLOPs, which for this small model ($2N \approx 5.7$ MFLOPs)
# is about 40 % of a step's work at $L = 1000$. For SmolLM2 ($2N \approx 270$ MFLOPs,
# $4 \cdot 30 \cdot 576 = 69{,}120$ FLOPs per cached token) it is a third of the work at 2,048
# tokens: docs/figures/kv_cache_time.png, measured with `llm-deeper bench kv-cache`.
#
# ## What the cache costs in memory
# K and V for every layer, KV head and position: $2 \cdot n_\text{layer} \cdot n_\text{kv} \cdot
# d_\text{head}$ numbers per token. Grouped-query attention (`03_gqa.py`) shares a K/V head
# among several query heads, MQA keeps one, MLA (`04_mla.py`) caches a compressed latent
# instead. The allocated tensors of the engine against the calculator (`sizing.kv_bytes`,
# independent code):

# %%
for n_kv in (8, 2, 1):
    c = cfg.replace(n_kv_head=n_kv)
    kv = make_cache(c, 1, max_len=1000)
    allocated = kv.k.nbytes + kv.v.nbytes
    name = {8: "MHA", 2: "GQA", 1: "MQA"}[n_kv]
    print(f"  {name}, n_kv_head {n_kv}: {allocated // 1000:>6,} bytes per token (float32), "
          f"1,000 tokens: {allocated / 1e6:.3f} MB")
    check(f"{name}: allocated = 2 x n_layer x n_kv_head x head_dim x 4 bytes x 1,000 = sizing",
          allocated == 2 * c.n_layer * n_kv * c.head_dim * 4 * 1000
          == sizing.kv_bytes(sizing.from_config(c), 1000, 1, "fp32"))

# %% [markdown]
# At real sizes (docs/figures/kv_bytes.png): Llama-3-8B caches 128 KiB per token in bf16 with
# its 8 KV heads (512 KiB as MHA), 1 GB per 8,192-token sequence; DeepSeek-V2-Lite's MLA
# caches 30 KiB, 9x less than MHA over its 16 heads.

# %% [markdown]
# ## Exercises
# 1. Predict the cache of this model with `n_kv_head=4` for 1,000 tokens in float32, then add 4
#    to the loop over `n_kv` above: the check tells you whether you were right (answer:
#    2 x 4 x 4 x 32 x 4 x 1,000 = 4,096,000 bytes).
# 2. Check the FLOP formulas with torch's own counter: wrap one cached step and one full pass
#    in `with torch.utils.flop_counter.FlopCounterMode(display=False) as c:` and compare
#    `c.get_total_flops()` with the printed MFLOPs (you should find them equal to the last digit:
#    5,935,104 and 385,781,760 at L = 64). Its first use takes seconds: it loads torch's compiler.
# 3. Run the timing with `repeats = 1` several times, then with 7: how much do the speed-ups
#    printed move between runs in each case? (The median of 7 moves much less; on a busy machine
#    a single round can even put the cached time above a longer length's.)
