"""Causal self-attention with grouped key/value heads (MHA, GQA, MQA), forward and backward.

With n_head query heads and n_kv_head key/value heads, each K/V head serves a group of
G = n_head / n_kv_head query heads (G = 1: MHA; n_kv_head = 1: MQA). Instead of copying K and V
G times, queries are viewed as (B, n_kv_head, G, T, head_dim) and K, V broadcast over G.

    S = Q K^T / sqrt(head_dim) + mask              (B, KV, G, T, S)
    P = softmax(S)                                 each row sums to 1
    O = P V                                        (B, KV, G, T, head_dim)
The mask is 0 where query i may see key j (j <= i) and -inf after; with ALiBi it is also
-m_h (i - j) on the visible keys (positions.py). Either way a constant, so it has no backward.
Backward, with dO given:
    dP = dO V^T,  dV = P^T dO (summed over G),
    dS = P * (dP - rowsum(dP * P)) / sqrt(head_dim),  dQ = dS K,  dK = dS^T Q (summed over G)
and RoPE's backward (the inverse rotation) on dQ and dK.

With a KV cache, the new keys/values are written at positions pos0..pos0+T-1 and queries attend
to everything cached so far (used by generation; training needs no cache). MLA, whose cache
holds a latent instead of K and V, is in mla.py.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .dropout import dropout_backward, dropout_forward
from .linear import LinearCache, dense_backward, dense_forward
from .positions import alibi_bias, rope_backward, rope_forward


class AttentionCache(NamedTuple):
    """What attention_backward needs."""

    wq: LinearCache  # the four projections
    wk: LinearCache
    wv: LinearCache
    wo: LinearCache
    q: np.ndarray  # (B, KV, G, T, hd) queries after RoPE, grouped by their K/V head
    k: np.ndarray  # (B, KV, 1, S, hd) keys after RoPE (broadcast over the group)
    v: np.ndarray  # (B, KV, 1, S, hd)
    P: np.ndarray  # (B, KV, G, T, S) softmax of the scores
    P_drop: np.ndarray  # P after dropout (P itself without dropout)
    drop_mask: np.ndarray | None  # dropout's mask on P, or None
    rope: tuple | None  # (cos, sin) of the positions, or None
    pairing: str  # RoPE pairing: "half" | "interleaved"
    scale: float  # 1 / sqrt(head_dim)


def attention_forward(cfg, x, p: dict, prefix: str, *, rope=None, lora=None, cache=None,
                      layer: int = 0, pos0: int = 0, rng=None):
    """x: (B, T, d_model) -> (B, T, d_model), AttentionCache. prefix: e.g. 'h.0.attn.'.
    rope: (cos, sin) for positions pos0..pos0+T-1, or None. cache: a KVCache (model.py) to
    append to and attend over, or None. rng: enables dropout on P (training only)."""
    lora = lora or {}
    B, T, _ = x.shape
    H, KV, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    G = H // KV
    q, cq = dense_forward(p, prefix + "wq", x, lora)
    k, ck = dense_forward(p, prefix + "wk", x, lora)
    v, cv = dense_forward(p, prefix + "wv", x, lora)
    q = q.reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
    k = k.reshape(B, T, KV, hd).transpose(0, 2, 1, 3)  # (B, KV, T, hd)
    v = v.reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    if rope is not None:
        q = rope_forward(q, *rope, cfg.rope_pairing)
        k = rope_forward(k, *rope, cfg.rope_pairing)
    if cache is not None:  # append to the cache and attend over all of it
        k, v = cache.store(layer, pos0, k, v)
    S_len = k.shape[2]
    qg = q.reshape(B, KV, G, T, hd)
    kg, vg = k[:, :, None], v[:, :, None]  # (B, KV, 1, S, hd): broadcast over the group
    scale = 1.0 / float(np.sqrt(hd))  # a Python float: np.float64 would promote float32 arrays
    scores = qg @ kg.swapaxes(-1, -2)  # (B, KV, G, T, S)
    scores *= scale
    scores += score_bias(cfg, T, S_len, pos0, scores.dtype)  # query t sees keys 0..pos0 + t
    P, P_drop, drop_mask = softmax_dropout(scores, cfg.dropout, rng)
    out = P_drop @ vg  # (B, KV, G, T, hd)
    out = out.reshape(B, H, T, hd).transpose(0, 2, 1, 3).reshape(B, T, H * hd)
    y, co = dense_forward(p, prefix + "wo", out, lora)
    return y, AttentionCache(cq, ck, cv, co, qg, kg, vg, P, P_drop, drop_mask, rope,
                             cfg.rope_pairing, scale)


def softmax_dropout(scores, p_drop: float, rng):
    """P = softmax over the last axis, in place on `scores` (this layer is bound by memory
    traffic, not arithmetic), then dropout. Returns P, P after dropout, dropout's mask."""
    scores -= scores.max(-1, keepdims=True)
    P = np.exp(scores, out=scores)
    P /= P.sum(-1, keepdims=True)
    P_drop, drop_mask = dropout_forward(P, p_drop, rng)
    return P, P_drop, drop_mask


