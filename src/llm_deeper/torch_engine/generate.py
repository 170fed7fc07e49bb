"""Generation with the PyTorch engine: a preallocated KV cache, prefill then one token a step."""

from __future__ import annotations

import numpy as np
import torch

from .model import TorchGPT, make_cache


class TorchLogits:
    """`next_logits(ids, state)` for generation.stream(), with the cache in `state`."""

    def __init__(self, model: TorchGPT, use_cache: bool = True):
        self.model, self.use_cache = model, use_cache
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @torch.inference_mode()
    def __call__(self, ids: list[int], state: dict) -> np.ndarray:
        T = self.model.cfg.context_length
        if not self.use_cache:
            x = torch.tensor([ids[-T:]], device=self.device)
            return self.model(x)[0][0, -1].float().cpu().numpy()
        cache = state.get("cache")
        fed = state.get("fed", 0)
        if cache is None or cache.pos >= T or fed > len(ids):
            cache = make_cache(self.model.cfg, 1, dtype=self.dtype, device=self.device)
            ids_in = ids[-(T - 1):] if len(ids) >= T else ids
            state.update(cache=cache)
        else:
            ids_in = ids[fed:]
        state["fed"] = len(ids)
        x = torch.tensor([ids_in], device=self.device)
        return self.model(x, cache=cache)[0][0, -1].float().cpu().numpy()


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
