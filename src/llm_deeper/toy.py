"""A toy task that a 2,453-parameter GPT (`tinygpt`) learns in seconds: sorting.

The model reads n digits and must write them back sorted, e.g. 2 0 1 1 0 2 2 1 0 -> 0 0 0 1 1 1
2 2 2. Only the sorted half is scored (targets of the input half are IGNORE), and accuracy is
exact match of the whole sorted list, generated greedily with the KV cache.
"""

from __future__ import annotations

import numpy as np

from .config import preset
from .numpy_engine.loss import IGNORE
from .numpy_engine.model import GPT
from .numpy_engine.optim import AdamW, clip_grad_norm
from .numpy_engine.speed import tune_malloc
from .train import lr_at
from .util.progress import progress_bar
from .util.threads import single_thread


def sort_batch(rng: np.random.Generator, batch_size: int, n: int = 9, n_values: int = 3):
    x = rng.integers(0, n_values, size=(batch_size, n))
    seq = np.concatenate([x, np.sort(x, axis=1)], axis=1)  # (B, 2n)
    inputs, targets = seq[:, :-1], seq[:, 1:].copy()
    targets[:, : n - 1] = IGNORE  # predicting the unsorted input is impossible: not scored
    return inputs, targets


def sort_accuracy(model: GPT, rng: np.random.Generator, n_lists: int = 500, n: int = 9) -> float:
    from .numpy_engine.generate import greedy_batch

    x = rng.integers(0, model.cfg.vocab_size, size=(n_lists, n))
    out = greedy_batch(model, x, n)
    return float((out == np.sort(x, axis=1)).all(axis=1).mean())


def train_sorter(steps: int = 1500, batch_size: int = 64, lr: float = 1e-2, seed: int = 0,
                 progress: bool = False) -> tuple[GPT, list[float]]:
    tune_malloc()
    cfg = preset("tinygpt")
    model = GPT(cfg, seed=seed)
    opt = AdamW(model.params, list(model.params), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    rng = np.random.default_rng(seed)
    losses = []
    with single_thread():  # (10 x 83) matrices: a second thread only waits
        for step in progress_bar(range(steps), desc="tinygpt sort", enabled=progress):
            loss, grads = model.loss_and_grads(*sort_batch(rng, batch_size))
            clip_grad_norm(grads, 1.0)
            opt.step(grads, lr_at(step, lr, lr / 10, 50, steps))
            losses.append(loss)
    return model, losses
