"""The training engines `train --engine` chooses from: each wraps a model in a Trainer (the
small interface the one training loop, llm_deeper/train.py, asks of an engine)."""

from __future__ import annotations

from .config import ModelConfig
from .errors import UserError
from .train import Trainer

ENGINES = ("numpy", "torch", "mlx")


def make_trainer(engine: str, cfg: ModelConfig, seed: int, device: str = "cpu",
                 compile: bool = False) -> Trainer:
    """A Trainer of the named engine around a freshly initialised model (init_params(cfg, seed):
    the same initial weights in every engine)."""
    from .params import init_params

    if engine == "torch":
        from .torch_engine.model import TorchGPT
        from .torch_engine.train import TorchTrainer

        return TorchTrainer(TorchGPT(cfg, init_params(cfg, seed)), device=device, compile=compile)
    if engine == "mlx":  # MLX's default device: the GPU on Apple silicon, else the CPU
        try:
            from .mlx_engine.model import MlxGPT
            from .mlx_engine.train import MlxTrainer
        except ImportError:
            raise UserError("--engine mlx needs MLX: pip install mlx (Apple silicon) or "
                            "'mlx[cpu]' (Linux).") from None
        return MlxTrainer(MlxGPT(cfg, init_params(cfg, seed)))
    if engine == "numpy":
        from .numpy_engine.model import GPT
        from .numpy_engine.train import NumpyTrainer

        return NumpyTrainer(GPT(cfg, init_params(cfg, seed)))
    raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got '{engine}'.")
