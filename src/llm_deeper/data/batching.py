"""Batches for next-token prediction.

A batch is `B` windows of `T + 1` consecutive tokens cut at random offsets: inputs are the first
`T` tokens, targets the same window shifted by one. The offsets come from a seeded NumPy
`Generator`, whose state is saved in checkpoints so a resumed run draws the same batches.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError


def split_train_val(ids: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - val_fraction) of the tokens train, the rest validate."""
    n = int(len(ids) * (1.0 - val_fraction))
    return ids[:n], ids[n:]


class Batcher:
    def __init__(self, ids: np.ndarray, batch_size: int, context_length: int, seed: int = 0,
                 name: str = "text"):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.B, self.T = int(batch_size), int(context_length)
        if len(self.ids) < self.T + 1:
            raise UserError(
                f"the {name} has {len(self.ids)} tokens, fewer than context_length + 1 = "
                f"{self.T + 1}; use more text or a smaller --context-length.")
        self.rng = np.random.default_rng(seed)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        starts = self.rng.integers(0, len(self.ids) - self.T, size=self.B)
        idx = starts[:, None] + np.arange(self.T + 1)[None, :]
        window = self.ids[idx]  # (B, T+1)
        return window[:, :-1], window[:, 1:]

    # The state travels in checkpoints as JSON.
    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
