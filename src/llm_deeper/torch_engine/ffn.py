"""Feed-forward blocks: ReLU, GELU (tanh form) and SwiGLU; `linear` with optional LoRA."""

from __future__ import annotations

import torch.nn.functional as F


def linear(x, p, name, lora):
    head, _, last = name.rpartition(".")
    y = F.linear(x, p[name], p.get(f"{head}.b{last[1:]}"))
    if name in lora:
        y = y + lora[name] * F.linear(F.linear(x, p[name + ".lora_A"]), p[name + ".lora_B"])
    return y


def ffn(cfg, x, p, pre, lora):
    if pre + "w13" in p and not lora:  # fused gate and up projections (fuse_for_inference)
        g, u = F.linear(x, p[pre + "w13"]).chunk(2, dim=-1)
        return linear(F.silu(g) * u, p, pre + "w2", lora)
    if cfg.activation == "swiglu":
        h = F.silu(linear(x, p, pre + "w1", lora)) * linear(x, p, pre + "w3", lora)
    elif cfg.activation == "gelu":
        h = F.gelu(linear(x, p, pre + "w1", lora), approximate="tanh")
    else:
        h = F.relu(linear(x, p, pre + "w1", lora))
    return linear(h, p, pre + "w2", lora)
