# %% [markdown]
# # An attention module from scratch: batched, with a causal and a padding mask
#
# `01_foundations/01_attention_by_hand.py` computed attention for one sequence. Here we write
# it once for a whole batch `x` of shape `(B, T, d)`, with a **mask** that says which keys each
# query may use:
#
# $$\mathrm{Attention}(x) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}} + M\right) V\,W_o^\top,
# \qquad Q = xW_q^\top,\ K = xW_k^\top,\ V = xW_v^\top$$
#
# $M$ is 0 where the query may look and $-\infty$ where not, so those keys get weight
# $e^{-\infty} = 0$. Two masks matter: the **causal** mask (a token must not see the future) and
# the **padding** mask (sequences of different lengths are padded to the same $T$ to share a
# batch; no query may attend to the padding). We check the module against the package and
# against PyTorch's `scaled_dot_product_attention`.

# %%
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine.attention import attention_forward

from _common import check

np.set_printoptions(precision=3, suppress=True)
rng = np.random.default_rng(0)
B, T, d = 2, 5, 8
x = rng.normal(size=(B, T, d))  # float64 throughout: the comparisons hold to 1e-12
Wq, Wk, Wv = (rng.normal(size=(d, d)) * d ** -0.5 for _ in range(3))
Wo = np.eye(d)  # identity output projection: the module returns the weighted values


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention(x, Wq, Wk, Wv, Wo, allowed):
    """x: (B, T, d); allowed: boolean, broadcastable to (B, T, T), True where query t may use
    key s. Returns the output (B, T, d) and the weights P (B, T, T)."""
    q, k, v = x @ Wq.T, x @ Wk.T, x @ Wv.T  # (B, T, d) each
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])  # (B, T, T)
    scores = np.where(allowed, scores, -np.inf)
    P = softmax(scores)
    return P @ v @ Wo.T, P


# %% [markdown]
# ## 1. The causal mask
# `np.tril` keeps the lower triangle: query $t$ may use keys $0..t$. Shape `(T, T)`: the same
# for every sequence, broadcast over the batch.

# %%
causal = np.tril(np.ones((T, T), dtype=bool))
print("causal mask (1: allowed):\n", causal.astype(int))
y, P = attention(x, Wq, Wk, Wv, Wo, causal)
print(f"x {x.shape} -> output {y.shape}, weights {P.shape}; sequence 0's weights:\n", P[0])
check("no weight on a future key", np.all(P[:, ~causal] == 0))
cfg = ModelConfig(vocab_size=2, context_length=T, n_layer=1, n_head=1, d_model=d)
ref, ref_cache = attention_forward(cfg, x, {"a.wq": Wq, "a.wk": Wk, "a.wv": Wv, "a.wo": Wo}, "a.")
print(f"largest difference from numpy_engine.attention: {np.abs(y - ref).max():.1e}")
check("the weights = those numpy_engine.attention keeps for its backward (cache.P)",
      np.allclose(P, ref_cache.P[:, 0, 0], rtol=0, atol=1e-12))
check("the module = numpy_engine.attention (1 head, identity output projection)",
      np.allclose(y, ref, atol=1e-12))

# %% [markdown]
# PyTorch's `F.scaled_dot_product_attention(q, k, v, attn_mask=..., is_causal=...)` takes the
# projected $Q, K, V$ and does the rest (scores, scale, mask, softmax, weighted sum); a boolean
# `attn_mask` means the same as ours (True: take part).

# %%
tq, tk, tv = (torch.from_numpy(x @ W.T) for W in (Wq, Wk, Wv))
y_torch = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True).numpy()
check("the module = torch scaled_dot_product_attention(is_causal=True)",
      np.allclose(y, y_torch, atol=1e-12))

# %% [markdown]
# ## 2. The padding mask
# Sequence 1 has only 3 real tokens; positions 3 and 4 are padding (any vectors at all). The
# padding mask is per sequence, over the keys: `(B, T)`, True for real tokens. Viewed as
# `(B, 1, T)` it broadcasts over the queries, and `&` with the causal mask `(T, T)` gives the
# `(B, T, T)` mask of what each query of each sequence may use.

