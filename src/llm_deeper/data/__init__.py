"""Corpora and batching: Shakespeare's works (offline after one pull), local text, batches."""

from .batching import Batcher, split_train_val
from .shakespeare import load_text, pull_shakespeare, titles, works

__all__ = ["Batcher", "split_train_val", "load_text", "pull_shakespeare", "titles", "works"]
