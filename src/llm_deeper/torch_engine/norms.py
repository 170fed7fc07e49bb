"""LayerNorm and RMSNorm (see numpy_engine/norms.py for the math and the backward pass)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def norm(cfg, x, p, name):
    w, b = p[name + ".weight"], p.get(name + ".bias")
    if cfg.norm == "layernorm":
        return F.layer_norm(x, (x.shape[-1],), w, b, cfg.norm_eps)
    return rms_norm(x, w, cfg.norm_eps)
