"""Token embedding: a lookup table `wte` of shape (vocab_size, d_model).

Forward: `x[b, t] = wte[ids[b, t]]`. Backward: each row of the table collects the gradient of
every position that looked it up, `dwte[v] = sum over (b, t) with ids[b, t] == v of dx[b, t]`.
"""

from __future__ import annotations

import numpy as np


def embedding_forward(ids: np.ndarray, table: np.ndarray):
    return table[ids], ids  # (B, T, d)


def embedding_backward(dx: np.ndarray, ids: np.ndarray, vocab_size: int) -> np.ndarray:
    d = dx.shape[-1]
    dtable = np.zeros((vocab_size, d), dtype=dx.dtype)
    np.add.at(dtable, ids.reshape(-1), dx.reshape(-1, d))
    return dtable
