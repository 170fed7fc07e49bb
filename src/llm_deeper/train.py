"""The training loop, one for both engines, read top to bottom as nanoGPT's train.py reads.

    for step in range(start, steps):
        lr = lr_at(step)                                  warmup, then cosine decay
        loss, norm = engine.step(grad_accum micro-batches, lr)
                                                          forward, backward, clip, AdamW
        every eval_interval steps: validation loss, checkpoint

An engine plugs in through the small `Trainer` interface below: the NumPy engine's hand-written
backward (numpy_engine/train.py) and the PyTorch engine's autograd, on CPU, CUDA or across
processes with DistributedDataParallel (torch_engine/train.py). Everything else lives here once:
the learning-rate schedule, batches, evaluation, checkpoints, progress, Ctrl-C and resume.

Resume is exact: a checkpoint holds the parameters, the optimizer's moments and step count, the
batch sampler's RNG state (and the NumPy engine's dropout RNG) and the loss history, so a run
stopped at step k and resumed gives bit for bit the losses of an uninterrupted run
(tests/test_train.py, tests/test_torch_engine.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .checkpoint import Checkpoint, load_checkpoint, read_tensors, save_checkpoint
from .config import ModelConfig
from .data.batching import Batcher
from .errors import UserError
from .util.progress import progress_bar


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 12  # windows per micro-batch (per process under torchrun)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0: no clipping
    eval_interval: int = 250
    eval_iters: int = 20
    final_eval_iters: int = 200
    seed: int = 1337


def lr_at(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup for `warmup` steps, then cosine decay from max_lr to min_lr at `total`."""
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


class Trainer(Protocol):
    """What the loop asks of an engine."""

    name: str  # "numpy" or "torch": said in the progress bar and the checkpoint
    cfg: ModelConfig
    world: int  # processes taking part (torchrun), 1 otherwise
    rank: int  # this process's; only rank 0 writes checkpoints and prints

    def setup(self, tc: TrainConfig) -> None:
        """Build the optimizer (and whatever else the engine needs) for this run."""

    def step(self, micro_batches: list[tuple[np.ndarray, np.ndarray]], lr: float
             ) -> tuple[float, float]:
        """One optimizer step over the micro-batches (each (inputs, targets) of the global batch,
        world x batch_size rows): mean loss and the gradient norm before clipping."""

    def loss(self, x: np.ndarray, y: np.ndarray) -> float:
        """The loss of one batch, without dropout or gradients."""

    def state(self) -> tuple[dict, dict, object]:
        """(parameters, optimizer state, RNG state or None) as NumPy arrays and JSON."""

    def load_state(self, params: dict, optimizer: dict, rng_state) -> None: ...


def estimate_loss(trainer: Trainer, ids: np.ndarray, iters: int, batch_size: int,
                  seed: int) -> float:
    """Mean loss over `iters` batches drawn with a fixed seed: the same batches every call, so
    successive evaluations differ only by the model."""
    if iters <= 0:
        return float("nan")
    b = Batcher(ids, batch_size, trainer.cfg.context_length, seed=seed, name="validation text")
    return float(np.mean([trainer.loss(*b.next()) for _ in range(iters)]))


def train(trainer: Trainer, tokenizer, train_ids: np.ndarray, val_ids: np.ndarray,
          tc: TrainConfig, out_dir, *, resume: bool | Checkpoint = False, progress: bool = True,
          log=print, extra_state: dict | None = None, stop_after: int | None = None) -> dict:
    """Train in place; checkpoints go to out_dir. Returns a summary dict.

    resume: True to continue the run in out_dir, or the Checkpoint already read from it (so the
    caller that read it for its config does not read it twice).
    stop_after: stop (with a checkpoint) after this many steps of this call, as Ctrl-C would;
    used by the resume tests.
    """
    out_dir = Path(out_dir)
    cfg, rank = trainer.cfg, trainer.rank
    trainer.setup(tc)
    batches = Batcher(train_ids, tc.batch_size * trainer.world, cfg.context_length,
                      seed=tc.seed, name="training text")
    history: dict = {"train": [], "val": []}
    step = 0
    if resume:
        ck = resume if isinstance(resume, Checkpoint) else load_checkpoint(out_dir)
        if not ck.state:
            raise UserError(f"{out_dir} has no trainer_state.json to resume from.")
        trainer.load_state(ck.params, read_tensors(out_dir / "optimizer.safetensors"),
                           ck.state.get("dropout_rng"))
        batches.set_state(ck.state["batch_rng"])
        history, step = ck.state["history"], int(ck.state["step"])
        if rank == 0:
            log(f"resumed from {out_dir} at step {step}")

    def save():
        if rank != 0:
            return
        from .util.viz import plot_losses

        params, opt_state, rng_state = trainer.state()
        state = {"step": step, "batch_rng": batches.state(), "dropout_rng": rng_state,
                 "history": history, "train_config": dataclasses.asdict(tc),
                 "engine": trainer.name, **(extra_state or {})}
        title = f"{cfg.n_params() / 1e6:.2f}M-parameter model ({trainer.name} engine)"
        save_checkpoint(out_dir, cfg, params, tokenizer, optimizer_state=opt_state,
                        trainer_state=state,
                        extra_files={"loss_curve.png": lambda p: plot_losses(history, p, title)})

    tokens_per_step = tc.batch_size * trainer.world * tc.grad_accum * cfg.context_length
    bar = progress_bar(total=tc.steps, initial=step, desc=f"train ({trainer.name})", unit="step",
                       enabled=progress and rank == 0)
    say = bar.write if not bar.disable else (log if rank == 0 else (lambda *_: None))
    start_step, t0, interrupted = step, time.perf_counter(), False
    try:
        while step < tc.steps:
            if stop_after is not None and step - start_step >= stop_after:
                interrupted = True
                break
            lr = lr_at(step, tc.lr, tc.min_lr, tc.warmup, tc.steps)
            loss, norm = trainer.step([batches.next() for _ in range(tc.grad_accum)], lr)
            step += 1
            history["train"].append([step, loss])
            tps = (step - start_step) * tokens_per_step / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.1e}",
                            gnorm=f"{norm:.2f}")
            if step % tc.eval_interval == 0 or step == tc.steps:
                final = step == tc.steps
                iters = tc.final_eval_iters if final else tc.eval_iters
                val = estimate_loss(trainer, val_ids, iters, tc.batch_size, tc.seed + 2)
                history["val"].append([step, val])
                say(f"step {step}: train loss {loss:.4f}, val loss {val:.4f}"
                    + (f" ({iters} batches)" if final else ""))
                save()
    except KeyboardInterrupt:
        interrupted = True
        say(f"interrupted at step {step}: saving a checkpoint to {out_dir}")
    finally:
        bar.close()
    if interrupted:
        save()
    elapsed = time.perf_counter() - t0
    return {"step": step, "interrupted": interrupted,
            "train_loss": history["train"][-1][1] if history["train"] else None,
            "val_loss": history["val"][-1][1] if history["val"] else None,
            "seconds": elapsed,
            "tokens_per_s": (step - start_step) * tokens_per_step / max(elapsed, 1e-9),
            "history": history, "world_size": trainer.world}
