"""The training loop: batches -> loss and gradients -> clip -> AdamW, with evaluation,
checkpoints, resume and Ctrl-C.

Resume is exact: the checkpoint holds the parameters, AdamW's moments and step count, the
batch sampler's and dropout's RNG states and the loss history, so a run stopped at step k and
resumed produces bit for bit the losses of an uninterrupted run (tests/test_train.py).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import load_checkpoint, read_tensors, save_checkpoint
from ..data.batching import Batcher
from ..errors import UserError
from .model import GPT
from .optim import AdamW, clip_grad_norm, lr_at


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 12
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20
    final_eval_iters: int = 200
    seed: int = 1337


def estimate_loss(model: GPT, ids: np.ndarray, iters: int, batch_size: int, seed: int) -> float:
    """Mean loss over `iters` batches drawn with a fixed seed: the same batches every call, so
    successive evaluations differ only by the model."""
    if iters <= 0:
        return float("nan")
    b = Batcher(ids, batch_size, model.cfg.context_length, seed=seed, name="validation text")
    return float(np.mean([model.forward(*b.next())[1] for _ in range(iters)]))


def train(model: GPT, tokenizer, train_ids: np.ndarray, val_ids: np.ndarray, tc: TrainConfig,
          out_dir, *, resume: bool = False, progress: bool = True, log=print,
          extra_state: dict | None = None, stop_after: int | None = None) -> dict:
    """Train `model` in place; checkpoints go to out_dir. Returns a summary dict.

    stop_after: stop (with a checkpoint) after this many steps of this call, as Ctrl-C would;
    used by the resume test.
    """
    out_dir = Path(out_dir)
    cfg = model.cfg
    trainable = [k for k in model.params if k not in model.frozen]
    opt = AdamW(model.params, trainable, lr=tc.lr, betas=(tc.beta1, tc.beta2),
                weight_decay=tc.weight_decay)
    batches = Batcher(train_ids, tc.batch_size, cfg.context_length, seed=tc.seed,
                      name="training text")
    drop_rng = np.random.default_rng(tc.seed + 1) if cfg.dropout > 0 else None
    history = {"train": [], "val": []}
    step = 0
    if resume:
        _, params, _, state = load_checkpoint(out_dir, dtype=model.dtype)
        if not state:
            raise UserError(f"{out_dir} has no trainer_state.json to resume from.")
        missing = [k for k in model.params if k not in params]
        if missing:
            raise UserError(f"{out_dir} lacks {missing[0]}; it is not a checkpoint of this run.")
        for k in model.params:
            model.params[k][...] = params[k]
        opt.load_state_dict(read_tensors(out_dir / "optimizer.safetensors"))
        batches.set_state(state["batch_rng"])
        if drop_rng is not None:
            drop_rng.bit_generator.state = state["dropout_rng"]
        history, step = state["history"], int(state["step"])
        log(f"resumed from {out_dir} at step {step}")

    def save():
        from ..viz import plot_losses

        state = {"step": step, "batch_rng": batches.state(),
                 "dropout_rng": drop_rng.bit_generator.state if drop_rng is not None else None,
                 "history": history, "train_config": dataclasses.asdict(tc),
                 **(extra_state or {})}
        save_checkpoint(out_dir, cfg, model.params, tokenizer, optimizer_state=opt.state_dict(),
                        trainer_state=state,
                        extra_files={"loss_curve.png": lambda p: plot_losses(
                            history, p, f"{cfg.n_params() / 1e6:.2f}M-parameter model")})

    tokens_per_step = tc.batch_size * tc.grad_accum * cfg.context_length
    bar = _bar(tc.steps, step, progress)
    start_step, t0 = step, time.perf_counter()
    interrupted = False
    try:
        while step < tc.steps:
            if stop_after is not None and step - start_step >= stop_after:
                interrupted = True
                break
            lr = lr_at(step, tc.lr, tc.min_lr, tc.warmup, tc.steps)
            grads, loss = None, 0.0
            for _ in range(tc.grad_accum):
                x, y = batches.next()
                micro_loss, g = model.loss_and_grads(x, y, rng=drop_rng, scale=1.0 / tc.grad_accum)
                loss += micro_loss / tc.grad_accum
                if grads is None:
                    grads = g
                else:
                    for k in grads:
                        grads[k] += g[k]
            norm = clip_grad_norm(grads, tc.grad_clip)
            opt.step(grads, lr)
            step += 1
            history["train"].append([step, loss])
            elapsed = time.perf_counter() - t0
            tps = (step - start_step) * tokens_per_step / max(elapsed, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.1e}",
                            gnorm=f"{norm:.2f}")
            if step % tc.eval_interval == 0 or step == tc.steps:
                final = step == tc.steps
                iters = tc.final_eval_iters if final else tc.eval_iters
                val = estimate_loss(model, val_ids, iters, tc.batch_size, tc.seed + 2)
                history["val"].append([step, val])
                _write(bar, log, f"step {step}: train loss {loss:.4f}, val loss {val:.4f}"
                       + (f" ({iters} batches)" if final else ""))
                save()
    except KeyboardInterrupt:
        interrupted = True
        _write(bar, log, f"interrupted at step {step}: saving a checkpoint to {out_dir}")
    finally:
        bar.close()
    if interrupted:
        save()
    elapsed = time.perf_counter() - t0
    done = step - start_step
    return {"step": step, "interrupted": interrupted,
            "train_loss": history["train"][-1][1] if history["train"] else None,
            "val_loss": history["val"][-1][1] if history["val"] else None,
            "seconds": elapsed, "tokens_per_s": done * tokens_per_step / max(elapsed, 1e-9),
            "history": history}


def _bar(total, initial, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled,
                dynamic_ncols=True)


def _write(bar, log, msg):
    if bar.disable:
        log(msg)
    else:
        bar.write(msg)
