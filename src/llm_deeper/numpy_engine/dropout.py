"""Dropout (inverted): keep each unit with probability 1 - p and scale it by 1 / (1 - p), so
the expected activation is unchanged and evaluation needs no rescaling. Backward applies the
same mask."""

from __future__ import annotations

import numpy as np


def dropout_forward(x, p: float, rng: np.random.Generator | None):
    if p <= 0.0 or rng is None:
        return x, None
    mask = (rng.random(x.shape, dtype=np.float32) >= p).astype(x.dtype) / (1.0 - p)
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy if mask is None else dy * mask
