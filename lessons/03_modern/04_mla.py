# %% [markdown]
# # Multi-head latent attention: a compressed KV cache
#
# MLA (DeepSeek-V2) caches one latent vector c_KV per token and layer, plus one small RoPE key,
# and rebuilds every head's keys and values from it. At decode time the up-projections fold
# into the query and the output ("absorbed"), so attention runs over the latents directly.
# See src/llm_deeper/torch_engine/mla.py for the math.

# %%
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.bench.kv_cache import SHAPES, variants
from llm_deeper.config import ModelConfig
from llm_deeper.torch_engine.generate import greedy_batch
from llm_deeper.torch_engine.model import TorchGPT, make_cache

from _common import check

print("KV cache per token (float32, all layers):")
for shape in SHAPES:
    for name, cfg in variants(SHAPES[shape]).items():
        print(f"  {shape:<13} {name:<18} {4 * cfg.kv_cache_numbers_per_token() / 1024:8.1f} KiB")

# %% [markdown]
# ## A small MLA model: naive, cached, absorbed — one function

# %%
cfg = ModelConfig(vocab_size=64, context_length=128, n_layer=2, n_head=4, d_model=64, d_ff=176,
                  norm="rmsnorm", activation="swiglu", position="rope", attention="mla",
                  kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16)
model = TorchGPT(cfg, seed=0, dtype=torch.float64).eval()
ids = torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    naive = model(ids)[0]
    model.mla_absorb = True
    cache = make_cache(cfg, 1, dtype=torch.float64)
    absorbed = torch.cat([model(ids[:, :8], cache=cache)[0]] +
                         [model(ids[:, t:t + 1], cache=cache)[0] for t in range(8, 24)], 1)
err = (naive - absorbed).abs().max().item()
print(f"max |naive - absorbed with latent cache| = {err:.2e}")
check("absorbed decoding over the latent cache equals the naive model", err < 1e-10)
mha_bytes = 2 * cfg.n_layer * cfg.n_head * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) * 8
print(f"latent cache: {cache.nbytes_per_token()} bytes/token vs {mha_bytes} for full K and V")
check("the latent cache is smaller than full K and V", cache.nbytes_per_token() < mha_bytes)

# %% [markdown]
# ## Generation with the compressed cache gives the naive model's tokens

# %%
out = greedy_batch(model, ids[:, :8], 16)[0].tolist()
model.mla_absorb = False
seq = ids[:, :8]
with torch.no_grad():
    for _ in range(16):
        seq = torch.cat([seq, model(seq)[0][:, -1:].argmax(-1)], 1)
check("greedy tokens: latent cache == recompute everything", out == seq[0, 8:].tolist())
print("generated:", out)
