"""FlashAttention in NumPy (numpy_engine/flash_attention.py) against naive attention.

The tiled forward equals the package's naive attention (numpy_engine/attention.py) and torch's
scaled_dot_product_attention to 1e-12 in float64, for block sizes that do not divide T, causal
and not, T = 1, GQA and MQA, and a cached decode (pos0 > 0); its logsumexp equals scipy's of
the masked scores; skipped tiles are never read; the tile counts equal a brute-force count of
the mask; the tiled backward equals torch autograd; the memory formulas hold on a case done by
hand.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine.attention import attention_forward
from llm_deeper.numpy_engine.flash_attention import (
    attention_memory,
    block_kind,
    count_blocks,
    flash_attention_backward,
    flash_attention_forward,
)

TOL = 1e-12


def qkv(B, H, KV, T, S, hd, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, H, T, hd)).astype(dtype)
    k = rng.normal(size=(B, KV, S, hd)).astype(dtype)
    v = rng.normal(size=(B, KV, S, hd)).astype(dtype)
    return q, k, v


def visible(T, S, causal, pos0=0):
    """(T, S) boolean: query t sees key c."""
    if not causal:
        return np.ones((T, S), bool)
    return np.arange(S)[None, :] <= pos0 + np.arange(T)[:, None]


def torch_sdpa(q, k, v, causal, pos0=0, grad=False):
    tq, tk, tv = (torch.tensor(a, requires_grad=grad) for a in (q, k, v))
    mask = torch.from_numpy(visible(q.shape[2], k.shape[2], causal, pos0))
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out, (tq, tk, tv)


@pytest.mark.parametrize("B,H,KV,T,hd,Br,Bc", [
    (1, 1, 1, 1, 4, 64, 64),  # T = 1: one tile, one key
    (2, 4, 4, 7, 8, 3, 2),  # blocks that do not divide T
    (1, 6, 2, 13, 4, 5, 4),  # GQA, G = 3
    (2, 4, 1, 10, 6, 4, 3),  # MQA
    (1, 2, 2, 9, 4, 1, 1),  # one row, one key at a time
    (1, 3, 3, 16, 8, 16, 16),  # one tile holds everything
])
def test_equals_the_packages_naive_attention(B, H, KV, T, hd, Br, Bc):
    """Through attention_forward's projections: x -> q, k, v -> flash -> wo = the package."""
    d = H * hd
    cfg = ModelConfig(vocab_size=2, context_length=T, n_layer=1, n_head=H, n_kv_head=KV,
                      d_model=d)
    rng = np.random.default_rng(T)
    x = rng.normal(size=(B, T, d))
    p = {"a.wq": rng.normal(size=(d, d)), "a.wk": rng.normal(size=(KV * hd, d)),
         "a.wv": rng.normal(size=(KV * hd, d)), "a.wo": rng.normal(size=(d, d))}
    p = {n: w * d ** -0.5 for n, w in p.items()}
    ref, _ = attention_forward(cfg, x, p, "a.")
    q = (x @ p["a.wq"].T).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    k = (x @ p["a.wk"].T).reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    v = (x @ p["a.wv"].T).reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    out, _ = flash_attention_forward(q, k, v, Br=Br, Bc=Bc, causal=True)
    y = out.transpose(0, 2, 1, 3).reshape(B, T, d) @ p["a.wo"].T
    assert np.abs(y - ref).max() < TOL


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 20), extra=st.integers(0, 6), Br=st.integers(1, 9),
       Bc=st.integers(1, 9), kv_group=st.sampled_from([(1, 1), (2, 2), (4, 2), (3, 1)]),
       causal=st.booleans(), decode=st.booleans(), seed=st.integers(0, 2**16))
