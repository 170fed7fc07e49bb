"""Feed-forward blocks: ReLU, GELU (tanh form) and SwiGLU; `linear` with optional LoRA."""

from __future__ import annotations

import torch.nn.functional as F

from ..params import bias_name


def linear(x, p, name, lora):
    y = F.linear(x, p[name], p.get(bias_name(name)))
    if name in lora:
        y = y + lora[name] * F.linear(F.linear(x, p[name + ".lora_A"]), p[name + ".lora_B"])
    return y


def ffn(cfg, x, p, pre, lora, lin=None):
    """lin(x, name): the projection to use (default: `linear` with `lora`; the serving engine
    passes one that adds each request's adapter to its own rows)."""
    if lin is None:
        if pre + "w13" in p and not lora:  # fused gate and up projections (fuse_for_inference)
            g, u = F.linear(x, p[pre + "w13"]).chunk(2, dim=-1)
            return linear(F.silu(g) * u, p, pre + "w2", lora)
        lin = lambda h, name: linear(h, p, name, lora)  # noqa: E731
    if cfg.activation == "swiglu":
        h = F.silu(lin(x, pre + "w1")) * lin(x, pre + "w3")
    elif cfg.activation == "gelu":
        h = F.gelu(lin(x, pre + "w1"), approximate="tanh")
    else:
        h = F.relu(lin(x, pre + "w1"))
    return lin(h, pre + "w2")
