"""The MLX engine: the same `ModelConfig`, parameter names and checkpoints as the NumPy and
PyTorch engines, written with Apple's MLX (lazy arrays, `mx.value_and_grad`, MLX's AdamW). On
Apple silicon it runs on the GPU through unified memory; on Linux, `pip install mlx[cpu]` gives
its CPU backend (what the tests here run). See docs/mlx-engine.md."""

from .model import MlxGPT, forward

__all__ = ["MlxGPT", "forward"]
