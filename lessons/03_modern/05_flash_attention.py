# %% [markdown]
# # FlashAttention: exact attention in tiles, without the T x T matrix
#
# Naive attention computes, for every head,
#
# $$S = \frac{QK^\top}{\sqrt{d}} + M, \qquad P = \mathrm{softmax}(S), \qquad O = PV,$$
#
# and $S$ and $P$ are $T \times T$: the memory grows as $T^2$. FlashAttention (Dao et al. 2022,
# [arXiv 2205.14135](https://arxiv.org/abs/2205.14135)) gets exactly the same $O$ while holding
# only one small tile of $S$ at a time. The trick that makes it possible is the **online
# softmax** (Milakov & Gimelshein 2018, [arXiv 1805.02867](https://arxiv.org/abs/1805.02867)):
# a softmax computed in one pass over blocks of scores, keeping a running maximum $m$ and a
# running sum $\ell$ per query row. Here we measure the memory, run the online softmax by hand,
# then the tiled attention of `llm_deeper.numpy_engine.flash_attention`, and check everything
# against the package's naive attention (forward and backward) and SciPy. (The comparison with
# PyTorch's `scaled_dot_product_attention` and autograd, over many shapes, is
# `tests/test_flash_attention.py`.)

# %%
import sys
from pathlib import Path

import numpy as np
from scipy.special import logsumexp, softmax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine.attention import attention_backward, attention_forward
from llm_deeper.numpy_engine.flash_attention import (
    attention_memory,
    count_blocks,
    flash_attention_backward,
    flash_attention_forward,
)

from _common import OUT, QUICK, check

np.set_printoptions(precision=4, suppress=True, linewidth=100)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Why naive attention's memory is $O(T^2)$
# The package's NumPy attention keeps $P$ for the backward pass: one float64 per (head, query,
# key). We read its size off the cache, then count for SmolLM2-135M's attention (9 query heads,
# head_dim 64) at 1k, 8k and 128k tokens, batch 1, one layer. Naive: $S$ and $P$, $2T^2$
# numbers a head. Tiled (`attention_memory`, tiles $B_r = B_c = 64$): a query tile, a key and a
# value tile, one $B_r \times B_c$ score tile, the accumulator, $m$ and $\ell$, plus the
# log-sum-exp of every row ($T$ numbers) kept for the backward pass.

# %%
T, H, hd = 64, 9, 8
cfg = ModelConfig(vocab_size=2, context_length=T, n_layer=1, n_head=H, n_kv_head=3,
                  d_model=H * hd)
d = cfg.d_model
p = {f"a.{n}": rng.normal(size=(s, d)) * d ** -0.5
     for n, s in (("wq", d), ("wk", 3 * hd), ("wv", 3 * hd), ("wo", d))}
_, cache = attention_forward(cfg, rng.normal(size=(1, T, d)), p, "a.")
print(f"package attention, T={T}, 9 heads: P has shape {cache.P.shape}, {cache.P.nbytes:,} bytes")
check("the package's naive attention holds T x T probabilities per head (float64)",
      cache.P.nbytes == H * T * T * 8)

GiB = 2 ** 30
print(f"\nSmolLM2 attention, one layer, batch 1 ({H} heads x head_dim 64):")
print(f"{'T':>8} {'dtype':>6} {'naive (S and P)':>18} {'tiled':>12} {'naive / tiled':>14}")
rows = {}
for T_big in (1024, 8192, 131072):
    for name, nbytes in (("fp32", 4), ("fp16", 2)):
        mem = attention_memory(T_big, 64, Br=64, Bc=64, bytes_per_number=nbytes)
        naive, tiled = 9 * mem.naive, 9 * mem.tiled
        rows[T_big, name] = naive, tiled
        print(f"{T_big:>8,} {name:>6} {naive / GiB:>14,.3f} GiB {tiled / 2**20:>8.3f} MiB "
              f"{naive / tiled:>14,.0f}")
check("naive fp16 at 128k tokens: 2 T^2 x 2 bytes x 9 heads = 576 GiB for one layer",
      rows[131072, "fp16"][0] == 2 * 131072 ** 2 * 2 * 9 == 576 * GiB)
check("naive memory grows 64x from 1k to 8k tokens (T^2), tiled less than 2x",
      rows[8192, "fp32"][0] == 64 * rows[1024, "fp32"][0]
      and rows[8192, "fp32"][1] < 2 * rows[1024, "fp32"][1])

