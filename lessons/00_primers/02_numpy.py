# %% [markdown]
# # NumPy: arrays, shapes, broadcasting, matmul, views, and the reshape into heads
#
# A NumPy array is one block of memory holding numbers of one type (its **dtype**) plus a
# **shape** that says how to read the block as a table: shape `(2, 3)` is 2 rows of 3. Every
# operation runs over the whole array in compiled code, so we write `x * 2` instead of a loop.
# A language model is a few such operations on arrays of shape `(B, T, d)`: a batch of `B`
# sequences of `T` tokens, each token a vector of `d` numbers. Each step below is checked
# against a plain Python loop or the package.

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

# %% [markdown]
# ## 1. Arrays, shapes and dtypes
# `np.array` turns nested lists into an array; `reshape` reads the same numbers with another
# shape (the total count must stay the same). Indexing `a[i, j]` is row `i`, column `j`;
# `a[:, 1]` is the whole column 1.

# %%
rows = [[1, 2, 3], [4, 5, 6]]
a = np.array(rows)
print(a, f"shape {a.shape}, ndim {a.ndim}, size {a.size}, dtype {a.dtype}")
check("a[i, j] is rows[i][j]", all(a[i, j] == rows[i][j] for i in range(2) for j in range(3)))
check("a[:, 1] is column 1", a[:, 1].tolist() == [r[1] for r in rows])
check("sum over axis 0 adds the rows (one number per column)",
      a.sum(axis=0).tolist() == [sum(col) for col in zip(*rows)])
b = np.arange(24).reshape(2, 3, 4)  # 0..23 read as 2 blocks of 3 rows of 4
print(f"arange(24).reshape(2, 3, 4)[1, 2] = {b[1, 2]}")
check("reshape keeps the order: b[i, j, k] = 12 i + 4 j + k", b[1, 2, 3] == 12 * 1 + 4 * 2 + 3)

# %% [markdown]
# The dtype decides what a number can be. Integers of a fixed width wrap around when they
# overflow; a float32 keeps about 7 significant digits, a float64 about 16. Models train in
# float32 (or 16-bit floats); the checks in these lessons use float64 where they compare two
# computations to 12 digits.

# %%
i8 = np.array([127], dtype=np.int8)
print(f"int8 127 + 1 = {(i8 + np.int8(1))[0]}")
check("int8 wraps around at 127", (i8 + np.int8(1))[0] == -128)
tenth = np.full(1_000_000, 0.1, dtype=np.float32)
run32 = np.cumsum(tenth)[-1]  # a running sum: every step rounds to float32
run64 = np.cumsum(tenth.astype(np.float64))[-1]
print(f"adding 0.1 a million times: float32 {run32:.4f}, float64 {run64:.10f}")
check("a float32 running sum drifts far from 100000", abs(run32 - 100_000) > 1)
check("float64 stays close (the error is float32's rounding of 0.1)",
      abs(run64 - 100_000) < 0.01)
check("mixing int and float gives float", (a + 0.5).dtype == np.float64)

# %% [markdown]
# ## 2. Indexing with an array of integers: the embedding lookup
# `table[ids]` with an integer array `ids` of shape `(B, T)` picks a row of `table` for every
# id: the result has shape `(B, T, d)`. That is all a token embedding is.

# %%
vocab, d = 10, 4
table = rng.normal(size=(vocab, d))
ids = np.array([[3, 1, 4], [1, 5, 9]])
emb = table[ids]
print(f"table {table.shape}, ids {ids.shape} -> table[ids] {emb.shape}")
loop = np.array([[table[t] for t in seq] for seq in ids.tolist()])
check("table[ids] = a row lookup per token", np.array_equal(emb, loop))

# %% [markdown]
# ## 3. Broadcasting
# Two arrays of different shapes combine element by element when their shapes are compatible.
# **The rule:** line the shapes up on the right; in each position the two sizes must be equal,
# or one of them 1 (a missing size counts as 1). A size-1 axis is stretched (without copying)
# to the other's size. So `(B, T, d) + (d,)` adds one bias vector to every token, and
# `(T, 1) - (1, T)` makes a `(T, T)` table of all differences $i - j$, the shape of a causal mask.

# %%
def broadcast_shape(s1, s2):
    """The rule above, written out."""
    n = max(len(s1), len(s2))
    s1, s2 = (1,) * (n - len(s1)) + tuple(s1), (1,) * (n - len(s2)) + tuple(s2)
    out = []
    for m, k in zip(s1, s2):
        if m != k and 1 not in (m, k):
            raise ValueError(f"sizes {m} and {k} do not broadcast")
        out.append(max(m, k))
    return tuple(out)


