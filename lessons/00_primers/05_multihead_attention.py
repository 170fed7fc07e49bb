# %% [markdown]
# # Multi-head attention, one head at a time
#
# One attention head computes one weighting of the past per token. **Multi-head** attention
# runs `n_head` of them side by side on slices of the model width, so that one head can follow
# the previous word while another looks for the subject of the sentence. With
# $d = n_\text{head} \cdot d_\text{head}$:
#
# $$\mathrm{head}_h = \mathrm{softmax}\!\left(\frac{Q_h K_h^\top}{\sqrt{d_\text{head}}} + M\right)
# V_h, \qquad \mathrm{MHA}(x) = [\mathrm{head}_1, \dots, \mathrm{head}_{n_\text{head}}]\,W_o^\top$$
#
# where $Q_h$ is columns $h\,d_\text{head} .. (h+1)\,d_\text{head}$ of $Q = xW_q^\top$. We do it
# step by step with a Python loop over the heads, print every shape, and check the result
# against the package, which does all heads at once with reshapes (`02_numpy.py`, section 6).

# %%
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine.attention import attention_forward
from llm_deeper.params import param_shapes

from _common import check

np.set_printoptions(precision=3, suppress=True)
rng = np.random.default_rng(0)
B, T, d, H = 2, 6, 16, 4
hd = d // H
x = rng.normal(size=(B, T, d))
Wq, Wk, Wv, Wo = (rng.normal(size=(d, d)) * d ** -0.5 for _ in range(4))
causal = np.tril(np.ones((T, T), dtype=bool))


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


print(f"batch B={B}, tokens T={T}, width d={d}, n_head={H}, head_dim={hd}")

# %% [markdown]
# ## 1. Project: one matrix each for queries, keys and values, all heads at once

# %%
Q, K, V = x @ Wq.T, x @ Wk.T, x @ Wv.T
print(f"x {x.shape} -> Q {Q.shape}, K {K.shape}, V {V.shape}")

# %% [markdown]
# ## 2. Split into heads
# Head $h$ owns columns $h\,d_\text{head} .. (h+1)\,d_\text{head}$ of Q, K and V, which are
# also what rows $h\,d_\text{head} ..$ of $W_q$ compute: one big projection is `n_head` small
# ones stacked.

# %%
def cols(h):
    return slice(h * hd, (h + 1) * hd)


q0 = Q[..., cols(0)]
print(f"head 0's queries: Q[..., 0:{hd}] {q0.shape}")
check("head h's slice of Q = x projected by rows of Wq for head h",
      all(np.allclose(Q[..., cols(h)], x @ Wq[cols(h)].T) for h in range(H)))

# %% [markdown]
# ## 3. Attend, head by head
# Each head is the single-head attention of `04_attention_module.py`, at width $d_\text{head}$,
# so the scale is $1/\sqrt{d_\text{head}}$.

# %%
heads, weights = [], []
for h in range(H):
    q, k, v = Q[..., cols(h)], K[..., cols(h)], V[..., cols(h)]  # (B, T, hd) each
    S = q @ k.swapaxes(-1, -2) / np.sqrt(hd)  # (B, T, T)
    P = softmax(np.where(causal, S, -np.inf))
    heads.append(P @ v)  # (B, T, hd)
    weights.append(P)
    print(f"head {h}: q, k, v {q.shape}; scores {S.shape}; output {heads[-1].shape}")
print("last row of sequence 0 (token 5 looking back) in each head:\n",
      np.array([P[0, -1] for P in weights]))
check("every head's weights are causal (zero above the diagonal)",
      all(np.all(P[:, ~causal] == 0) for P in weights))
cfg = ModelConfig(vocab_size=2, context_length=T, n_layer=1, n_head=H, d_model=d)
_, ref_cache = attention_forward(cfg, x, {"a.wq": Wq, "a.wk": Wk, "a.wv": Wv, "a.wo": Wo}, "a.")
check("every head's weights = the package's (its cache keeps P, (B, n_head, 1, T, T) here)",
      all(np.allclose(weights[h], ref_cache.P[:, h, 0], rtol=0, atol=1e-12) for h in range(H)))

# %% [markdown]
# ## 4. Concatenate the heads and project
# Concatenating along the feature axis puts the heads back side by side, `(B, T, d)`; the
# output projection $W_o$ mixes them. Equivalently, each head goes through its own block of
# columns of $W_o$ and the results are summed.

