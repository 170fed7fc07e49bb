"""A GPT in pure NumPy with a hand-written backward pass.

One file per concept; each has `*_forward` (returning the output and what the backward pass
needs) and `*_backward` (returning the gradients). `model.py` wires them into a decoder.
Every backward is checked against PyTorch autograd in float64 (tests/test_numpy_grads.py).
Training first tunes glibc's allocator for the engine's large temporaries (speed.py).
"""

from .model import GPT, KVCache

__all__ = ["GPT", "KVCache"]