# %%
lengths = np.array([5, 3])
real = np.arange(T)[None, :] < lengths[:, None]  # (B, T)
allowed = causal & real[:, None, :]  # (T, T) & (B, 1, T) -> (B, T, T)
print("real tokens:\n", real.astype(int))
print("sequence 1 may use (rows: queries, columns: keys):\n", allowed[1].astype(int))
y_pad, P_pad = attention(x, Wq, Wk, Wv, Wo, allowed)
print("sequence 1's weights:\n", P_pad[1])
check("no query gives weight to a padded key", np.all(P_pad[1][:, 3:] == 0))
check("sequence 0 (no padding) is unchanged", np.allclose(y_pad[0], y[0]))

y_pad_torch = F.scaled_dot_product_attention(tq, tk, tv,
                                             attn_mask=torch.from_numpy(allowed)).numpy()
check("the padded module = torch scaled_dot_product_attention(attn_mask=...)",
      np.allclose(y_pad, y_pad_torch, atol=1e-12))

# %% [markdown]
# What the padding mask promises: the real tokens' outputs are those of the short sequence run
# on its own, whatever the padding holds. (The outputs *at* padded positions are meaningless
# and are ignored by the loss.) With right padding the causal mask already hides the padding
# from the real tokens; the padding mask matters for the padded queries, and with left padding,
# where the padding comes first, for everyone. Left padding has a trap: a padded query that
# comes before every real token may use no key at all, and its softmax is 0/0. Implementations
# fill such rows with zeros or leave them out of the loss.

# %%
alone, _ = attention_forward(cfg, x[1:, :3], {"a.wq": Wq, "a.wk": Wk, "a.wv": Wv, "a.wo": Wo},
                             "a.")
check("real tokens of sequence 1 = the 3-token sequence alone (numpy_engine.attention)",
      np.allclose(y_pad[1, :3], alone[0], atol=1e-12))
x_junk = x.copy()
x_junk[1, 3:] = rng.normal(size=(2, d)) * 100
y_junk, _ = attention(x_junk, Wq, Wk, Wv, Wo, allowed)
check("changing the padding changes no real token's output",
      np.allclose(y_junk[1, :3], y_pad[1, :3], atol=1e-12))

left = np.roll(x, 2, axis=1)[1:]  # sequence 1, left-padded: 2 padding positions, then 3 tokens
left_real = np.arange(T)[None, :] >= 2
with np.errstate(invalid="ignore"):  # a row of only -inf: -inf - (-inf) is nan
    y_left, _ = attention(left, Wq, Wk, Wv, Wo, causal & left_real[:, None, :])
check("left padding: the real tokens again equal the sequence alone",
      np.allclose(y_left[0, 2:], alone[0], atol=1e-12))
print("left padding: the padded queries may use no key at all, and the softmax of a row of "
      "-inf is nan:\n", y_left[0, :2, :4])
check("a query that may use no key gets nan", np.isnan(y_left[0, :2]).all())

# %% [markdown]
# ## Exercises
# 1. Pad sequence 0 as well (`lengths = np.array([4, 3])`) and predict which check of section 2
#    fails. ("sequence 0 (no padding) is unchanged": its real tokens are, since the causal mask
#    already hid position 4 from them, but the padded query at position 4 may no longer attend
#    to itself. Turn that check into a `print`: every other check passes.)
# 2. Pass both masks to PyTorch at once: `attn_mask=torch.from_numpy(allowed)` already holds the
#    causal part, so what does adding `is_causal=True` do? (PyTorch refuses: it raises an error
#    when both are given; try it.)
# 3. How large is the score matrix of one head for a batch of 8 sequences of 4,096 tokens in
#    float32? (Answer: 8 x 4,096 x 4,096 x 4 bytes = 512 MiB per head: why fused kernels never
#    store it, `03_modern/05_flash_attention.py`.)