for s1, s2 in [((2, 3, 4), (4,)), ((5, 1), (1, 5)), ((2, 1, 4), (3, 1)), ((3, 4), (3,))]:
    try:
        ours = broadcast_shape(s1, s2)
    except ValueError as e:
        ours = f"error: {e}"
    try:
        theirs = np.broadcast_shapes(s1, s2)
    except ValueError:
        theirs = "error"
    print(f"{s1} with {s2}: {ours}")
    check(f"the rule agrees with NumPy on {s1} and {s2}",
          ours == theirs or (str(ours).startswith("error") and theirs == "error"))

x = rng.normal(size=(2, 3, 4))
bias = np.array([1.0, 2.0, 3.0, 4.0])
check("(B, T, d) + (d,) adds the bias to every token",
      np.array_equal(x + bias, np.array([[[x[b, t, k] + bias[k] for k in range(4)]
                                          for t in range(3)] for b in range(2)])))
T = 4
pos = np.arange(T)
diff = pos[:, None] - pos[None, :]  # (T, 1) - (1, T) -> (T, T)
print("i - j for i, j < 4:\n", diff)
check("(T, 1) - (1, T) is the table of i - j",
      np.array_equal(diff, [[i - j for j in range(T)] for i in range(T)]))
try:  # a per-token weight (B, T) does not line up with (B, T, d) on the right...
    x * rng.normal(size=(2, 3))
    raised = False
except ValueError as e:
    raised = True
    print(f"(2, 3, 4) * (2, 3) fails: {e}")
check("(B, T, d) * (B, T) is an error", raised)
w = rng.normal(size=(2, 3))  # ...add a size-1 axis at the end and it does
check("(B, T, d) * (B, T, 1) scales every token by its weight",
      np.allclose(x * w[..., None], np.stack([x[..., k] * w for k in range(4)], axis=-1)))

# %% [markdown]
# ## 4. Matrix products: loops, `np.matmul`, `@` and `einsum`
# $C_{ik} = \sum_j A_{ij} B_{jk}$. `A @ B` is `np.matmul(A, B)`; for more than two axes it
# multiplies the last two and broadcasts the rest, so a batch of token vectors `(B, T, d)`
# times a weight `(d, e)` is `(B, T, e)`. `np.einsum` names every axis with a letter and sums
# over the letters missing from the output: `"ij,jk->ik"` is the matrix product, and
# `"btd,ed->bte"` is $x W^\top$ with $W$ stored `(out, in)` as PyTorch and this package store it.

# %%
A, B = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
C_loop = np.array([[sum(A[i, j] * B[j, k] for j in range(4)) for k in range(2)]
                   for i in range(3)])
print("A @ B:\n", A @ B)
check("np.matmul = @ = einsum = the triple loop",
      np.allclose(np.matmul(A, B), C_loop) and np.allclose(A @ B, C_loop)
      and np.allclose(np.einsum("ij,jk->ik", A, B), C_loop))
W = rng.normal(size=(5, 4))  # a linear layer from 4 to 5 features, stored (out, in)
y = x @ W.T
print(f"x {x.shape} @ W.T {W.T.shape} -> {y.shape}")
check("x @ W.T = einsum('btd,ed->bte') = one matrix-vector product per token",
      np.allclose(y, np.einsum("btd,ed->bte", x, W))
      and np.allclose(y[1, 2], W @ x[1, 2]))
M = rng.normal(size=(3, 3))
check("for square matrices both * and @ run, but * is elementwise, not the product",
      np.array_equal(M * M, M ** 2) and not np.allclose(M * M, M @ M))

# %% [markdown]
# ## 5. Views and copies
# Slicing (`a[1:]`, `a[:, 0]`), `reshape` of a contiguous array and `transpose` give **views**:
# new shapes over the same memory, so writing through one changes the other. Indexing with an
# integer array or a mask gives a **copy**. `np.shares_memory` tells which is which. A
# transposed array is not contiguous in memory, so reshaping it has to copy.

# %%
base = np.arange(12.0).reshape(3, 4)
view, copy = base[1:, ::2], base[[1, 2]]
print(f"slice: shares memory {np.shares_memory(base, view)}; "
      f"integer-array index: shares memory {np.shares_memory(base, copy)}")
check("a slice is a view", np.shares_memory(base, view))
check("integer-array indexing is a copy", not np.shares_memory(base, copy))
view[0, 0] = -1.0
check("writing into the view changed the original", base[1, 0] == -1.0)
copy[0, 0] = 99.0
check("writing into the copy did not", base[1, 0] == -1.0)
tr = base.T
check("transpose is a view, but not contiguous",
      np.shares_memory(base, tr) and not tr.flags["C_CONTIGUOUS"])
