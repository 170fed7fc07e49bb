"""Multi-head latent attention (MLA), as in DeepSeek-V2 (DeepSeek-AI 2024).

The KV cache is what limits long-context decoding. MLA caches, per token and layer, one small
latent vector c_KV (kv_lora_rank numbers) plus one shared RoPE key (qk_rope_head_dim numbers)
instead of K and V for every head:

    c_KV = RMSNorm(x W_DKV)                        (B, T, d_c)      <- cached
    k_R  = RoPE(x W_KR)                            (B, T, d_R)      <- cached, shared by all heads
    [k_C, v] = c_KV W_UKV  per head                (B, H, T, d_nope + d_v)
    q = [q_C, RoPE(q_R)] from x (or from a compressed query latent)
    score = (q_C . k_C + q_R . k_R) / sqrt(d_nope + d_R)

RoPE cannot be applied to k_C (the rotation would sit between W_UK and c_KV and block the trick
below), hence the separate, "decoupled" RoPE key.

Absorbed decoding: q_C . k_C = q_C . (W_UK c) = (W_UK^T q_C) . c, so the up-projection of keys can
be folded into the query, and that of values applied after attending over the latents:
    o = softmax([W_UK^T q_C, q_R] . [c, k_R]) c  then  v-out = W_UV o
This is attention with ONE shared key/value head (MQA) over the latents: nothing per head is
ever materialised for the past tokens. The naive and absorbed paths give the same outputs
(tests/test_torch_engine.py::test_mla_absorbed_equals_naive).
"""

from __future__ import annotations

import math

import torch

from .attention import attend
from .norms import rms_norm
from .positions import apply_rope


class LatentCache:
    """c_KV and the RoPE key of every layer: (n_layer, B, max_len, d_c) and (..., d_R)."""

    def __init__(self, cfg, batch_size: int, max_len: int | None = None, dtype=torch.float32,
                 device="cpu"):
        n = max_len or cfg.context_length
        self.c = torch.zeros(cfg.n_layer, batch_size, n, cfg.kv_lora_rank, dtype=dtype,
                             device=device)
        self.k_pe = torch.zeros(cfg.n_layer, batch_size, n, cfg.qk_rope_head_dim, dtype=dtype,
                                device=device)
        self.max_len, self.pos = n, 0

    def store(self, layer: int, pos0: int, c, k_pe):
        """Write the new latents and RoPE keys at pos0.. and return all of this layer's."""
        T = c.shape[1]
        self.c[layer, :, pos0:pos0 + T] = c
        self.k_pe[layer, :, pos0:pos0 + T] = k_pe
        return self.c[layer, :, :pos0 + T], self.k_pe[layer, :, :pos0 + T]

    def nbytes_per_token(self) -> int:
        return self.c.shape[0] * (self.c.shape[-1] + self.k_pe.shape[-1]) * self.c.element_size()


def mla_attention(cfg, x, p, prefix: str, layer: int, ctx):
    """x: (B, T, d_model) -> (B, T, d_model). ctx: the step context (context.py); its cache is a
    LatentCache, and ctx.mla_absorb picks the absorbed path."""
    B, T, _ = x.shape
    H, dn, dr, dv, dc = (cfg.n_head, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                         cfg.kv_lora_rank)
    lin = ctx.linear
    if cfg.q_lora_rank:
        q = lin(rms_norm(lin(x, p, prefix + "wq_a"), p[prefix + "q_norm.weight"], cfg.norm_eps),
                p, prefix + "wq_b")
    else:
        q = lin(x, p, prefix + "wq")
    q_nope, q_pe = q.view(B, T, H, dn + dr).transpose(1, 2).split([dn, dr], dim=-1)
    q_pe = apply_rope(q_pe, *ctx.rope, cfg.rope_pairing)  # (B, H, T, dr)
    c, k_pe = lin(x, p, prefix + "wkv_a").split([dc, dr], dim=-1)
    c = rms_norm(c, p[prefix + "kv_norm.weight"], cfg.norm_eps)  # (B, T, dc)
    k_pe = apply_rope(k_pe, *ctx.rope, cfg.rope_pairing)  # (B, T, dr): one key for all heads
    if ctx.cache is not None:  # the latent cache: dc + dr numbers per token and layer
        c, k_pe = ctx.cache.store(layer, ctx.pos0, c, k_pe)
    S = c.shape[1]
    scale = 1.0 / math.sqrt(dn + dr)
    W = ctx.weight(p, prefix + "wkv_b").view(H, dn + dv, dc)  # up-projections (+ LoRA)
    W_uk, W_uv = W[:, :dn], W[:, dn:]  # (H, dn, dc), (H, dv, dc)
    args = (ctx.pos0, ctx.use_sdpa, ctx.dropout, ctx.training)
    if ctx.mla_absorb:
        q_lat = torch.einsum("bhtd,hdc->bhtc", q_nope, W_uk)  # keys' up-projection, absorbed
        qq = torch.cat([q_lat, q_pe], dim=-1)  # (B, H, T, dc + dr)
        kk = torch.cat([c, k_pe], dim=-1)[:, None]  # (B, 1, S, dc + dr): one shared head
        o_lat = attend(qq, kk, c[:, None], *args, scale=scale)
        out = torch.einsum("bhtc,hvc->bhtv", o_lat, W_uv)  # values' up-projection, after
    else:
        kv = torch.einsum("bsc,hec->bhse", c, W)  # (B, H, S, dn + dv): every head, every token
        k_nope, v = kv.split([dn, dv], dim=-1)
        k = torch.cat([k_nope, k_pe[:, None].expand(B, H, S, dr)], dim=-1)
        out = attend(torch.cat([q_nope, q_pe], dim=-1), k, v, *args, scale=scale)
    return lin(out.transpose(1, 2).reshape(B, T, H * dv), p, prefix + "wo")
