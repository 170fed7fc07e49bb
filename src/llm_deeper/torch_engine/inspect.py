"""Looking inside the engine without changing it: each layer's queries, keys and values, and the
attention maps they make.

The layer loop (model.py) asks its step context where keys and values go (`attend`) and how a
projection is applied (`linear`). `Recorder` is the plain context that also writes down what
passes through: every layer's q, k (after RoPE) and v, and the input and output of the attention's
`wq` and `wo`. `attention_maps` turns the recorded q and k into the softmax weights the fused
kernel never materialises,

    P = softmax(q k^T / sqrt(head_dim) + causal mask),  one (T, T) map per layer and query head,

where query head h reads KV head group(h) (h // (n_head / n_kv_head) by default: grouped-query
attention). lessons/03_modern/06_attention_maps.py proves these maps are the model's (P V W_o
equals the engine's attention output; equal to transformers' output_attentions) and reads them;
the docs' figure attention_heads.png draws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .context import StepContext
from .model import forward


@dataclass
class Recorder(StepContext):
    """The plain step context, writing down each layer's attention inputs and outputs."""

    qkv: list = field(default_factory=list)  # per layer: q (B, H, T, hd), k, v (B, KV, T, hd)
    io: dict = field(default_factory=dict)  # 'h.N.attn.wq' | 'h.N.attn.wo' -> (input, output)

    def attend(self, cfg, layer, q, k, v):
        self.qkv.append((q, k, v))
        return super().attend(cfg, layer, q, k, v)

    def linear(self, x, p, name):
        y = super().linear(x, p, name)
        if name.endswith(("attn.wq", "attn.wo")):
            self.io[name] = (x, y)
        return y


def record(params: dict, cfg, ids: list[int]) -> tuple[Recorder, torch.Tensor]:
    """One plain forward pass over the token ids (a batch of 1): the Recorder and the logits
    (1, T, vocab), equal to the model's own."""
    rec = Recorder()
    with torch.inference_mode():
        logits, _ = forward(params, cfg, torch.tensor([ids]), ctx=rec)
    return rec, logits


def attention_maps(qkv: list, n_head: int, group=None) -> torch.Tensor:
    """Per layer, softmax(q k^T / sqrt(hd) + causal mask) of the first sequence: (L, H, T, T).
    group(h): the KV head that query head h reads (default: h // (n_head / n_kv_head))."""
    maps = []
    for q, k, _ in qkv:
        n, hd, kv = q.shape[2], q.shape[-1], k.shape[1]
        heads = [(group(h) if group else h // (n_head // kv)) for h in range(n_head)]
        s = q[0] @ k[0, heads].transpose(-1, -2) / math.sqrt(hd)  # (H, T, T)
        future = torch.ones(n, n, dtype=torch.bool).triu(1)
        maps.append(s.masked_fill(future, float("-inf")).softmax(-1))
    return torch.stack(maps)