check("reshaping the transpose copies",
      not np.shares_memory(base, tr.reshape(12)) and np.shares_memory(base, base.reshape(12)))

# %% [markdown]
# ## 6. From `(B, T, d)` to heads `(B, n_head, T, head_dim)` and back
# Multi-head attention cuts each token's vector into `n_head` slices of `head_dim = d / n_head`
# and attends with each slice separately. With `d` the last axis, the slices are already
# consecutive: `reshape(B, T, H, hd)` labels them, and `transpose(0, 2, 1, 3)` brings the head
# axis forward so that each head is a `(T, hd)` matrix. Reshaping straight to `(B, H, T, hd)`
# would also run, but mix tokens and features: the right shape with the wrong numbers. The way
# back is the same two steps reversed.

# %%
Bsz, T, H, hd = 2, 5, 4, 3
d = H * hd
x = rng.normal(size=(Bsz, T, d))
heads = x.reshape(Bsz, T, H, hd).transpose(0, 2, 1, 3)
print(f"x {x.shape} -> reshape {x.reshape(Bsz, T, H, hd).shape} -> transpose {heads.shape}")
check("head h is features h*hd .. (h+1)*hd - 1 of every token",
      all(np.array_equal(heads[:, h], x[..., h * hd:(h + 1) * hd]) for h in range(H)))
wrong = x.reshape(Bsz, H, T, hd)
check("a plain reshape to (B, H, T, hd) gives other numbers",
      not all(np.array_equal(wrong[:, h], x[..., h * hd:(h + 1) * hd]) for h in range(H)))
back = heads.transpose(0, 2, 1, 3).reshape(Bsz, T, d)
check("transpose back and reshape: the original x", np.array_equal(back, x))
check("split and merge are views of x (the second transpose restores the memory order)",
      np.shares_memory(heads, x) and np.shares_memory(back, x))

# %% [markdown]
# The package's attention does exactly these reshapes (attention.py): project, split into
# heads, attend per head with one batched `@`, merge the heads, project. Written out with the
# reshapes above, it gives the same numbers.

# %%
Wq, Wk, Wv, Wo = (rng.normal(size=(d, d)) for _ in range(4))
q, k, v = ((x @ Wt.T).reshape(Bsz, T, H, hd).transpose(0, 2, 1, 3) for Wt in (Wq, Wk, Wv))
S = q @ k.swapaxes(-1, -2) / np.sqrt(hd)  # (B, H, T, hd) @ (B, H, hd, T) -> (B, H, T, T)
pos = np.arange(T)
S = S + np.where(pos[:, None] < pos[None, :], -np.inf, 0.0)  # causal: no key after the query
P = np.exp(S - S.max(-1, keepdims=True))
P /= P.sum(-1, keepdims=True)
pv = P @ v  # a new (B, H, T, hd) array, contiguous in that order
o = pv.transpose(0, 2, 1, 3).reshape(Bsz, T, d)  # merge the heads
check("merging the heads of a new (B, H, T, hd) array copies", not np.shares_memory(o, pv))
out = o @ Wo.T
print(f"q {q.shape}, scores {S.shape}, merged {o.shape}, output {out.shape}")
cfg = ModelConfig(vocab_size=2, context_length=T, n_layer=1, n_head=H, d_model=d)
ref, _ = attention_forward(cfg, x, {"a.wq": Wq, "a.wk": Wk, "a.wv": Wv, "a.wo": Wo}, "a.")
print(f"largest difference from numpy_engine.attention: {np.abs(out - ref).max():.1e}")
check("the reshapes above = numpy_engine.attention", np.allclose(out, ref, atol=1e-12))

# %% [markdown]
# ## Exercises
# 1. Predict the shape of `(8, 1, 6, 1)` broadcast with `(7, 1, 5)` by the rule of section 3,
#    then add the pair to the loop: its check compares `broadcast_shape` with NumPy's
#    (answer: `(8, 7, 6, 5)`).
# 2. What is `np.int8(100) + np.int8(100)`? Work it out from the wrap-around (200 - 256), then
#    run it (answer: -56, with a RuntimeWarning about the overflow).
# 3. Split `x` of shape `(2, 5, 12)` into 3 heads instead of 4 (`H, hd = 3, 4`) and rerun
#    section 6: which checks still pass? (All of them: the reshape and transpose do not depend
#    on the number of heads, and the comparison with `numpy_engine.attention` uses the same H.)
