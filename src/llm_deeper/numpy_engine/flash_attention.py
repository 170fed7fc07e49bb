"""FlashAttention in NumPy: exact attention by tiles, never holding the T x S score matrix.

Naive attention (attention.py) materialises, per head, the scores and the probabilities

    S = Q K^T / sqrt(head_dim) + mask,   P = softmax(S),   O = P V          S, P: (T, S_len)

so its memory grows as T * S_len: O(T^2). FlashAttention (Dao et al. 2022, arXiv 2205.14135)
computes the same O block by block. Queries are split into blocks of Br rows, keys and values
into blocks of Bc rows; only one (Br, Bc) tile of scores exists at a time, and each query row
keeps two numbers while the keys stream past it: the running maximum m and the running sum l.

The online softmax (Milakov & Gimelshein 2018, arXiv 1805.02867). For one query row whose scores
arrive in blocks s^(1), s^(2), ..., keep

    m_j   = max(m_{j-1}, max_c s^(j)_c)                               m_0 = -inf
    l_j   = exp(m_{j-1} - m_j) l_{j-1} + sum_c exp(s^(j)_c - m_j)       l_0 = 0
    acc_j = exp(m_{j-1} - m_j) acc_{j-1} + sum_c exp(s^(j)_c - m_j) v_c   acc_0 = 0

Invariant: l_j = sum over the keys seen so far of exp(s_c - m_j), and acc_j the same sum
weighted by v_c. The rescaling is exact, not an approximation: a term stored as exp(s_c - m_old)
becomes exp(s_c - m_old) exp(m_old - m_new) = exp(s_c - m_new), the very term a one-pass softmax
with the new maximum would have summed. Subtracting the maximum only keeps exp() <= 1 (no
overflow); any constant would give the same ratio. After the last block

    o = acc / l = sum_c softmax(s)_c v_c,      lse = m + log l = log sum_c exp(s_c)

and lse (one number per row) is what the backward pass keeps instead of P: it recomputes
P_tile = exp(S_tile - lse) exactly, tile by tile (flash_attention_backward).

Causal masking: query t (absolute position pos0 + t) sees keys c <= pos0 + t. A tile whose
first key is after its last query is all masked: it is skipped, never computed (about half the
tiles for T = S). A tile whose last key is at or before its first query needs no mask ("full");
the rest straddle the diagonal ("partial") and get the -inf mask inside the tile.

Grouped-query attention: with n_kv_head < n_head, queries are viewed as (B, n_kv_head, G, T, hd)
and each K/V tile broadcasts over the G query heads of its group, as in attention.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class BlockStep(NamedTuple):
    """One tile of the loop, as `on_block` receives it (m, l after the update; None if skipped)."""

    i: int  # query block index
    j: int  # key block index
    rows: tuple[int, int]  # query rows [r0, r1)
    cols: tuple[int, int]  # key columns [c0, c1)
    kind: str  # "full" (no mask), "partial" (straddles the diagonal) or "skipped"
    m: np.ndarray | None  # (B, n_kv_head, G, r1 - r0) running maximum
    l: np.ndarray | None  # (B, n_kv_head, G, r1 - r0) running sum of exp(s - m)


class AttentionMemory(NamedTuple):
    """Bytes per head, beyond Q, K, V and the output O, which both methods hold."""

    naive: int  # S and P, each (T, S_len)
    tiled: int  # Q_i, K_j, V_j, the S_ij tile, acc, m and l, plus lse (T,) kept for backward


def block_kind(r0: int, r1: int, c0: int, c1: int, causal: bool, pos0: int = 0) -> str:
    """Query rows [r0, r1) against key columns [c0, c1): 'skipped' if every pair is masked
    (c0 > pos0 + r1 - 1), 'full' if none is (c1 - 1 <= pos0 + r0), else 'partial'."""
    if not causal or c1 - 1 <= pos0 + r0:
        return "full"
    return "skipped" if c0 > pos0 + r1 - 1 else "partial"


def count_blocks(T: int, S: int, Br: int, Bc: int, causal: bool = True,
                 pos0: int = 0) -> dict[str, int]:
    """How many tiles of the ceil(T/Br) x ceil(S/Bc) grid are full, partial and skipped."""
    counts = {"full": 0, "partial": 0, "skipped": 0}
    for r0 in range(0, T, Br):
        for c0 in range(0, S, Bc):
            counts[block_kind(r0, min(r0 + Br, T), c0, min(c0 + Bc, S), causal, pos0)] += 1
    return counts


def _tile_scores(Qi, Kj, scale: float, kind: str, r0: int, r1: int, c0: int, c1: int,
                 pos0: int):
    """S_ij = Q_i K_j^T * scale, with -inf where key c is after query pos0 + r (partial tiles)."""
    Sij = Qi @ Kj.swapaxes(-1, -2)  # (B, KV, G, br, bc)
    Sij *= scale
    if kind == "partial":
        future = np.arange(c0, c1)[None, :] > pos0 + np.arange(r0, r1)[:, None]  # (br, bc)
        Sij[..., future] = -np.inf
    return Sij


def _check_shapes(q, k, v, Br: int, Bc: int):
    B, H, T, hd = q.shape
    KV, S = k.shape[1], k.shape[2]
    if k.shape != (B, KV, S, hd) or v.shape != k.shape or H % KV or Br < 1 or Bc < 1:
        raise ValueError(f"expected q (B, n_head, T, hd), k and v (B, n_kv_head, S, hd) with "
                         f"n_head % n_kv_head == 0 and Br, Bc >= 1; got {q.shape}, {k.shape}, "
                         f"{v.shape}, Br={Br}, Bc={Bc}")
    return B, H, KV, H // KV, T, S, hd


def flash_attention_forward(q, k, v, *, Br: int = 64, Bc: int = 64, causal: bool = True,
                            pos0: int = 0, on_block: Callable[[BlockStep], None] | None = None):
    """Tiled exact attention. q: (B, n_head, T, hd); k, v: (B, n_kv_head, S, hd).
    Returns O (B, n_head, T, hd) = softmax(Q K^T / sqrt(hd) + mask) V and lse (B, n_head, T),
    the log of each row's softmax denominator. causal: query t sees keys <= pos0 + t (pos0 = 0
    is torch's is_causal; pos0 = S - T is a cached decode; pos0 >= 0, so every query sees key
    0). on_block: called once per tile."""
    B, H, KV, G, T, S, hd = _check_shapes(q, k, v, Br, Bc)
    dtype = np.result_type(q, k, v)
    scale = 1.0 / float(np.sqrt(hd))  # a Python float keeps float32 inputs float32
    qg = q.reshape(B, KV, G, T, hd)
    kg, vg = k[:, :, None], v[:, :, None]  # (B, KV, 1, S, hd): broadcast over the group
    out = np.empty((B, KV, G, T, hd), dtype)
    lse = np.empty((B, KV, G, T), dtype)
    for i, r0 in enumerate(range(0, T, Br)):
        r1 = min(r0 + Br, T)
        Qi = qg[..., r0:r1, :]  # (B, KV, G, br, hd)
        m = np.full(Qi.shape[:-1], -np.inf, dtype)  # (B, KV, G, br)
        l = np.zeros(Qi.shape[:-1], dtype)
        acc = np.zeros(Qi.shape, dtype)  # (B, KV, G, br, hd)
        for j, c0 in enumerate(range(0, S, Bc)):
            c1 = min(c0 + Bc, S)
            kind = block_kind(r0, r1, c0, c1, causal, pos0)
            if kind == "skipped":  # every later tile of this row block is skipped too
                if on_block:
                    on_block(BlockStep(i, j, (r0, r1), (c0, c1), kind, None, None))
                continue
            Sij = _tile_scores(Qi, kg[..., c0:c1, :], scale, kind, r0, r1, c0, c1, pos0)
            # Key block 0 is never skipped and holds key 0, which every query sees: after it
            # m is finite, so m - m_new is never -inf - (-inf).
            m_new = np.maximum(m, Sij.max(-1))  # (B, KV, G, br)
            Pij = np.exp(Sij - m_new[..., None], out=Sij)  # exp(s - m_new), in place
            alpha = np.exp(m - m_new)  # rescales the old terms: exp(s - m_old) -> exp(s - m_new)
            l = alpha * l + Pij.sum(-1)
            acc = alpha[..., None] * acc + Pij @ vg[..., c0:c1, :]  # (B, KV, G, br, hd)
            m = m_new
            if on_block:
                on_block(BlockStep(i, j, (r0, r1), (c0, c1), kind, m.copy(), l.copy()))
        out[..., r0:r1, :] = acc / l[..., None]
        lse[..., r0:r1] = m + np.log(l)
    return out.reshape(B, H, T, hd), lse.reshape(B, H, T)


def flash_attention_backward(dout, q, k, v, out, lse, *, Br: int = 64, Bc: int = 64,
                             causal: bool = True, pos0: int = 0):
    """Gradients of flash_attention_forward, tile by tile, from O and lse only (no P saved).

        P_ij = exp(S_ij - lse_i)                 the exact probabilities, recomputed
        dV_j += P_ij^T dO_i,   dP_ij = dO_i V_j^T
        dS_ij = P_ij * (dP_ij - D_i),  D_i = rowsum(dO_i * O_i)
        dQ_i += dS_ij K_j / sqrt(hd),   dK_j += dS_ij^T Q_i / sqrt(hd)
    D_i replaces softmax's rowsum(dP * P): sum_c P_rc (dO_r . v_c) = dO_r . sum_c P_rc v_c =
    dO_r . O_r, one number per row, computed before the loop. Masked entries have P = 0, so
    dS = 0 there. With GQA, dK and dV sum over the G query heads sharing a K/V head.
    Returns dq (B, n_head, T, hd), dk, dv (B, n_kv_head, S, hd)."""
    B, H, KV, G, T, S, hd = _check_shapes(q, k, v, Br, Bc)
    scale = 1.0 / float(np.sqrt(hd))
    qg, dog = q.reshape(B, KV, G, T, hd), dout.reshape(B, KV, G, T, hd)
    kg, vg = k[:, :, None], v[:, :, None]  # (B, KV, 1, S, hd)
    lse_g = lse.reshape(B, KV, G, T)
    D = (dout * out).sum(-1).reshape(B, KV, G, T)  # rowsum(dO * O)
    dq = np.zeros_like(qg)
    dk, dv = np.zeros_like(k), np.zeros_like(v)  # (B, KV, S, hd)
    for c0 in range(0, S, Bc):  # outer loop over keys: dK_j, dV_j accumulate in one place
        c1 = min(c0 + Bc, S)
        Kj, Vj = kg[..., c0:c1, :], vg[..., c0:c1, :]  # (B, KV, 1, bc, hd)
        for r0 in range(0, T, Br):
            r1 = min(r0 + Br, T)
            kind = block_kind(r0, r1, c0, c1, causal, pos0)
            if kind == "skipped":
                continue
            Qi, dOi = qg[..., r0:r1, :], dog[..., r0:r1, :]  # (B, KV, G, br, hd)
            Sij = _tile_scores(Qi, Kj, scale, kind, r0, r1, c0, c1, pos0)
            Pij = np.exp(Sij - lse_g[..., r0:r1, None], out=Sij)  # (B, KV, G, br, bc)
            dv[..., c0:c1, :] += (Pij.swapaxes(-1, -2) @ dOi).sum(2)
            dSij = dOi @ Vj.swapaxes(-1, -2)  # dP_ij
            dSij -= D[..., r0:r1, None]
            dSij *= Pij
            dSij *= scale
            dq[..., r0:r1, :] += dSij @ Kj
            dk[..., c0:c1, :] += (dSij.swapaxes(-1, -2) @ Qi).sum(2)
    return dq.reshape(B, H, T, hd), dk, dv


def attention_memory(T: int, head_dim: int, *, Br: int = 64, Bc: int = 64,
                     bytes_per_number: int = 4, S: int | None = None) -> AttentionMemory:
    """Bytes one head needs beyond Q, K, V and O (batch 1), naive against tiled:

        naive = 2 T S                                    numbers: S and P, each (T, S)
        tiled = Br hd + 2 Bc hd + Br Bc + Br hd + 2 Br + T
                Q_i    K_j, V_j   S_ij  acc     m, l   lse
    with Br, Bc clipped to T and S (a block holds at most the whole sequence). S defaults to T.
    Naive grows as T^2, tiled as T (the lse kept for the backward pass) plus a constant. Real
    kernels keep m, l, acc and lse in float32 whatever the inputs; this count uses one size."""
    S = T if S is None else S
    br, bc = min(Br, T), min(Bc, S)
    naive = 2 * T * S
    tiled = br * head_dim + 2 * bc * head_dim + br * bc + br * head_dim + 2 * br + T
    return AttentionMemory(naive * bytes_per_number, tiled * bytes_per_number)
