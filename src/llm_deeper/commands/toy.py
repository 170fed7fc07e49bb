"""`llm-deeper toy`: tinygpt (2,453 parameters) learns to sort digits, in seconds (toy.py)."""

from __future__ import annotations

HELP = "tinygpt (2,453 parameters) learns to sort digits"


def add_arguments(p) -> None:
    pass


def run(args) -> None:
    import numpy as np

    from ..toy import sort_accuracy, train_sorter

    model, losses = train_sorter(progress=True)
    acc = sort_accuracy(model, np.random.default_rng(12345))
    print(f"tinygpt ({model.n_params():,} parameters) sorts 9 digits from {{0,1,2}}: "
          f"final loss {losses[-1]:.4f}, exact-match accuracy on 500 new lists {100 * acc:.1f} %")
