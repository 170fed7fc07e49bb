"""The training figure of docs/training.md: a short run of the baby preset with the NumPy engine
through the package's one training loop (commands/train.py: train_run -> train.py: train), with
many validation points."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from . import figure, pyplot, save

FULL = dict(data="works", steps=600, eval_interval=25, eval_iters=10, final_eval_iters=40)
QUICK = dict(data="sonnets", steps=20, eval_interval=5, eval_iters=2, final_eval_iters=2)


@figure("loss_curve.png", page="docs/training.md", needs="shakespeare",
        what="the baby preset trained 600 steps (NumPy engine): train loss per step, its "
             "moving mean, and the validation loss every 25 steps")
def loss_curve(path: Path, quick: bool) -> None:
    from ..commands.train import train_run
    from ..train import TrainConfig

    s = QUICK if quick else FULL
    with tempfile.TemporaryDirectory() as tmp:
        r = train_run(preset_name="baby", data=s["data"], tokenizer="char", out=tmp,
                      steps=s["steps"], progress=False, log=lambda *_: None, engine="numpy",
                      train_overrides={k: s[k] for k in ("eval_interval", "eval_iters",
                                                          "final_eval_iters")})
    cfg, tc = r["model"].cfg, TrainConfig(steps=s["steps"])
    steps, losses = (np.array(c) for c in zip(*r["history"]["train"]))
    v_steps, v_losses = zip(*r["history"]["val"])
    k = 25 if not quick else 5
    mean = np.convolve(losses, np.ones(k) / k, mode="valid")  # mean of k steps, centred below

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    ax.plot(steps, losses, lw=0.7, alpha=0.45, color="C0", label="train loss, each step's batch")
    ax.plot(steps[k // 2:k // 2 + len(mean)], mean, lw=1.8, color="C0",
            label=f"train loss, mean of the {k} steps around each step")
    ax.plot(v_steps, v_losses, "o-", ms=4, lw=1.2, color="C1",
            label=f"validation loss ({s['eval_iters']} batches; the last point "
                  f"{s['final_eval_iters']})")
    uniform = math.log(cfg.vocab_size)
    ax.axhline(uniform, color="0.5", lw=0.8, ls="--")
    ax.text(steps[-1], uniform, f"ln {cfg.vocab_size} = {uniform:.2f}: a uniform guess",
            ha="right", va="bottom", fontsize=8, color="0.4")
    if tc.warmup < s["steps"]:
        ax.axvline(tc.warmup, color="C2", lw=0.8, ls=":")
        ax.text(tc.warmup, uniform, f" end of the {tc.warmup}-step warmup: learning rate at "
                f"its peak {tc.lr:g}, then cosine decay", fontsize=8, color="C2", va="top")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_title(f"baby preset, {cfg.n_params():,} parameters, character tokens of "
                 f"'{s['data']}', batch {tc.batch_size} x {cfg.context_length}: final validation "
                 f"loss {v_losses[-1]:.3f}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1, 0.9))
    ax.grid(alpha=0.3)
    fig.suptitle("Training a GPT from scratch with the NumPy engine (train.py's loop)")
    save(fig, path)