# %%
O = np.concatenate(heads, axis=-1)
y = O @ Wo.T
print(f"concatenated {O.shape} -> output {y.shape}")
check("concat then project = the sum of each head through its columns of Wo",
      np.allclose(y, sum(heads[h] @ Wo[:, cols(h)].T for h in range(H))))
ref, _ = attention_forward(cfg, x, {"a.wq": Wq, "a.wk": Wk, "a.wv": Wv, "a.wo": Wo}, "a.")
print(f"largest difference from numpy_engine.attention: {np.abs(y - ref).max():.1e}")
check("4 heads one at a time = numpy_engine.attention's batched heads",
      np.allclose(y, ref, atol=1e-12))

# %% [markdown]
# ## 5. Grouped-query attention: fewer key/value heads
# With `n_kv_head` < `n_head`, $W_k$ and $W_v$ produce only `n_kv_head` heads; each serves a
# group of `n_head / n_kv_head` query heads (query head $h$ uses key/value head
# $\lfloor h / \text{group} \rfloor$). The KV cache, which stores K and V of every past token,
# shrinks by the same factor. MQA is the extreme of one key/value head.

# %%
def mha_loop(x, Wq, Wk, Wv, Wo, n_head, n_kv_head):
    """The steps above as one function, for any number of key/value heads."""
    hd = Wq.shape[0] // n_head
    group = n_head // n_kv_head
    Q, K, V = x @ Wq.T, x @ Wk.T, x @ Wv.T
    T = x.shape[1]
    mask = np.tril(np.ones((T, T), dtype=bool))
    heads = []
    for h in range(n_head):
        g = h // group  # the key/value head this query head uses
        q, k, v = Q[..., h * hd:(h + 1) * hd], K[..., g * hd:(g + 1) * hd], \
            V[..., g * hd:(g + 1) * hd]
        heads.append(softmax(np.where(mask, q @ k.swapaxes(-1, -2) / np.sqrt(hd), -np.inf)) @ v)
    return np.concatenate(heads, axis=-1) @ Wo.T


for KV in (4, 2, 1):
    Wk_g, Wv_g = (rng.normal(size=(KV * hd, d)) * d ** -0.5 for _ in range(2))
    cfg_g = ModelConfig(vocab_size=2, context_length=T, n_layer=1, n_head=H, n_kv_head=KV,
                        d_model=d)
    ref_g, _ = attention_forward(cfg_g, x, {"a.wq": Wq, "a.wk": Wk_g, "a.wv": Wv_g, "a.wo": Wo},
                                 "a.")
    ours = mha_loop(x, Wq, Wk_g, Wv_g, Wo, H, KV)
    name = {4: "MHA", 2: "GQA", 1: "MQA"}[KV]
    print(f"{name}: n_kv_head {KV}, Wk {Wk_g.shape}, query heads per K/V head {H // KV}, "
          f"KV cache {cfg_g.kv_cache_numbers_per_token()} numbers per token; "
          f"difference from the package {np.abs(ours - ref_g).max():.1e}")
    check(f"{name}: the head loop = numpy_engine.attention", np.allclose(ours, ref_g, atol=1e-12))
    check(f"{name}: the package's Wk has n_kv_head * head_dim rows",
          param_shapes(cfg_g)["h.0.attn.wk"] == (KV * hd, d))
    check(f"{name}: KV cache per token = 2 (K and V) x n_kv_head x head_dim",
          cfg_g.kv_cache_numbers_per_token() == 2 * KV * hd)

# %% [markdown]
# ## Exercises
# 1. Set `H = 8` at the top (head_dim becomes 2) and predict the KV cache of the GQA case,
#    `n_kv_head = 2`, in numbers per token and layer; section 5 prints it and its last check
#    confirms the formula (answer: 2 x 2 x 2 = 8).
# 2. In `mha_loop`, which K/V head does query head 5 use when `n_head = 8`, `n_kv_head = 2`?
#    (Answer: 5 // 4 = 1, the second.)
# 3. Drop the scale: replace `np.sqrt(hd)` by 1 in section 3. Which check stops the lesson, and
#    why? (The comparison of the weights with the package's: the scores are now sqrt(4) = 2
#    times larger, so every softmax is sharper.)
