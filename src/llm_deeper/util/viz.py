"""Figures saved as PNG next to the numbers (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot_losses(history: dict, path, title: str = "loss") -> Path | None:
    """history: {'train': [[step, loss], ...], 'val': [[step, loss], ...]}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is a nicety; training goes on without it
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    train = history.get("train") or []
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, lw=0.8, alpha=0.5, label="train (per step)")
        if len(losses) > 20:
            k = max(5, len(losses) // 50)
            sm = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
                  for i in range(len(losses))]
            ax.plot(steps, sm, lw=1.5, label=f"train (mean of {k})")
    val = history.get("val") or []
    if val:
        vs, vl = zip(*val)
        ax.plot(vs, vl, "o-", lw=1.5, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
