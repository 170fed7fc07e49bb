# %% [markdown]
# # Attention by hand
#
# Four tokens, model width 4, one head. Attention lets each position build its output as a
# weighted average of the *values* of the positions it may see, with weights from how well its
# *query* matches their *keys*:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}} + M\right) V$$
#
# where $M$ is 0 where a query may look and $-\infty$ where it may not (the future).

# %%
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine.attention import attention_forward

from _common import check

np.set_printoptions(precision=3, suppress=True)
rng = np.random.default_rng(0)
T, d = 4, 4
x = rng.normal(size=(T, d)).round(2)
Wq, Wk, Wv = (rng.normal(size=(d, d)).round(2) * 0.5 for _ in range(3))
print("x (4 tokens x 4 features):\n", x)

# %% [markdown]
# ## 1. Project to queries, keys and values (PyTorch layout: y = x W^T)

# %%
Q, K, V = x @ Wq.T, x @ Wk.T, x @ Wv.T
print("Q:\n", Q)

# %% [markdown]
# ## 2. Scores: every query against every key, scaled by sqrt(d)
# Without the scale, the dot products of d-dimensional vectors grow like sqrt(d) and push the
# softmax into saturation, where its gradient vanishes.

# %%
S = Q @ K.T / np.sqrt(d)
print("scores QK^T/sqrt(d):\n", S)

# %% [markdown]
# ## 3. Causal mask and softmax: row t sees positions 0..t only

# %%
mask = np.triu(np.full((T, T), -np.inf), k=1)
P = np.exp(S + mask - (S + mask).max(-1, keepdims=True))
P /= P.sum(-1, keepdims=True)
print("attention weights (rows sum to 1, zeros above the diagonal):\n", P)
print("row sums:", P.sum(-1))
check("no weight on the future", np.all(P[np.triu_indices(T, 1)] == 0))

# %% [markdown]
# ## 4. Weighted average of the values, and the same thing from the package

# %%
O = P @ V
print("output (before the output projection):\n", O)
cfg = ModelConfig(vocab_size=2, context_length=T, n_layer=1, n_head=1, d_model=d)
params = {"a.wq": Wq, "a.wk": Wk, "a.wv": Wv, "a.wo": np.eye(d)}
y, cache = attention_forward(cfg, x[None], params, "a.")
check("numpy_engine.attention gives the same weights (it keeps them for the backward pass)",
      np.allclose(cache.P[0, 0, 0], P, rtol=0, atol=1e-12))
check("numpy_engine.attention gives the same output", np.allclose(y[0], O, rtol=0, atol=1e-12))

# %% [markdown]
# ## 5. Several heads, and grouped-query attention
# With 4 query heads the model width splits into 4 slices of head_dim = d / 4; each head attends
# on its own. Grouped-query attention (GQA) gives fewer key/value heads than query heads; each
# K/V head serves a group. The KV cache of a decoder stores K and V, so its size per token is
# 2 x n_layer x n_kv_head x head_dim numbers:

# %%
for name, n_kv in (("MHA", 32), ("GQA", 8), ("MQA", 1)):
    shape = ModelConfig(vocab_size=32000, context_length=4096, n_layer=32, n_head=32,
                        n_kv_head=n_kv, d_model=4096, d_ff=11008)  # a 7B Llama-like shape
    per_token = 2 * shape.kv_cache_numbers_per_token()  # 2 bytes per number (bf16)
    print(f"  {name}: n_head 32, n_kv_head {n_kv:>2}: "
          f"KV cache {per_token / 1024:.0f} KiB per token")
    check(f"{name}: 2 x n_layer x n_kv_head x head_dim numbers per token",
          shape.kv_cache_numbers_per_token() == 2 * 32 * n_kv * 128)

# %% [markdown]
# GQA is multi-head attention whose key/value heads are shared: copy each K/V head's weights to
# every query head of its group and you get an ordinary MHA layer with the same output. Here 4
# query heads share 2 K/V heads (head_dim 2).

# %%
d8, H, KV = 8, 4, 2
hd = d8 // H
x8 = rng.normal(size=(1, T, d8))
gqa = {"a.wq": rng.normal(size=(d8, d8)), "a.wk": rng.normal(size=(KV * hd, d8)),
       "a.wv": rng.normal(size=(KV * hd, d8)), "a.wo": rng.normal(size=(d8, d8))}
shared = lambda w: np.repeat(w.reshape(KV, hd, d8), H // KV, axis=0).reshape(H * hd, d8)
mha = {**gqa, "a.wk": shared(gqa["a.wk"]), "a.wv": shared(gqa["a.wv"])}
y_gqa, _ = attention_forward(ModelConfig(vocab_size=2, context_length=T, n_layer=1, n_head=H,
                                         n_kv_head=KV, d_model=d8), x8, gqa, "a.")
y_mha, _ = attention_forward(ModelConfig(vocab_size=2, context_length=T, n_layer=1, n_head=H,
                                         n_kv_head=H, d_model=d8), x8, mha, "a.")
print(f"K/V weights: GQA {gqa['a.wk'].shape} each, the equivalent MHA {mha['a.wk'].shape}")
check("GQA == MHA with each K/V head copied to its group", np.allclose(y_gqa, y_mha))

# %% [markdown]
# ## Exercises
# 1. Llama-2-70B has 80 layers and 8 key/value heads of head_dim 128 (64 query heads, d_model
#    8,192). Predict its KV cache per token in bf16, then check your number with
#    `2 * ModelConfig(vocab_size=32000, context_length=4096, n_layer=80, n_head=64, n_kv_head=8,
#    d_model=8192, d_ff=28672).kv_cache_numbers_per_token()` (answer: 2 x 80 x 8 x 128 x 2
#    bytes = 327,680, 320 KiB).
# 2. Without the scale: replace `np.sqrt(d)` by 1 in section 2 and predict the effect on row 3
#    of the weights before running (the scores double, so the largest weight of each row grows:
#    the softmax gets sharper). Which check stops the lesson? (The comparison with the
#    package's weights in section 4.)
# 3. Make query 0 see the future too (drop the mask). Which check fails first? ("no weight on the
#    future"; every row but the last changes.)
