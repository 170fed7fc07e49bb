"""Multi-head latent attention (MLA, DeepSeek-V2 2024), forward and backward.

The KV cache is what limits long-context decoding. MLA caches, per token and layer, one small
latent c (kv_lora_rank = d_c numbers) and one RoPE key k_R shared by all heads (d_R numbers)
instead of K and V for every head. With H heads, d_n = qk_nope_head_dim, d_R = qk_rope_head_dim,
d_v = v_head_dim:

    q = x W_q  (or q = RMSNorm(x W_qa) W_qb: queries through a latent too)   (B, T, H (d_n + d_R))
    [q_C, q_R] = q per head;  q_R <- RoPE(q_R)                       (B, H, T, d_n), (..., d_R)
    [c_raw, k_R] = x W_kva;   c = RMSNorm(c_raw);  k_R <- RoPE(k_R)  (B, T, d_c), (B, T, d_R)
    [k_C, v] = c W_kvb per head                                      (B, H, S, d_n), (..., d_v)
    S = (q_C k_C^T + q_R k_R^T) / sqrt(d_n + d_R) + causal mask      (B, H, T, S)
    O = softmax(S) V;   y = O W_o                                    (B, T, d_model)

RoPE cannot be applied to k_C: the rotation would sit between W_kvb and c and block the
absorption below; hence the separate, "decoupled" RoPE key.

Backward, with dO given (the softmax part as in attention.py):
    dP = dO V^T,  dV = P^T dO,  dS = P * (dP - rowsum(dP * P)) / sqrt(d_n + d_R)
    dq_C = dS k_C,   dk_C = dS^T q_C,   dq_R = dS k_R,
    dk_R = sum over heads of dS^T q_R     (k_R is one key broadcast to every head)
    [dk_C, dV] per head -> d(c W_kvb): a linear backward gives dW_kvb and dc
    dc -> RMSNorm backward;  dq_R, dk_R -> RoPE backward (the inverse rotation)
    dx = d(x W_kva) from [dc_raw, dk_R]  +  d(x W_q) (or through W_qb, RMSNorm, W_qa) from dq
Every projection goes through linear.py, so LoRA works on any of them (wq, wq_a, wq_b, wkv_a,
wkv_b, wo) and is tested with them against autograd (tests/test_numpy_mla.py).

Absorbed decoding (forward only): q_C . k_C = q_C . (W_UK c) = (W_UK^T q_C) . c, so the keys'
up-projection folds into the query, and the values' is applied after attending over latents:
    o = softmax([W_UK^T q_C, q_R] . [c, k_R]) c,   then  v-out = W_UV o
attention with ONE shared key/value head over the cached latents. Same outputs as the naive path.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .attention import score_bias, softmax_backward, softmax_dropout
from .linear import LinearCache, dense_backward, dense_forward
from .norms import NormCache, norm_backward, norm_forward
from .positions import rope_backward, rope_forward


class MLACache(NamedTuple):
    """What mla_backward needs."""

    wq_a: LinearCache | None  # x -> query latent (q_lora_rank > 0), else None
    q_norm: NormCache | None  # RMSNorm of the query latent, else None
    wq: LinearCache  # the projection that made q: wq, or wq_b from the normed query latent
    wkv_a: LinearCache  # x -> [c_raw, k_R]
    kv_norm: NormCache  # c = RMSNorm(c_raw)
    wkv_b: LinearCache  # c -> [k_C, v] per head
    wo: LinearCache
    q_nope: np.ndarray  # (B, H, T, d_n)  q_C
    q_pe: np.ndarray  # (B, H, T, d_R)  q_R after RoPE
    k_nope: np.ndarray  # (B, H, S, d_n)  k_C
    k_pe: np.ndarray  # (B, S, d_R)     k_R after RoPE, shared by the heads
    v: np.ndarray  # (B, H, S, d_v)
    P: np.ndarray  # (B, H, T, S) softmax of the scores
    P_drop: np.ndarray  # P after dropout
    drop_mask: np.ndarray | None
    rope: tuple  # (cos, sin), (T, d_R // 2)
    pairing: str
    scale: float  # 1 / sqrt(d_n + d_R)


def mla_forward(cfg, x, p: dict, prefix: str, *, rope=None, lora=None, cache=None,
                layer: int = 0, pos0: int = 0, rng=None, absorb: bool = False):
    """x: (B, T, d_model) -> (B, T, d_model), MLACache (None when absorb). rope: (cos, sin) of
    positions pos0.. over qk_rope_head_dim (MLA always has RoPE). cache: a KVCache of latents
    (model.py). absorb: the absorbed path, for inference only (no backward)."""
    lora = lora or {}
    B, T, _ = x.shape
    H, dn, dr, dv, dc = (cfg.n_head, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                         cfg.kv_lora_rank)
    pairing = cfg.rope_pairing
    c_wq_a = c_qn = None
    if cfg.q_lora_rank:
        q_lat, c_wq_a = dense_forward(p, prefix + "wq_a", x, lora)  # (B, T, q_lora_rank)
        q_lat, c_qn = norm_forward(cfg, q_lat, p, prefix + "q_norm", "rmsnorm")
        q, c_wq = dense_forward(p, prefix + "wq_b", q_lat, lora)  # (B, T, H (dn + dr))
    else:
        q, c_wq = dense_forward(p, prefix + "wq", x, lora)
    q = q.reshape(B, T, H, dn + dr).transpose(0, 2, 1, 3)  # (B, H, T, dn + dr)
    q_nope = q[..., :dn]  # (B, H, T, dn)
    q_pe = rope_forward(q[..., dn:], *rope, pairing)  # (B, H, T, dr)
    ckv, c_wkv_a = dense_forward(p, prefix + "wkv_a", x, lora)  # (B, T, dc + dr)
    c, c_kvn = norm_forward(cfg, ckv[..., :dc], p, prefix + "kv_norm", "rmsnorm")  # (B, T, dc)
    k_pe = rope_forward(ckv[..., dc:], *rope, pairing)  # (B, T, dr): one key for all heads
    if cache is not None:  # the latent cache: dc + dr numbers per token and layer
        c, k_pe = cache.store_latent(layer, pos0, c, k_pe)  # (B, S, dc), (B, S, dr)
    S = c.shape[1]
    scale = 1.0 / float(np.sqrt(dn + dr))
    if absorb:
        return _absorbed(cfg, p, prefix, lora, q_nope, q_pe, c, k_pe, scale, pos0, rng), None
    kv, c_wkv_b = dense_forward(p, prefix + "wkv_b", c, lora)  # (B, S, H (dn + dv))
    kv = kv.reshape(B, S, H, dn + dv).transpose(0, 2, 1, 3)  # (B, H, S, dn + dv)
    k_nope, v = kv[..., :dn], kv[..., dn:]  # (B, H, S, dn), (B, H, S, dv)
    scores = q_nope @ k_nope.swapaxes(-1, -2)  # (B, H, T, S)
    scores += q_pe @ k_pe[:, None].swapaxes(-1, -2)  # the shared RoPE key, broadcast over H
    scores *= scale
    scores += score_bias(cfg, T, S, pos0, scores.dtype)
    P, P_drop, drop_mask = softmax_dropout(scores, cfg.dropout, rng)
    out = (P_drop @ v).transpose(0, 2, 1, 3).reshape(B, T, H * dv)  # (B, T, H dv)
    y, c_wo = dense_forward(p, prefix + "wo", out, lora)
    return y, MLACache(c_wq_a, c_qn, c_wq, c_wkv_a, c_kvn, c_wkv_b, c_wo, q_nope, q_pe, k_nope,
                       k_pe, v, P, P_drop, drop_mask, rope, pairing, scale)


def _absorbed(cfg, p, prefix, lora, q_nope, q_pe, c, k_pe, scale, pos0, rng):
    """softmax([q_C W_UK, q_R] . [c, k_R]) c, then W_UV: attention over the latents."""
    B, H, T, _ = q_nope.shape
    dn, dv, dc = cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    name = prefix + "wkv_b"
    W = p[name]  # (H (dn + dv), dc)
    if name in lora:  # the adapter folded in: W + s B A
        A, Bm, s = lora[name]
        W = W + s * (Bm @ A)
    W = W.reshape(H, dn + dv, dc)
    W_uk, W_uv = W[:, :dn], W[:, dn:]  # (H, dn, dc), (H, dv, dc)
    q_lat = q_nope @ W_uk  # (B, H, T, dc): the keys' up-projection, absorbed into the query
    scores = q_lat @ c[:, None].swapaxes(-1, -2)  # (B, H, T, S)
    scores += q_pe @ k_pe[:, None].swapaxes(-1, -2)
    scores *= scale
    scores += score_bias(cfg, T, c.shape[1], pos0, scores.dtype)
    _, P_drop, _ = softmax_dropout(scores, cfg.dropout, rng)
    o_lat = P_drop @ c[:, None]  # (B, H, T, dc)
    out = o_lat @ W_uv.swapaxes(-1, -2)  # (B, H, T, dv): the values' up-projection, after
    y, _ = dense_forward(p, prefix + "wo", out.transpose(0, 2, 1, 3).reshape(B, T, H * dv), lora)
    return y


def mla_backward(dy, cache: MLACache, grads: dict, frozen=frozenset()):
    """dy: (B, T, d_model) -> dx; writes every projection's and norm's gradient into `grads`."""
    c = cache
    B, H, T, dn = c.q_nope.shape
    S, dv = c.k_pe.shape[1], c.v.shape[-1]
    dout = dense_backward(dy, c.wo, grads, frozen)  # (B, T, H dv)
    dout = dout.reshape(B, T, H, dv).transpose(0, 2, 1, 3)  # (B, H, T, dv)
    dP_drop = dout @ c.v.swapaxes(-1, -2)  # (B, H, T, S)
    dv_ = c.P_drop.swapaxes(-1, -2) @ dout  # (B, H, S, dv)
    dS = softmax_backward(dP_drop, c.P, c.drop_mask, c.scale)  # (B, H, T, S)
    dSt = dS.swapaxes(-1, -2)  # (B, H, S, T)
    dq_nope = dS @ c.k_nope  # (B, H, T, dn)
    dq_pe = dS @ c.k_pe[:, None]  # (B, H, T, dr)
    dk_nope = dSt @ c.q_nope  # (B, H, S, dn)
    dk_pe = (dSt @ c.q_pe).sum(1)  # (B, S, dr): the shared key collects every head's gradient
    dkv = np.concatenate([dk_nope, dv_], -1).transpose(0, 2, 1, 3).reshape(B, S, -1)
    dlat = dense_backward(dkv, c.wkv_b, grads, frozen)  # (B, S, dc)
    dlat = norm_backward(dlat, c.kv_norm, grads)  # through c = RMSNorm(c_raw)
    dk_pe = rope_backward(dk_pe, *c.rope, c.pairing)
    dx = dense_backward(np.concatenate([dlat, dk_pe], -1), c.wkv_a, grads, frozen)
    dq_pe = rope_backward(dq_pe, *c.rope, c.pairing)
    dq = np.concatenate([dq_nope, dq_pe], -1).transpose(0, 2, 1, 3).reshape(B, T, -1)
    dq = dense_backward(dq, c.wq, grads, frozen)  # (B, T, d_model) or (B, T, q_lora_rank)
    if c.wq_a is not None:  # back through q = RMSNorm(x W_qa) W_qb
        dq = dense_backward(norm_backward(dq, c.q_norm, grads), c.wq_a, grads, frozen)
    return dx + dq