def test_equals_torch_sdpa_and_scipy_logsumexp(T, extra, Br, Bc, kv_group, causal, decode,
                                               seed):
    """Any shapes and blocks; S = T + extra keys; decode: the queries are the last T of S
    (pos0 = S - T, a cached step), else torch's top-left is_causal alignment (pos0 = 0)."""
    H, KV = kv_group
    S = T + extra
    pos0 = S - T if decode else 0
    q, k, v = qkv(2, H, KV, T, S, 4, seed)
    out, lse = flash_attention_forward(q, k, v, Br=Br, Bc=Bc, causal=causal, pos0=pos0)
    ref, _ = torch_sdpa(q, k, v, causal, pos0)
    assert np.abs(out - ref.numpy()).max() < TOL
    scores = q @ np.repeat(k, H // KV, axis=1).swapaxes(-1, -2) / np.sqrt(4)  # (B, H, T, S)
    scores = np.where(visible(T, S, causal, pos0), scores, -np.inf)
    assert np.abs(lse - logsumexp(scores, axis=-1)).max() < TOL


def test_the_block_size_changes_nothing_and_float32_stays_float32():
    q, k, v = qkv(1, 2, 2, 11, 11, 8, seed=3)
    outs = [flash_attention_forward(q, k, v, Br=br, Bc=bc)[0] for br, bc in
            [(1, 1), (2, 3), (4, 4), (11, 11), (64, 64)]]
    assert all(np.abs(o - outs[0]).max() < TOL for o in outs)
    out32, lse32 = flash_attention_forward(*(a.astype(np.float32) for a in (q, k, v)), Br=3,
                                           Bc=5)
    assert out32.dtype == lse32.dtype == np.float32
    assert np.abs(out32 - outs[0]).max() < 1e-5


def test_skipped_tiles_are_never_read():
    """Keys after query block 0's last position live only in tiles skipped for block 0: make
    them nan. Naive attention multiplies nan by a zero weight (nan); the tiled one never reads
    them, so block 0's rows stay exact."""
    q, k, v = qkv(1, 2, 2, 8, 8, 4, seed=5)
    ref, _ = flash_attention_forward(q, k, v, Br=2, Bc=2)
    k[:, :, 2:], v[:, :, 2:] = np.nan, np.nan
    out, lse = flash_attention_forward(q, k, v, Br=2, Bc=2)
    assert np.abs(out[:, :, :2] - ref[:, :, :2]).max() == 0 and np.isfinite(lse[:, :, :2]).all()
    naive, _ = torch_sdpa(q, k, v, causal=True)
    assert torch.isnan(naive[:, :, :2]).all()


@pytest.mark.parametrize("T,S,Br,Bc,pos0", [(10, 10, 3, 4, 0), (7, 12, 2, 5, 5),
                                            (16, 16, 4, 4, 0), (1, 9, 3, 2, 8)])
def test_tile_counts_equal_a_brute_force_count_of_the_mask(T, S, Br, Bc, pos0):
    seen = visible(T, S, True, pos0)
    brute = {"full": 0, "partial": 0, "skipped": 0}
    for r0 in range(0, T, Br):
        for c0 in range(0, S, Bc):
            tile = seen[r0:r0 + Br, c0:c0 + Bc]
            brute["full" if tile.all() else "skipped" if not tile.any() else "partial"] += 1
    assert count_blocks(T, S, Br, Bc, True, pos0) == brute
    steps = []
    q, k, v = qkv(1, 1, 1, T, S, 2)
    flash_attention_forward(q, k, v, Br=Br, Bc=Bc, pos0=pos0, on_block=steps.append)
    assert [s.kind for s in steps] == [block_kind(*s.rows, *s.cols, True, pos0) for s in steps]
    assert len(steps) == sum(brute.values())


def test_causal_square_skips_the_upper_triangle_of_tiles():
    """n x n tiles on the diagonal of a square causal mask: n partial, n(n-1)/2 full and as many
    skipped (T = 1024, 64-wide tiles: n = 16)."""
    assert count_blocks(1024, 1024, 64, 64) == {"full": 120, "partial": 16, "skipped": 120}
    assert count_blocks(1024, 1024, 64, 64, causal=False) == {"full": 256, "partial": 0,
                                                              "skipped": 0}


@pytest.mark.parametrize("H,KV,T,S,Br,Bc,causal,pos0", [
    (2, 2, 7, 7, 3, 2, True, 0), (6, 2, 9, 9, 4, 5, True, 0), (4, 1, 5, 8, 2, 3, True, 3),
    (2, 2, 6, 10, 4, 4, False, 0), (1, 1, 1, 1, 8, 8, True, 0),
])
def test_backward_from_the_logsumexp_equals_autograd(H, KV, T, S, Br, Bc, causal, pos0):
    q, k, v = qkv(2, H, KV, T, S, 4, seed=T + S)
    out, lse = flash_attention_forward(q, k, v, Br=Br, Bc=Bc, causal=causal, pos0=pos0)
    dout = np.random.default_rng(1).normal(size=out.shape)
    ref, leaves = torch_sdpa(q, k, v, causal, pos0, grad=True)
    (ref * torch.from_numpy(dout)).sum().backward()  # backward(dout) would import sympy (3 s)
    grads = flash_attention_backward(dout, q, k, v, out, lse, Br=Br, Bc=Bc, causal=causal,
                                     pos0=pos0)
    for ours, leaf in zip(grads, leaves):
        assert ours.shape == leaf.shape
        assert np.abs(ours - leaf.grad.numpy()).max() < 1e-11


def test_memory_formulas_by_hand():
    """T = S = 8, head_dim 2, Br = Bc = 2, 4 bytes a number.
    Naive: S and P, 2 * 8 * 8 = 128 numbers = 512 bytes.
    Tiled: Q_i 2*2 + K_j, V_j 2*2*2 + S_ij 2*2 + acc 2*2 + m, l 2*2 + lse 8 = 32 numbers = 128."""
    assert attention_memory(8, 2, Br=2, Bc=2, bytes_per_number=4) == (512, 128)
    # Blocks larger than the sequence are clipped: T = 3, hd 4, fp16. Naive 2*9*2 = 36 bytes;
    # tiled 3*4 + 2*3*4 + 3*3 + 3*4 + 2*3 + 3 = 66 numbers = 132 bytes (tiny T: tiling costs).
    assert attention_memory(3, 4, bytes_per_number=2) == (36, 132)
    # Naive is quadratic, tiled linear plus a constant: doubling T adds 1 number to tiled per row.
    m1, m2 = attention_memory(4096, 64), attention_memory(8192, 64)
    assert m2.naive == 4 * m1.naive and m2.tiled - m1.tiled == 4096 * 4