# %% [markdown]
# An H100 has 80 GB. Even at 8k tokens the naive matrices of one layer take 4.5 GiB in fp32;
# at 128k no GPU holds them. The tiled method needs well under a mebibyte per head. On a GPU
# its tiles are sized to fit the on-chip SRAM, so S and P never travel to and from the slow
# HBM: the paper's speed-ups come from that saved traffic (the backward pass even recomputes
# P), not from fewer multiplications.
#
# ## 2. The online softmax on 8 numbers
# For scores $x_1, \dots, x_n$ arriving one at a time, keep
#
# $$m_k = \max(m_{k-1}, x_k), \qquad
# \ell_k = \ell_{k-1}\, e^{m_{k-1} - m_k} + e^{x_k - m_k}, \qquad m_0 = -\infty,\ \ell_0 = 0.$$
#
# Invariant: $\ell_k = \sum_{c \le k} e^{x_c - m_k}$. When the maximum grows, every stored term
# $e^{x_c - m_{k-1}}$ times $e^{m_{k-1} - m_k}$ is exactly $e^{x_c - m_k}$: the rescaling is
# exact. At the end $\mathrm{softmax}(x)_c = e^{x_c - m_n} / \ell_n$ and
# $\log\sum_c e^{x_c} = m_n + \log \ell_n$.

# %%
x = np.array([2.0, -1.0, 3.5, 0.5, 5.0, 1.0, -2.0, 4.0])
m, l = -np.inf, 0.0
trace = []
print(f"{'k':>2} {'x_k':>5} {'m_k':>5} {'rescale e^(m_old-m_new)':>24} {'l_k':>8}")
for step, xk in enumerate(x, 1):
    m_new = max(m, xk)
    rescale = np.exp(m - m_new)
    l = l * rescale + np.exp(xk - m_new)
    m = m_new
    trace.append((m, l))
    print(f"{step:>2} {xk:>5.1f} {m:>5.1f} {rescale:>24.6f} {l:>8.5f}")
online = np.exp(x - m) / l
print("online softmax:", online)
print("scipy softmax: ", softmax(x))
check("the online softmax equals softmax", np.allclose(online, softmax(x), rtol=0, atol=1e-15))
check("m + log l equals logsumexp", abs(m + np.log(l) - logsumexp(x)) < 1e-14)
check("every l_k is the sum of exp(x_c - m_k) over the numbers seen so far",
      all(abs(lk - np.exp(x[:i + 1] - mk).sum()) < 1e-14 for i, (mk, lk) in enumerate(trace)))

# %% [markdown]
# The same loop is inside the tiled attention: one query whose 8 scores are $x$ (head_dim 1,
# query 1, keys $x$), key tiles of $B_c = 1$, reports the same $m_k$ and $\ell_k$ after every
# tile. Subtracting the running maximum also keeps every exponent $\le 0$: with scores around
# 1000, `np.exp` of a raw score overflows, the online softmax does not.

# %%
steps = []
out1, lse1 = flash_attention_forward(np.ones((1, 1, 1, 1)), x.reshape(1, 1, 8, 1),
                                     x.reshape(1, 1, 8, 1), Bc=1, causal=False,
                                     on_block=steps.append)
check("flash_attention_forward with Bc=1 walks the same (m_k, l_k)",
      np.allclose([(s.m.item(), s.l.item()) for s in steps], trace, rtol=0, atol=1e-14))
check("its output is softmax(x) . x, its lse logsumexp(x)",
      abs(out1.item() - softmax(x) @ x) < 1e-14 and abs(lse1.item() - logsumexp(x)) < 1e-14)
with np.errstate(over="ignore", invalid="ignore"):
    raw = np.exp(x + 1000) / np.exp(x + 1000).sum()
big, _ = flash_attention_forward(np.ones((1, 1, 1, 1)), (x + 1000).reshape(1, 1, 8, 1),
                                 x.reshape(1, 1, 8, 1), Bc=3, causal=False)
print(f"scores + 1000: exp without the maximum -> {raw[:3]}..., tiled output {big.item():.6f}")
check("shifted scores overflow without the maximum; the tiled softmax is unchanged",
      np.isnan(raw).all() and abs(big.item() - softmax(x) @ x) < 1e-12)

# %% [markdown]
# ## 3. Tiled attention, block by block
# Queries in blocks of $B_r$ rows, keys and values in blocks of $B_c$. For each query block
# $i$, the key blocks $j$ stream past: the tile $S_{ij} = Q_i K_j^\top/\sqrt{d}$, then per row
#
# $$m^{new} = \max(m, \mathrm{rowmax}\, S_{ij}),\quad
# \tilde P = e^{S_{ij} - m^{new}},\quad
# \ell \leftarrow e^{m - m^{new}}\ell + \mathrm{rowsum}\,\tilde P,\quad
# A \leftarrow e^{m - m^{new}} A + \tilde P V_j,$$
#
# and finally $O_i = A / \ell$, $\mathrm{lse}_i = m + \log \ell$. With the causal mask a tile
# whose first key comes after its last query is all masked: it is **skipped**. Here $T = 7$,
# $B_r = 3$, $B_c = 2$ (neither divides 7), one head of width 4.

