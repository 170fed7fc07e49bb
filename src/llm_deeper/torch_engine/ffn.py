"""Feed-forward blocks: ReLU, GELU (tanh form) and SwiGLU; `linear` with optional LoRA
(numpy_engine/ffn.py and linear.py derive the math and the backward pass)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import bias_name


def matmul(x, w, b=None):
    """x W^T (+ b). `w` is a float tensor, or a quantized weight: any object that computes the
    same product itself with `w.linear(x, b)` (its own kernel, or dequantizing on the fly)."""
    if isinstance(w, torch.Tensor):
        return F.linear(x, w, b)
    return w.linear(x, b)


def linear(x, p, name, lora):
    """x W^T (+ b), plus scale * (x A^T) B^T when `lora` names this weight (see lora.py)."""
    y = matmul(x, p[name], p.get(bias_name(name)))
    if name in lora:
        y = y + lora[name] * F.linear(F.linear(x, p[name + ".lora_A"]), p[name + ".lora_B"])
    return y


def ffn(cfg, x, p, prefix: str, ctx):
    """x: (B, T, d_model) -> (B, T, d_model); projections through the step context."""
    if cfg.activation == "swiglu":
        if ctx.fused and prefix + "w13" in p:  # gate and up in one product (fuse_for_inference)
            g, u = matmul(x, p[prefix + "w13"]).chunk(2, dim=-1)
        else:
            g, u = ctx.linear(x, p, prefix + "w1"), ctx.linear(x, p, prefix + "w3")
        h = F.silu(g) * u
    elif cfg.activation == "gelu":
        h = F.gelu(ctx.linear(x, p, prefix + "w1"), approximate="tanh")
    else:
        h = F.relu(ctx.linear(x, p, prefix + "w1"))
    return ctx.linear(h, p, prefix + "w2")
