"""A decoder in PyTorch built from `ModelConfig`, parameter for parameter the NumPy engine's.

`forward(params, cfg, ids)` is the whole model as one function of a name -> tensor mapping
(the same names as `model.safetensors`), so tests can hand it leaf tensors and compare autograd's
gradients with the NumPy engine's. `TorchGPT` wraps it as an `nn.Module` whose `state_dict()`
keys are exactly those names.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import KVCache, attention
from .ffn import ffn
from .mla import LatentCache, mla_attention
from .norms import norm
from .positions import apply_rope, rope_cos_sin, rope_table, sinusoidal_table  # noqa: F401


def make_cache(cfg: ModelConfig, batch_size: int, max_len: int | None = None,
               dtype=torch.float32, device="cpu"):
    """The KV cache for this config: K and V per KV head, or MLA's latent."""
    if cfg.attention == "mla":
        return LatentCache(cfg, batch_size, max_len, dtype, device)
    return KVCache(cfg, batch_size, max_len, dtype, device)


def forward(params, cfg: ModelConfig, ids, targets=None, *, lora: dict | None = None,
            use_sdpa: bool = False, training: bool = False, cache=None, mla_absorb: bool = False):
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
        h = norm(cfg, x, p, pre + "norm1")
        if cfg.attention == "mla":
            a = mla_attention(cfg, h, p, pre + "attn.", rope, lora, use_sdpa, drop, training,
                              cache, i, pos0, absorb=mla_absorb)
        else:
            a = attention(cfg, h, p, pre + "attn.", rope, lora, use_sdpa, drop, training, cache,
                          i, pos0)
        x = x + F.dropout(a, drop, training)
        f = ffn(cfg, norm(cfg, x, p, pre + "norm2"), p, pre + "ffn.", lora)
        x = x + F.dropout(f, drop, training)
    if cache is not None:
        cache.pos += T
    h = norm(cfg, x, p, "norm_f")
    logits = F.linear(h, output_head(p, cfg, h.shape[0] * h.shape[1]))
    loss = None
    if targets is not None:
        z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        loss = F.cross_entropy(z.reshape(-1, z.shape[-1]),
                               targets.reshape(-1), ignore_index=-100)
    return logits, loss


def output_head(p, cfg: ModelConfig, rows: int):
    """The LM head's weight: the column-major copy for a single row on CPU (see
    TorchGPT.fuse_for_inference: faster there, slower for several rows), else the plain one."""
    head = p.get("lm_head.decode") if rows == 1 else None
    if head is None:
        head = p["wte"] if cfg.tie_embeddings else p["lm_head"]
    return head


class _Params(nn.Module):
    """Holds parameters at dotted paths ('h.0.attn.wq') as nested modules."""


class TorchGPT(nn.Module):
    def __init__(self, cfg: ModelConfig, params: dict | None = None, seed: int = 0,
                 dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        if params is None:
            from ..params import init_params

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
        """Name -> tensor, plus the fused decode weights in eval mode. Cached: walking the module
        tree for 272 parameters costs ~0.6 ms, 1 % of a decode step; `_apply` (.to(), .float(),
        ...) and fuse_for_inference() clear the cache."""
        key = self.training
        if self._pcache is None or self._pcache[0] != key:
            p = dict(self.named_parameters())
            if self._fused is not None and not self.training:
                p.update(self._fused)
            self._pcache = (key, p)
        return self._pcache[1]

    _fused = None
    _pcache = None

    def _apply(self, fn, *args, **kwargs):
        self._pcache = None
        self._fused = None  # derived from the old tensors; call fuse_for_inference() again
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def fuse_for_inference(self) -> "TorchGPT":
        """Extra weights for fast decoding (the parameters stay as they are):

        * wq|wk|wv and w1|w3 concatenated: one matrix-vector product instead of three or two;
        * the LM head stored column-major (in, out): on CPU a batch-1 product with a transposed
          (49152 x 576) matrix streams memory almost twice as fast as with the row-major one.
        Costs a second copy of those weights. Outputs are unchanged up to float rounding."""
        p = dict(self.named_parameters())
        cfg, fused = self.cfg, {}
        if cfg.bias or cfg.attention == "mla":
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
        self._pcache = None
        return self

    mla_absorb = False  # MLA only: decode with the absorbed (latent) path

    def forward(self, ids, targets=None, cache=None):
        return forward(self.param_dict(), self.cfg, ids, targets, use_sdpa=self.use_sdpa,
                       training=self.training, cache=cache, mla_absorb=self.mla_absorb)
