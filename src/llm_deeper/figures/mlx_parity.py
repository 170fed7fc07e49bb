"""The figure of docs/mlx-engine.md: the same training run in the NumPy engine and in the MLX
engine (same initial weights, same batches, the one loop of train.py), loss by loss, and how far
apart the two engines' losses are at each step."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from . import figure, pyplot, save

FULL = dict(data="works", steps=100, batch_size=4)
QUICK = dict(data="sonnets", steps=4, batch_size=2)


def _run(engine: str, s: dict, out: str) -> tuple[np.ndarray, np.ndarray, object]:
    """Train the baby preset with one engine; (steps, losses, trainer)."""
    from ..config import preset
    from ..data import load_text, split_train_val
    from ..engines import make_trainer
    from ..tokenizers import CharTokenizer
    from ..train import TrainConfig, train

    text = load_text(s["data"])
    tok = CharTokenizer.train(text)
    train_ids, val_ids = split_train_val(np.asarray(tok.encode(text), dtype=np.int64))
    tc = TrainConfig(steps=s["steps"], batch_size=s["batch_size"], warmup=10, lr=3e-3,
                     eval_interval=s["steps"], eval_iters=1, final_eval_iters=1)
    trainer = make_trainer(engine, preset("baby", vocab_size=tok.vocab_size), tc.seed)
    r = train(trainer, tok, train_ids, val_ids, tc, out, progress=False, log=lambda *_: None)
    steps, losses = zip(*r["history"]["train"])
    return np.array(steps), np.array(losses), trainer


@figure("mlx_parity.png", page="docs/mlx-engine.md", needs="shakespeare",
        what="the baby preset trained in the NumPy and the MLX engine from the same weights on "
             "the same batches: two loss curves on top of each other, and their gap per step")
def mlx_parity(path: Path, quick: bool) -> None:
    s = QUICK if quick else FULL
    with tempfile.TemporaryDirectory() as tmp:
        steps, np_loss, _ = _run("numpy", s, f"{tmp}/numpy")
        _, mlx_loss, trainer = _run("mlx", s, f"{tmp}/mlx")
    gap = np.abs(mlx_loss - np_loss)
    cfg = trainer.cfg

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    a.plot(steps, np_loss, lw=2.5, color="C0", alpha=0.5, label="NumPy engine (hand-written "
           "backward)")
    a.plot(steps, mlx_loss, lw=1, color="C3", ls="--", label="MLX engine (mx.value_and_grad)")
    a.set_xlabel("optimizer step")
    a.set_ylabel("training loss (nats per character)")
    a.set_title("the same run, two engines", fontsize=10)
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    b.semilogy(steps, np.maximum(gap, 1e-9), "o-", ms=2.5, lw=0.8, color="C3")
    eps = np.finfo(np.float32).eps * np.abs(np_loss)
    b.semilogy(steps, eps, color="0.5", lw=0.8, ls="--",
               label="one float32 rounding step of the loss (eps x loss)")
    b.set_xlabel("optimizer step")
    b.set_ylabel("|loss MLX - loss NumPy| (nats, log scale)")
    b.set_title(f"gap per step: largest {gap.max():.1e}, last {gap[-1]:.1e}", fontsize=10)
    b.legend(fontsize=8, loc="lower right")
    b.grid(alpha=0.3, which="both")
    fig.suptitle(f"baby preset ({cfg.n_params():,} parameters), character tokens of "
                 f"'{s['data']}', batch {s['batch_size']} x {cfg.context_length}, AdamW "
                 f"lr 3e-3: MLX (CPU backend) vs NumPy", fontsize=10)
    save(fig, path)
