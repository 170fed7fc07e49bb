"""Generation with the PyTorch engine: a preallocated KV cache, prefill then one token a step."""

from __future__ import annotations

import torch

from ..generation import cached_next_logits
from .model import TorchGPT, make_cache


def next_logits_fn(model: TorchGPT, use_cache: bool = True):
    """next_logits(ids, state) for generation.stream, the cache in `state`
    (the policy of generation.cached_next_logits)."""
    p = next(model.parameters())

    @torch.inference_mode()
    def step(new_ids, cache):
        logits = model(torch.tensor([new_ids], device=p.device), cache=cache)[0]
        return logits[0, -1].float().cpu().numpy(), cache

    return cached_next_logits(step, model.cfg.context_length,
                              lambda: make_cache(model.cfg, 1, dtype=p.dtype, device=p.device),
                              use_cache)


@torch.inference_mode()
def greedy_batch(model: TorchGPT, prompts: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy continuation of a batch of equal-length prompts: (B, n_new) token ids."""
    p = next(model.parameters())
    B, T0 = prompts.shape
    cache = make_cache(model.cfg, B, max_len=T0 + n_new, dtype=p.dtype, device=p.device)
    logits = model(prompts.to(p.device), cache=cache)[0][:, -1]
    out = torch.empty(B, n_new, dtype=torch.long, device=p.device)
    for i in range(n_new):
        out[:, i] = logits.argmax(-1)
        if i + 1 < n_new:
            logits = model(out[:, i:i + 1], cache=cache)[0][:, -1]
    return out