# %%
T, hd, Br, Bc = 7, 4, 3, 2
cfg1 = ModelConfig(vocab_size=2, context_length=T, n_layer=1, n_head=1, d_model=hd)
p1 = {f"a.{n}": rng.normal(size=(hd, hd)) * hd ** -0.5 for n in ("wq", "wk", "wv")}
p1["a.wo"] = np.eye(hd)  # identity output projection: the module returns P V
xs = rng.normal(size=(1, T, hd))
naive, cache1 = attention_forward(cfg1, xs, p1, "a.")
q, k, v = ((xs @ p1[f"a.{n}"].T)[:, None] for n in ("wq", "wk", "wv"))  # (1, 1, T, hd)


def show(s):
    where = f"block ({s.i},{s.j}) queries {s.rows[0]}-{s.rows[1] - 1} x keys {s.cols[0]}-" \
            f"{s.cols[1] - 1}"
    if s.m is None:
        print(f"  {where}: skipped (all in the future)")
    else:
        print(f"  {where}: {s.kind:<7} m = {s.m[0, 0, 0]}, l = {s.l[0, 0, 0]}")


log = []
out, lse = flash_attention_forward(q, k, v, Br=Br, Bc=Bc, on_block=lambda s: (log.append(s),
                                                                              show(s)))
print("tiled output:\n", out[0, 0])
print(f"largest difference from the package's naive attention: "
      f"{np.abs(out[0, 0] - naive[0]).max():.1e}")
check("tiled = numpy_engine.attention (causal, 1 head)", np.allclose(out[0, 0], naive[0],
                                                                      rtol=0, atol=1e-12))

# %% [markdown]
# The log-sum-exp per row is all the backward pass keeps: from it, any tile of $P$ comes back
# exactly as $e^{S_{ij} - \mathrm{lse}_i}$, so $P$ (T x T) is never stored. Below, $P$ rebuilt
# from lse equals the package's cached $P$, and the tiled backward
# (`flash_attention_backward`, which recomputes each tile that way) gives the same gradients as
# the package's naive `attention_backward` (itself checked against PyTorch autograd in
# `tests/test_numpy_grads.py`): through the projections $Q = xW_q^\top$, ... the chain rule
# gives $dW_q = dQ^\top x$ and $dx = dQ\,W_q + dK\,W_k + dV\,W_v$.

# %%
scores = (q @ k.swapaxes(-1, -2))[0, 0] / np.sqrt(hd)
scores[np.triu_indices(T, 1)] = -np.inf
check("lse = scipy logsumexp of the masked scores",
      np.allclose(lse[0, 0], logsumexp(scores, axis=-1), rtol=0, atol=1e-12))
check("exp(S - lse) = the package's cached P",
      np.allclose(np.exp(scores - lse[0, 0, :, None]), cache1.P[0, 0, 0], rtol=0, atol=1e-12))
dy = rng.normal(size=naive.shape)  # (1, T, hd): wo is the identity, so dO = dy
ref_grads = {}
ref_dx = attention_backward(dy, cache1, ref_grads)
dq, dk, dv = flash_attention_backward(dy[:, None], q, k, v, out, lse, Br=Br, Bc=Bc)
ours = {f"a.{n}": g[0, 0].T @ xs[0] for n, g in (("wq", dq), ("wk", dk), ("wv", dv))}
dx = sum(g[0, 0] @ p1[f"a.{n}"] for n, g in (("wq", dq), ("wk", dk), ("wv", dv)))
check("tiled backward from lse = the package's attention_backward (dW_q, dW_k, dW_v, dx)",
      all(np.allclose(ours[n], ref_grads[n], rtol=0, atol=1e-12) for n in ours)
      and np.allclose(dx, ref_dx[0], rtol=0, atol=1e-12))

# %% [markdown]
# ## 4. Causal tiles: computed vs skipped
# The grid of tiles for the example above (rows: query blocks, columns: key blocks): `F` full
# (no mask needed), `P` partial (straddles the diagonal, masked inside), `.` skipped. For a
# square causal mask with $n$ blocks a side, $n(n+1)/2$ tiles are computed and $n(n-1)/2$
# skipped: the skipped share tends to one half.

# %%
grid = {(s.i, s.j): {"full": "F", "partial": "P", "skipped": "."}[s.kind] for s in log}
for i in range(max(s.i for s in log) + 1):
    print("  " + " ".join(grid[i, j] for j in range(max(s.j for s in log) + 1)))
counts = count_blocks(T, T, Br, Bc)
print(f"T={T}, Br={Br}, Bc={Bc}: {counts}")
check("the loop visited exactly the tiles count_blocks counts",
      [sum(s.kind == kd for s in log) for kd in counts] == list(counts.values()))
