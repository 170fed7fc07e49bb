"""Causal self-attention with grouped key/value heads (MHA, GQA, MQA), forward and backward.

With n_head query heads and n_kv_head key/value heads, each K/V head serves a group of
G = n_head / n_kv_head query heads (G = 1: MHA; n_kv_head = 1: MQA). Instead of copying K and V
G times, queries are viewed as (B, n_kv_head, G, T, head_dim) and K, V broadcast over G.

    S = Q K^T / sqrt(head_dim) + causal mask      (B, KV, G, T, S)
    P = softmax(S)                                 each row sums to 1
    O = P V                                        (B, KV, G, T, head_dim)
Backward, with dO given:
    dP = dO V^T,  dV = P^T dO (summed over G),
    dS = P * (dP - rowsum(dP * P)) / sqrt(head_dim),  dQ = dS K,  dK = dS^T Q (summed over G)

With a KV cache, the new keys/values are written at positions pos0..pos0+T-1 and queries attend
to everything cached so far (used by generation; training needs no cache).
"""

from __future__ import annotations

import numpy as np

from .dropout import dropout_backward, dropout_forward
from .linear import dense_backward, dense_forward
from .positions import rope_backward, rope_forward


def attention_forward(p: dict, prefix: str, x, cfg, rope=None, lora=None, cache=None, layer=0,
                      pos0: int = 0, rng=None):
    """x: (B, T, d_model). rope: (cos, sin) for positions pos0..pos0+T-1, or None."""
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
        q, k = rope_forward(q, *rope), rope_forward(k, *rope)
    if cache is not None:  # append to the cache and attend over all of it
        cache.k[layer][:, :, pos0:pos0 + T] = k
        cache.v[layer][:, :, pos0:pos0 + T] = v
        k, v = cache.k[layer][:, :, :pos0 + T], cache.v[layer][:, :, :pos0 + T]
    S_len = k.shape[2]
    qg = q.reshape(B, KV, G, T, hd)
    kg, vg = k[:, :, None], v[:, :, None]  # (B, KV, 1, S, hd): broadcast over the group
    scale = 1.0 / float(np.sqrt(hd))  # a Python float: an np.float64 would promote float32 to float64
    scores = qg @ kg.swapaxes(-1, -2)  # (B, KV, G, T, S)
    scores *= scale
    scores += _causal_bias(T, S_len, pos0, scores.dtype)  # query t sees keys 0..pos0 + t
    # softmax over keys, in place (this layer is bound by memory traffic, not arithmetic)
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores, out=scores)
    probs /= probs.sum(-1, keepdims=True)
    probs_d, dmask = dropout_forward(probs, cfg.dropout, rng)
    out = probs_d @ vg  # (B, KV, G, T, hd)
    out = out.reshape(B, H, T, hd).transpose(0, 2, 1, 3).reshape(B, T, H * hd)
    y, co = dense_forward(p, prefix + "wo", out, lora)
    return y, (cq, ck, cv, co, qg, kg, vg, probs, probs_d, dmask, rope, scale)


_BIAS: dict = {}


def _causal_bias(T: int, S: int, pos0: int, dtype) -> np.ndarray:
    """(T, S) additive mask: 0 where query pos0 + t may see key s (s <= pos0 + t), -inf after."""
    key = (T, S, pos0, np.dtype(dtype).str)
    bias = _BIAS.get(key)
    if bias is None:
        if len(_BIAS) > 256:
            _BIAS.clear()
        future = np.arange(S)[None, :] > (pos0 + np.arange(T))[:, None]
        bias = np.where(future, -np.inf, 0.0).astype(dtype)
        _BIAS[key] = bias
    return bias


def attention_backward(dy, cache, grads: dict, cfg, frozen=frozenset()):
    cq, ck, cv, co, qg, kg, vg, probs, probs_d, dmask, rope, scale = cache
    B, KV, G, T, hd = qg.shape
    H = KV * G
    dout = dense_backward(dy, co, grads, frozen)  # (B, T, H*hd)
    dout = dout.reshape(B, T, H, hd).transpose(0, 2, 1, 3).reshape(B, KV, G, T, hd)
    dprobs_d = dout @ vg.swapaxes(-1, -2)  # (B, KV, G, T, S)
    dv = (probs_d.swapaxes(-1, -2) @ dout).sum(2)  # (B, KV, S, hd)
    dprobs = dropout_backward(dprobs_d, dmask)
    # dS = P * (dP - rowsum(dP * P)) * scale, in place on dP
    dscores = dprobs  # a fresh array (dO V^T, or its masked copy): ours to overwrite
    dscores -= (dprobs * probs).sum(-1, keepdims=True)
    dscores *= probs
    dscores *= scale
    dq = (dscores @ kg).reshape(B, H, T, hd)
    dk = (dscores.swapaxes(-1, -2) @ qg).sum(2)  # (B, KV, S, hd)
    if rope is not None:
        dq, dk = rope_backward(dq, *rope), rope_backward(dk, *rope)
    dq = dq.transpose(0, 2, 1, 3).reshape(B, T, H * hd)
    dk = dk.transpose(0, 2, 1, 3).reshape(B, T, KV * hd)
    dv = dv.transpose(0, 2, 1, 3).reshape(B, T, KV * hd)
    return (dense_backward(dq, cq, grads, frozen) + dense_backward(dk, ck, grads, frozen)
            + dense_backward(dv, cv, grads, frozen))
