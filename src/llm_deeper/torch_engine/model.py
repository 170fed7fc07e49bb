"""A decoder in PyTorch built from `ModelConfig`, parameter for parameter the NumPy engine's.

    x = wte[ids] (+ wpe[pos] | + sinusoidal[pos])          (B, T, d_model)
    for each block:  x = x + Attention(Norm1(x));  x = x + FFN(Norm2(x))
    logits = NormF(x) @ W_head^T                            (B, T, vocab_size)

`forward(params, cfg, ids, targets, ctx)` is the whole model as one function of a name -> tensor
mapping (the names of params.py and `model.safetensors`), so tests can hand it leaf tensors and
compare autograd's gradients with the NumPy engine's. The layer loop exists once: training,
cached generation and the serving engine's packed, paged batches differ only in the step context
`ctx` (context.py, paged.py). `TorchGPT` wraps it as an `nn.Module` whose `state_dict()` keys are
exactly those names.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..params import init_params
from .attention import KVCache, attention
from .context import StepContext
from .ffn import ffn, matmul
from .mla import LatentCache, mla_attention
from .norms import norm
from .positions import rope_rotation, rope_table, sinusoidal_positions


def make_cache(cfg: ModelConfig, batch_size: int, max_len: int | None = None,
               dtype=torch.float32, device="cpu"):
    """The KV cache for this config: K and V per KV head, or MLA's latent."""
    if cfg.attention == "mla":
        return LatentCache(cfg, batch_size, max_len, dtype, device)
    return KVCache(cfg, batch_size, max_len, dtype, device)


def block(cfg: ModelConfig, x, p, layer: int, ctx: StepContext):
    """One pre-norm transformer block, dropout on each branch when training."""
    pre = f"h.{layer}."
    attend = mla_attention if cfg.attention == "mla" else attention
    a = attend(cfg, norm(cfg, x, p, pre + "norm1"), p, pre + "attn.", layer, ctx)
    x = x + (F.dropout(a, ctx.dropout, True) if ctx.training else a)
    f = ffn(cfg, norm(cfg, x, p, pre + "norm2"), p, pre + "ffn.", ctx)
    return x + (F.dropout(f, ctx.dropout, True) if ctx.training else f)


def forward(params, cfg: ModelConfig, ids, targets=None, ctx: StepContext | None = None):
    """ids: (B, T) -> (logits (B, T, vocab), loss or None). ctx: the step context (positions,
    cache, LoRA, training); the default is a plain uncached pass from position 0."""
    ctx = ctx if ctx is not None else StepContext()
    p = params
    T = ids.shape[1]
    ctx.begin(cfg, ids)
    x = p["wte"][ids]  # (B, T, d_model)
    at = ctx.positions(T)
    if cfg.position == "learned":
        x = x + p["wpe"][at]
    elif cfg.position == "sinusoidal":
        x = x + sinusoidal_positions(cfg, x.device, x.dtype)[at]
    x = F.dropout(x, ctx.dropout, ctx.training)
    if cfg.position == "rope":
        cos, sin = rope_table(cfg, x.device, x.dtype)
        ctx.rope = (cos[at], sin[at])  # (T, rope_dim / 2)
        ctx.rope_full = rope_rotation(*ctx.rope, cfg.rope_pairing)  # (T, rope_dim)
    for i in range(cfg.n_layer):
        x = ctx.block(block, cfg, x, p, i)
    ctx.end(T)
    h = norm(cfg, ctx.select(x), p, "norm_f")
    logits = matmul(h, output_head(p, cfg, h.shape[0] * h.shape[1]))
    loss = None
    if targets is not None:
        z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        loss = F.cross_entropy(z.reshape(-1, z.shape[-1]), targets.reshape(-1), ignore_index=-100)
    return logits, loss


def output_head(p, cfg: ModelConfig, rows: int):
    """The LM head's weight: the column-major copy for a single row on CPU (see
    TorchGPT.fuse_for_inference: faster there, slower for several rows), else the plain one; a
    quantized copy (`lm_head.quant`, quantization/torch_int8.py) whenever the model has one."""
    head = p.get("lm_head.quant")
    if head is None and rows == 1:
        head = p.get("lm_head.decode")
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
            params = init_params(cfg, seed)
        for name, value in params.items():
            *path, last = name.split(".")
            mod = self
            for part in path:
                if not hasattr(mod, part):
                    mod.add_module(part, _Params())
                mod = getattr(mod, part)
            if not isinstance(value, torch.Tensor):  # no copy yet: the one below is enough
                value = torch.from_numpy(np.asarray(value) if np.asarray(value).flags.writeable
                                         else np.array(value))
            mod.register_parameter(last, nn.Parameter(value.to(dtype, copy=True)))
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
    def fuse_for_inference(self) -> TorchGPT:
        """Extra weights for fast decoding (the parameters stay as they are):

        * wq|wk|wv and w1|w3 concatenated: one matrix-vector product instead of three or two.
          The parameters then become views into the concatenation (no second copy; an adapter
          or a training step still sees them as separate matrices);
        * the LM head stored column-major (in, out): on CPU a batch-1 product with a transposed
          (49152 x 576) matrix streams memory almost twice as fast as with the row-major one.
          This one is a second copy (of the embedding, when tied).
        Outputs are unchanged up to float rounding."""
        p = dict(self.named_parameters())
        cfg, fused = self.cfg, {}
        if cfg.bias or cfg.attention == "mla":
            return self
        def fuse(names):
            whole = torch.cat([p[n] for n in names])
            for n, part in zip(names, whole.split([p[n].shape[0] for n in names])):
                p[n].data = part  # the parameter is now a view of its rows of `whole`
            return whole

        for i in range(cfg.n_layer):
            pre = f"h.{i}."
            fused[pre + "attn.wqkv"] = fuse([pre + "attn." + n for n in ("wq", "wk", "wv")])
            if cfg.activation == "swiglu":
                fused[pre + "ffn.w13"] = fuse([pre + "ffn.w1", pre + "ffn.w3"])
        head = p["wte"] if cfg.tie_embeddings else p["lm_head"]
        if head.device.type == "cpu":
            fused["lm_head.decode"] = head.t().contiguous().t()
        self._fused = fused
        self._pcache = None
        return self

    mla_absorb = False  # MLA only: decode with the absorbed (latent) path

    def forward(self, ids, targets=None, cache=None):
        """With a cache, `ids` continue the sequence at position cache.pos (and advance it)."""
        ctx = StepContext(pos0=cache.pos if cache is not None else 0, cache=cache,
                          training=self.training, dropout=self.cfg.dropout,
                          use_sdpa=self.use_sdpa, mla_absorb=self.mla_absorb)
        return forward(self.param_dict(), self.cfg, ids, targets, ctx)