for T_big, b in ((1024, 64), (8192, 64), (8192, 128), (131072, 128)):
    c = count_blocks(T_big, T_big, b, b)
    n = T_big // b
    done = c["full"] + c["partial"]
    print(f"T={T_big:>7,}, {b}x{b} tiles: {done:>8,} computed, {c['skipped']:>8,} skipped "
          f"({c['skipped'] / (n * n):.1%})")
    check(f"T={T_big}, tiles of {b}: n(n+1)/2 computed, n(n-1)/2 skipped",
          done == n * (n + 1) // 2 and c["skipped"] == n * (n - 1) // 2)
    if QUICK:
        break

# %% [markdown]
# ## 5. At SmolLM2's shape
# 9 query heads sharing 3 key/value heads (GQA), head_dim 64, 64 x 64 tiles, against the
# package's naive attention in float64 (random projections, the output projection the
# identity). The package broadcasts each K/V head over its 3 query heads; so does the tiled one.

# %%
T, H, KV, hd = (256 if QUICK else 1024), 9, 3, 64
cfg9 = ModelConfig(vocab_size=2, context_length=T, n_layer=1, n_head=H, n_kv_head=KV,
                   d_model=H * hd)
d = cfg9.d_model
p9 = {f"a.{n}": rng.normal(size=(s, d)) * d ** -0.5
      for n, s in (("wq", d), ("wk", KV * hd), ("wv", KV * hd))}
p9["a.wo"] = np.eye(d)
x9 = rng.normal(size=(1, T, d))
naive9, _ = attention_forward(cfg9, x9, p9, "a.")  # (1, T, d)
q9 = (x9 @ p9["a.wq"].T).reshape(1, T, H, hd).transpose(0, 2, 1, 3)  # (1, 9, T, 64)
k9, v9 = ((x9 @ p9[f"a.{n}"].T).reshape(1, T, KV, hd).transpose(0, 2, 1, 3)
          for n in ("wk", "wv"))  # (1, 3, T, 64) each
out9, _ = flash_attention_forward(q9, k9, v9, Br=64, Bc=64)
out9 = out9.transpose(0, 2, 1, 3).reshape(1, T, d)  # heads side by side again
print(f"T={T}: largest difference from the package's naive attention: "
      f"{np.abs(out9 - naive9).max():.1e}")
check(f"tiled GQA attention at T={T} = numpy_engine.attention to 1e-12",
      np.abs(out9 - naive9).max() < 1e-12)

# %% [markdown]
# ## 6. The figure: tiles and memory
# Left: the tiles of one causal run of `flash_attention_forward` (its `on_block` calls), each
# (query, key) entry coloured by its tile's kind, numbered in the order the loop computes them.
# Right: one layer of SmolLM2's attention, batch 1, log-log axes. The naive curves are straight
# lines of slope 2 ($T^2$); the tiled ones are flat until the $T$ numbers of log-sum-exp start
# to count, then slope 1. The figure is drawn by the same function as the docs' figure
# (`llm_deeper.figures.layers.flash_tiles`, docs/figures/flash_tiles.png).

# %%
from llm_deeper.figures.layers import flash_tiles

flash_tiles(OUT / "flash_tiles.png", quick=QUICK)
print(f"figure: {OUT / 'flash_tiles.png'}")
check("the figure was written", (OUT / "flash_tiles.png").stat().st_size > 0)
Ts = 2 ** np.arange(7, 18)  # the figure's grid of lengths
crossing = next(int(t) for t in Ts if 9 * attention_memory(int(t), 64, bytes_per_number=2).naive
                > 80e9)
print(f"naive fp16 passes 80 GB for one layer at T = {crossing:,} on this grid")
check("naive fp16 passes 80 GB between 32k and 64k tokens", crossing == 65536)

# %% [markdown]
# ## Exercises
# 1. Change the tile sizes of section 3 to $B_r = 5$, $B_c = 3$: the output must not change
#    (only the order of additions does).
# 2. For $T = 12$ with $4 \times 4$ tiles and the causal mask, predict how many tiles are full,
#    partial and skipped before running `count_blocks`. (Answer: 3 full, 3 partial, 3 skipped.)
# 3. Run the online softmax of section 2 on `x[::-1]`: $m_k$ and $\ell_k$ change along the way,
#    but the final $m + \log \ell$ is the same.
#
# ```python
# out5, _ = flash_attention_forward(q, k, v, Br=5, Bc=3)
# print(np.abs(out5[0, 0] - naive[0]).max())  # about 1e-16
# print(count_blocks(12, 12, 4, 4))  # {'full': 3, 'partial': 3, 'skipped': 3}
# _, lse_rev = flash_attention_forward(np.ones((1, 1, 1, 1)), x[::-1].reshape(1, 1, 8, 1),
#                                      x[::-1].reshape(1, 1, 8, 1), Bc=1, causal=False)
# print(lse_rev.item(), logsumexp(x))  # equal
# ```
