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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import ModelConfig
from llm_deeper.torch_engine.model import TorchGPT, make_cache

from _common import QUICK, check

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
check("the cache changes nothing but speed", err < 1e-4)

# %% [markdown]
# ## Time per new token as the sequence grows

# %%
lengths = (64, 128, 256) if QUICK else (64, 128, 256, 512, 1000)
with torch.inference_mode():
    for L in lengths:
        cache = make_cache(cfg, 1)
        model(ids[:, :L], cache=cache)
        t0 = time.perf_counter()
        model(ids[:, L:L + 1], cache=cache)
        cached = time.perf_counter() - t0
        t0 = time.perf_counter()
        model(ids[:, :L + 1])
        uncached = time.perf_counter() - t0
        print(f"  length {L:>4}: cached {1e3 * cached:6.2f} ms, recompute {1e3 * uncached:7.2f} ms")

# %% [markdown]
# ## What the cache costs in memory

# %%
per_token = 4 * cfg.kv_cache_numbers_per_token()
print(f"this model: {per_token} bytes per token (float32); "
      f"1,000 tokens: {per_token * 1000 / 1e6:.2f} MB")
cache = make_cache(cfg, 1, max_len=1000)
check("allocated = computed", cache.k.nbytes + cache.v.nbytes == per_token * 1000)
