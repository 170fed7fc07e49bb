"""The step context: what one forward pass needs to know besides the tokens and the weights.

The decoder's layer loop (model.py) exists once. What differs between training, generation with
a KV cache and the serving engine's packed, paged batches is carried by one small object that
every layer reads, in the manner of nano-vllm's attention context:

* where the new tokens sit (`positions`: from `pos0` on, or any position per row when serving);
* how a projection is applied (`linear`: plain, with LoRA, or with a different adapter per row);
* where keys and values go and which ones each query sees (`attend`: none, a contiguous KV cache,
  or the blocks of a paged cache);
* which rows' logits are wanted (`select`), and whether training is on (dropout).

`StepContext` is the plain and cached mode; serving's `PagedContext` (paged.py) overrides those
methods for packed requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .attention import attend
from .ffn import linear
from .positions import alibi_bias


@dataclass
class StepContext:
    """A forward pass over new tokens at positions pos0, pos0 + 1, ... of every sequence."""

    pos0: int = 0  # tokens before these are in `cache` (0 without a cache)
    cache: object = None  # attention.KVCache or mla.LatentCache, or None
    lora: dict = field(default_factory=dict)  # weight name -> alpha / r (factors in params)
    training: bool = False
    dropout: float = 0.0  # probability, applied only when training
    use_sdpa: bool = True  # the fused attention kernel (else softmax(QK^T/sqrt(d))V written out)
    mla_absorb: bool = False  # MLA: decode through the latent (mla.py)
    rope: tuple | None = None  # (cos, sin) of the new positions, set by the forward pass
    rope_full: tuple | None = None  # the same as whole-head tables (positions.rope_rotation)

    @property
    def fused(self) -> bool:
        """Whether the fused decode weights (wqkv, w13) may stand in for their parts: not when
        an adapter changes one of the parts."""
        return not self.lora

    def positions(self, T: int):
        """Index of the new tokens' positions into a per-position table."""
        return slice(self.pos0, self.pos0 + T)

    def begin(self, cfg, ids) -> None:
        cfg.check_input(ids, self.pos0, vocab=ids.device.type == "cpu")

    def end(self, T: int) -> None:
        if self.cache is not None:
            self.cache.pos += T

    def block(self, fn, cfg, x, p, layer: int):
        """Run one transformer block, fn = model.block. Training may run it otherwise: under
        activation checkpointing (torch_engine/qlora.py), which recomputes it in backward."""
        return fn(cfg, x, p, layer, self)

    def linear(self, x, p, name):
        return linear(x, p, name, self.lora)

    def weight(self, p, name):
        """The weight matrix itself, with its LoRA update folded in (W + scale * B A) when an
        adapter targets it: for a layer that uses its weight other than as x W^T (MLA's
        up-projections, which it splits per head and may absorb into the queries)."""
        if name in self.lora:
            return p[name] + self.lora[name] * (p[name + ".lora_B"] @ p[name + ".lora_A"])
        return p[name]

    def attend(self, cfg, layer: int, q, k, v):
        """q: (B, H, T, hd), k, v: (B, KV, T, hd) of the new tokens -> (B, H, T, hd): keys and
        values go into the cache, and each query attends to the keys it may see."""
        if self.cache is not None:
            k, v = self.cache.store(layer, self.pos0, k, v)
        bias = (alibi_bias(cfg.n_head, q.shape[2], k.shape[2], self.pos0, q.dtype, q.device)
                if cfg.position == "alibi" else None)
        return attend(q, k, v, self.pos0, self.use_sdpa, self.dropout, self.training, bias)

    def select(self, x):
        """The rows whose next-token logits are wanted: all of them."""
        return x
