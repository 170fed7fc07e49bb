"""Causal self-attention with n_kv_head key/value heads (MHA, GQA, MQA) and its KV cache.

Two paths compute the same thing (tested equal): `scaled_dot_product_attention` (a fused kernel;
flash attention on CUDA) and the explicit softmax(QK^T / sqrt(d)) V that the NumPy engine also
writes out. ALiBi adds its distance bias to the scores in either path. Where the keys and values
go (a KV cache, a paged cache) is the step context's business (context.py, paged.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .ffn import matmul
from .positions import apply_rope, rotate


class KVCache:
    """Keys and values of every layer: (n_layer, B, n_kv_head, max_len, head_dim), and how many
    positions are filled."""

    def __init__(self, cfg, batch_size: int, max_len: int | None = None, dtype=torch.float32,
                 device="cpu"):
        n = max_len or cfg.context_length
        shape = (cfg.n_layer, batch_size, cfg.n_kv_head, n, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len, self.pos = n, 0

    def store(self, layer: int, pos0: int, k, v):
        """Write the new keys/values at pos0.. and return all of this layer's so far."""
        T = k.shape[2]
        self.k[layer, :, :, pos0:pos0 + T] = k
        self.v[layer, :, :, pos0:pos0 + T] = v
        return self.k[layer, :, :, :pos0 + T], self.v[layer, :, :, :pos0 + T]

    def nbytes_per_token(self) -> int:
        return 2 * self.k.shape[0] * self.k.shape[2] * self.k.shape[4] * self.k.element_size()


def causal_mask(T: int, S: int, pos0: int, device) -> torch.Tensor:
    """(T, S) True where query pos0 + t may see key s."""
    keys = torch.arange(S, device=device)[None, :]
    return keys <= (pos0 + torch.arange(T, device=device))[:, None]


def attend(q, k, v, pos0: int, use_sdpa: bool, p_drop: float, training: bool, bias=None,
           scale: float | None = None):
    """q: (B, H, T, d); k, v: (B, H or KV, S, d). The core shared by every attention kind."""
    T, S, H = q.shape[2], k.shape[2], q.shape[1]
    p_drop = p_drop if training else 0.0
    if T == 1 and bias is None and p_drop == 0.0:
        # Decoding one token: a (1 x S) row of scores per head. Grouped views instead of a fused
        # kernel: on CPU the kernel's set-up costs more than this whole product.
        B, KV, d = q.shape[0], k.shape[1], q.shape[-1]
        qg = q.view(B, KV, H // KV, 1, d)
        att = (qg @ k.unsqueeze(2).transpose(-1, -2)) * (scale if scale is not None
                                                         else 1 / math.sqrt(d))
        out = att.softmax(-1) @ v.unsqueeze(2)  # (B, KV, G, 1, dv)
        return out.view(B, H, 1, v.shape[-1])
    if use_sdpa:
        kw = {"enable_gqa": True} if k.shape[1] != H else {}
        if bias is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p_drop,
                                                  scale=scale, **kw)
        if T == 1 or (pos0 == 0 and T == S):  # one query sees all; or a plain causal square
            return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, dropout_p=p_drop,
                                                  scale=scale, **kw)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S, pos0, q.device),
                                              dropout_p=p_drop, scale=scale, **kw)
    if k.shape[1] != H:  # each K/V head serves H / KV query heads
        k = k.repeat_interleave(H // k.shape[1], dim=1)
        v = v.repeat_interleave(H // v.shape[1], dim=1)
    att = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if bias is not None:
        att = att + bias
    else:
        att = att.masked_fill(~causal_mask(T, S, pos0, q.device), float("-inf"))
    att = F.dropout(att.softmax(-1), p_drop, training)
    return att @ v


def attention(cfg, x, p, prefix: str, layer: int, ctx):
    """x: (B, T, d_model) -> (B, T, d_model). ctx: the step context (context.py)."""
    B, T, _ = x.shape
    H, KV, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    if ctx.fused and prefix + "wqkv" in p:  # one product for q, k, v (fuse_for_inference)
        qk, v = matmul(x, p[prefix + "wqkv"]).split([(H + KV) * hd, KV * hd], dim=-1)
        qk = qk.reshape(B, T, H + KV, hd)
        if ctx.rope is not None:  # queries and keys side by side: one rotation for all heads
            cos, sin = ctx.rope_full
            qk = rotate(qk, cos[:, None], sin[:, None], cfg.rope_pairing)
        q, k = qk.transpose(1, 2).split([H, KV], dim=1)  # (B, H, T, hd), (B, KV, T, hd)
    else:
        q, k, v = (ctx.linear(x, p, prefix + n) for n in ("wq", "wk", "wv"))
        q = q.reshape(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.reshape(B, T, KV, hd).transpose(1, 2)  # (B, KV, T, hd)
        if ctx.rope is not None:
            q = apply_rope(q, *ctx.rope, cfg.rope_pairing)
            k = apply_rope(k, *ctx.rope, cfg.rope_pairing)
    v = v.reshape(B, T, KV, hd).transpose(1, 2)
    out = ctx.attend(cfg, layer, q, k, v)  # (B, H, T, hd)
    return ctx.linear(out.transpose(1, 2).reshape(B, T, H * hd), p, prefix + "wo")
