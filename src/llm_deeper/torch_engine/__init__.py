"""The PyTorch engine: the same `ModelConfig`, parameter names and checkpoints as the NumPy
engine, with autograd doing the backward pass. It is the oracle for the NumPy engine's hand-written
gradients and the yardstick of `llm-deeper bench train`."""

from .model import TorchGPT, forward

__all__ = ["TorchGPT", "forward"]