def softmax_backward(dP_drop, P, drop_mask, scale: float):
    """dS = P * (dP - rowsum(dP * P)) * scale, in place on dP (a fresh array: dO V^T, or its
    masked copy)."""
    dS = dropout_backward(dP_drop, drop_mask)
    dS -= (dS * P).sum(-1, keepdims=True)
    dS *= P
    dS *= scale
    return dS


_BIAS: dict = {}


def score_bias(cfg, T: int, S: int, pos0: int, dtype) -> np.ndarray:
    """The additive mask of the scores, viewed to broadcast over (B, KV, G, T, S): (T, S) causal
    (0 where query pos0 + t may see key s <= pos0 + t, -inf after), or with ALiBi
    (n_kv_head, G, T, S) with each head's distance bias. Cached: decoding asks for the same one
    again and again."""
    alibi = cfg.position == "alibi"
    key = (T, S, pos0, np.dtype(dtype).str, alibi and (cfg.n_head, cfg.n_kv_head))
    bias = _BIAS.get(key)
    if bias is None:
        if len(_BIAS) > 256:
            _BIAS.clear()
        if alibi:
            G = cfg.n_head // cfg.n_kv_head
            bias = alibi_bias(cfg.n_head, T, S, pos0, dtype).reshape(cfg.n_kv_head, G, T, S)
        else:
            future = np.arange(S)[None, :] > (pos0 + np.arange(T))[:, None]
            bias = np.where(future, -np.inf, 0.0).astype(dtype)
        _BIAS[key] = bias
    return bias


def attention_backward(dy, cache: AttentionCache, grads: dict, frozen=frozenset()):
    """dy: (B, T, d_model) -> dx; writes the projections' gradients into `grads`."""
    c = cache
    B, KV, G, T, hd = c.q.shape
    H = KV * G
    dout = dense_backward(dy, c.wo, grads, frozen)  # (B, T, H*hd)
    dout = dout.reshape(B, T, H, hd).transpose(0, 2, 1, 3).reshape(B, KV, G, T, hd)
    dP_drop = dout @ c.v.swapaxes(-1, -2)  # (B, KV, G, T, S)
    dv = (c.P_drop.swapaxes(-1, -2) @ dout).sum(2)  # (B, KV, S, hd)
    dS = softmax_backward(dP_drop, c.P, c.drop_mask, c.scale)
    dq = (dS @ c.k).reshape(B, H, T, hd)
    dk = (dS.swapaxes(-1, -2) @ c.q).sum(2)  # (B, KV, S, hd)
    if c.rope is not None:
        dq = rope_backward(dq, *c.rope, c.pairing)
        dk = rope_backward(dk, *c.rope, c.pairing)
    dq = dq.transpose(0, 2, 1, 3).reshape(B, T, H * hd)
    dk = dk.transpose(0, 2, 1, 3).reshape(B, T, KV * hd)
    dv = dv.transpose(0, 2, 1, 3).reshape(B, T, KV * hd)
    return (dense_backward(dq, c.wq, grads, frozen) + dense_backward(dk, c.wk, grads, frozen)
            + dense_backward(dv, c.wv, grads, frozen))
