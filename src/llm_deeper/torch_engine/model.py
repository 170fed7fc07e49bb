"""A decoder in PyTorch built from `ModelConfig`, parameter for parameter the NumPy engine's.

`forward(params, cfg, ids)` is the whole model as one function of a name -> tensor mapping
(the same names as `model.safetensors`), so tests can hand it leaf tensors and compare autograd's
gradients with the NumPy engine's. `TorchGPT` wraps it as an `nn.Module` whose `state_dict()`
keys are exactly those names.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype):
    """cos and sin of the rotation angles p * theta^(-2i/head_dim), (T, head_dim // 2).

    Computed in float32 exactly as HF transformers does (inverse frequencies from an int64
    arange, angles as a float32 product), so that logits match it to the last bit rather than
    to ~1e-4: the angle's float32 rounding is the largest difference between implementations."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    ang = positions.float()[:, None] * inv_freq[None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


_ROPE: dict = {}


def rope_table(cfg: ModelConfig, device, dtype):
    """cos, sin for every position of the context: (context_length, head_dim // 2), cached."""
    key = (cfg.head_dim, cfg.rope_theta, cfg.context_length, str(device), dtype)
    if key not in _ROPE:
        cos, sin = rope_cos_sin(torch.arange(cfg.context_length), cfg.head_dim, cfg.rope_theta,
                                dtype)
        _ROPE[key] = (cos.to(device), sin.to(device))
    return _ROPE[key]


def apply_rope(x, cos, sin):
    """Half-split pairing (Llama/HF): feature i rotates with feature i + head_dim/2."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def sinusoidal_table(n_pos: int, d: int, dtype, device=None):
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    pe = torch.zeros(n_pos, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)
    return pe.to(dtype=dtype, device=device)


def _norm(cfg, x, p, name):
    w, b = p[name + ".weight"], p.get(name + ".bias")
    if cfg.norm == "layernorm":
        return F.layer_norm(x, (x.shape[-1],), w, b, cfg.norm_eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w


def _linear(x, p, name, lora):
    head, _, last = name.rpartition(".")
    y = F.linear(x, p[name], p.get(f"{head}.b{last[1:]}"))
    if name in lora:
        y = y + lora[name] * F.linear(F.linear(x, p[name + ".lora_A"]), p[name + ".lora_B"])
    return y


class KVCache:
    """Keys and values of every layer: (n_layer, B, n_kv_head, max_len, head_dim), and how many
    positions are filled."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None,
                 dtype=torch.float32, device="cpu"):
        n = max_len or cfg.context_length
        shape = (cfg.n_layer, batch_size, cfg.n_kv_head, n, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len, self.pos = n, 0


def _attention(cfg, x, p, pre, rope, lora, use_sdpa, dropout, training, cache=None, layer=0,
               pos0=0):
    B, T, _ = x.shape
    H, KV, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    if pre + "wqkv" in p and not lora:  # fused for decoding (TorchGPT.fuse_for_inference): one GEMM, not 3
        q, k, v = F.linear(x, p[pre + "wqkv"]).split([H * hd, KV * hd, KV * hd], dim=-1)
    else:
        q, k, v = (_linear(x, p, pre + n, lora) for n in ("wq", "wk", "wv"))
    q = q.reshape(B, T, H, hd).transpose(1, 2)
    k = k.reshape(B, T, KV, hd).transpose(1, 2)
    v = v.reshape(B, T, KV, hd).transpose(1, 2)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if cache is not None:  # write this step's keys/values, attend over everything so far
        cache.k[layer, :, :, pos0:pos0 + T] = k
        cache.v[layer, :, :, pos0:pos0 + T] = v
        k, v = cache.k[layer, :, :, :pos0 + T], cache.v[layer, :, :, :pos0 + T]
    S = k.shape[2]
    p_drop = dropout if training else 0.0
    if use_sdpa:
        kw = {"enable_gqa": True} if KV != H else {}
        if T == 1 or (pos0 == 0 and T == S):  # one query sees all; or a plain causal square
            out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, dropout_p=p_drop, **kw)
        else:
            mask = torch.arange(S, device=x.device)[None, :] <= (
                pos0 + torch.arange(T, device=x.device))[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop, **kw)
    else:
        if KV != H:  # each K/V head serves H/KV query heads
            k = k.repeat_interleave(H // KV, dim=1)
            v = v.repeat_interleave(H // KV, dim=1)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        future = torch.arange(S, device=x.device)[None, :] > (
            pos0 + torch.arange(T, device=x.device))[:, None]
        att = att.masked_fill(future, float("-inf")).softmax(-1)
        att = F.dropout(att, p_drop, training)
        out = att @ v
    out = out.transpose(1, 2).reshape(B, T, H * hd)
    return _linear(out, p, pre + "wo", lora)


def _ffn(cfg, x, p, pre, lora):
    if pre + "w13" in p and not lora:  # fused gate and up projections
        g, u = F.linear(x, p[pre + "w13"]).chunk(2, dim=-1)
        return _linear(F.silu(g) * u, p, pre + "w2", lora)
    if cfg.activation == "swiglu":
        h = F.silu(_linear(x, p, pre + "w1", lora)) * _linear(x, p, pre + "w3", lora)
    elif cfg.activation == "gelu":
        h = F.gelu(_linear(x, p, pre + "w1", lora), approximate="tanh")
    else:
        h = F.relu(_linear(x, p, pre + "w1", lora))
    return _linear(h, p, pre + "w2", lora)


def forward(params, cfg: ModelConfig, ids, targets=None, *, lora: dict | None = None,
            use_sdpa: bool = False, training: bool = False, cache: KVCache | None = None):
    """Returns (logits, loss or None). `lora` maps weight names to their scale alpha/r.

    With a cache, `ids` continue the sequence at position cache.pos (and advance it)."""
    lora = lora or {}
    p = params
    B, T = ids.shape
    pos0 = cache.pos if cache is not None else 0
    if pos0 + T > cfg.context_length:
        from ..errors import UserError

        raise UserError(f"the sequence ({pos0 + T} tokens) is longer than the model's "
                        f"context_length ({cfg.context_length}).")
    x = p["wte"][ids]
    dt, dev = x.dtype, x.device
    if cfg.position == "learned":
        x = x + p["wpe"][pos0:pos0 + T]
    elif cfg.position == "sinusoidal":
        x = x + sinusoidal_table(pos0 + T, cfg.d_model, dt, dev)[pos0:]
    drop = cfg.dropout
    x = F.dropout(x, drop, training)
    rope = None
    if cfg.position == "rope":
        cos, sin = rope_table(cfg, dev, dt)
        rope = (cos[pos0:pos0 + T], sin[pos0:pos0 + T])
    for i in range(cfg.n_layer):
        pre = f"h.{i}."
        a = _attention(cfg, _norm(cfg, x, p, pre + "norm1"), p, pre + "attn.", rope, lora,
                       use_sdpa, drop, training, cache, i, pos0)
        x = x + F.dropout(a, drop, training)
        f = _ffn(cfg, _norm(cfg, x, p, pre + "norm2"), p, pre + "ffn.", lora)
        x = x + F.dropout(f, drop, training)
    if cache is not None:
        cache.pos += T
    h = _norm(cfg, x, p, "norm_f")
    head = p.get("lm_head.decode")
    if head is None or h.shape[0] * h.shape[1] > 1:
        head = p["wte"] if cfg.tie_embeddings else p["lm_head"]
    logits = F.linear(h, head)
    loss = None
    if targets is not None:
        z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        loss = F.cross_entropy(z.reshape(-1, z.shape[-1]),
                               targets.reshape(-1), ignore_index=-100)
    return logits, loss


class _Params(nn.Module):
    """Holds parameters at dotted paths ('h.0.attn.wq') as nested modules."""


class TorchGPT(nn.Module):
    def __init__(self, cfg: ModelConfig, params: dict | None = None, seed: int = 0,
                 dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        if params is None:
            from ..numpy_engine.model import init_params

            params = init_params(cfg, seed)
        for name, value in params.items():
            *path, last = name.split(".")
            mod = self
            for part in path:
                if not hasattr(mod, part):
                    mod.add_module(part, _Params())
                mod = getattr(mod, part)
            tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
            mod.register_parameter(last, nn.Parameter(tensor.to(dtype).clone()))
        self.use_sdpa = True

    def param_dict(self) -> dict[str, torch.Tensor]:
        # Rebuilt each call: cheap next to a forward pass, and always current after .to().
        p = dict(self.named_parameters())
        if self._fused is not None and not self.training:
            p.update(self._fused)
        return p

    _fused = None

    @torch.no_grad()
    def fuse_for_inference(self) -> "TorchGPT":
        """Extra weights for fast decoding (the parameters stay as they are):

        * wq|wk|wv and w1|w3 concatenated: one matrix-vector product instead of three or two;
        * the LM head stored column-major (in, out): on CPU a batch-1 product with a transposed
          (49152 x 576) matrix streams memory almost twice as fast as with the row-major one.
        Costs a second copy of those weights. Outputs are unchanged up to float rounding."""
        p = dict(self.named_parameters())
        cfg, fused = self.cfg, {}
        if cfg.bias:
            return self
        for i in range(cfg.n_layer):
            pre = f"h.{i}."
            fused[pre + "attn.wqkv"] = torch.cat([p[pre + "attn." + n] for n in ("wq", "wk", "wv")])
            if cfg.activation == "swiglu":
                fused[pre + "ffn.w13"] = torch.cat([p[pre + "ffn.w1"], p[pre + "ffn.w3"]])
        head = p["wte"] if cfg.tie_embeddings else p["lm_head"]
        if head.device.type == "cpu":
            fused["lm_head.decode"] = head.t().contiguous().t()
        self._fused = fused
        return self

    def forward(self, ids, targets=None, cache: KVCache | None = None):
        return forward(self.param_dict(), self.cfg, ids, targets, use_sdpa=self.use_sdpa,
                       training=self.training, cache=cache)
