"""The scaling sweep's figures (docs/scaling.md), drawn from a sweep's results.json.

The page's figures read the committed sweep, docs/data/scaling.json, so drawing them never
retrains (quick mode draws the same: drawing is the whole cost). `llm-deeper scaling plot` draws
any sweep's results with the same functions.
"""

from __future__ import annotations

from pathlib import Path

from . import figure, pyplot, save

RESULTS = Path(__file__).resolve().parents[3] / "docs" / "data" / "scaling.json"


def _results() -> dict:
    from ..scaling import load_results

    return load_results(RESULTS)


def _title(results: dict) -> str:
    st, c = results["settings"], results["corpus"]
    return (f"{st['steps']:,} steps x {st['batch_size']} x {st['context_length']} tokens per run "
            f"on {c['data']} ({c['train_tokens']:,} training / {c['val_tokens']:,} validation "
            f"characters), {st['engine']} engine")


def draw_loss(results: dict, path) -> Path:
    """Left: final validation loss against parameters, a line per data size (middle: the same,
    zoomed in below the smallest data size's losses). Right: against data size, a line per
    model, with its training loss dashed (the gap is overfitting)."""
    from ..scaling import grid

    plt = pyplot()
    sizes, datas, runs = grid(results)
    fig, (ax1, zoom, ax2) = plt.subplots(1, 3, figsize=(15, 4.4))
    cmap = plt.get_cmap("viridis")
    for ax in (ax1, zoom):
        for i, d in enumerate(datas):
            pts = [(runs[s, d]["params"], runs[s, d]["val_loss"]) for s in sizes
                   if (s, d) in runs]
            name = next(r["data"] for r in results["runs"] if r["data_size"] == d)
            ax.plot(*zip(*pts), "o-", color=cmap(i / max(len(datas) - 1, 1)),
                    label=f"{name} ({d:,} tokens)")
        ax.set_xscale("log")
        ax.set_xlabel("parameters N (log scale)")
        ax.set_ylabel("validation loss (nats/character)")
    ax1.set_title("more parameters, same data")
    ax1.legend(title="training data", fontsize=8)
    rest = [r["val_loss"] for r in results["runs"] if r["data_size"] != datas[0]] or [0]
    low = min(r["val_loss"] for r in results["runs"])
    zoom.set_ylim(low - 0.03, max(rest) + 0.05)
    zoom.set_title(f"the same, zoomed in (the {datas[0]:,}-token line runs off the top)"
                   if len(datas) > 1 and max(rest) < max(r["val_loss"] for r in
                                                        results["runs"]) else "zoomed in",
                   fontsize=9)
    for i, s in enumerate(sizes):
        rs = [runs[s, d] for d in datas if (s, d) in runs]
        color = f"C{i}"
        ax2.plot([r["data_size"] for r in rs], [r["val_loss"] for r in rs], "o-", color=color,
                 label=f"{s} ({rs[0]['params']:,}): validation")
        ax2.plot([r["data_size"] for r in rs], [r["train_loss"] for r in rs], "x--",
                 color=color, alpha=0.7, label=f"{s}: training")
    ax2.set_xscale("log")
    ax2.set_xlabel("training data D_data (tokens, log scale)")
    ax2.set_ylabel("loss (nats/character)")
    ax2.set_title("more data, same model")
    ax2.legend(fontsize=7, ncol=1)
    for ax in (ax1, zoom, ax2):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(_title(results), fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def draw_curves(results: dict, path) -> Path:
    """Training (dashed) and validation (solid) loss against step, a panel per data size."""
    from ..scaling import grid

    plt = pyplot()
    sizes, datas, runs = grid(results)
    fig, axes = plt.subplots(1, len(datas), figsize=(3.2 * len(datas) + 1, 3.8), sharey=True,
                             squeeze=False)
    for ax, d in zip(axes[0], datas):
        for i, s in enumerate(sizes):
            if (s, d) not in runs:
                continue
            r = runs[s, d]
            step, train, val = zip(*r["curve"])
            ax.plot(step, val, "o-", ms=3, color=f"C{i}", label=f"{s}: validation")
            ax.plot(step, train, "--", color=f"C{i}", alpha=0.7,
                    label=f"{s}: training (mean since the last point)")
        r = next(runs[s, d] for s in sizes if (s, d) in runs)
        ax.set_title(f"{r['data_size']:,} tokens ({r['data']}): {r['epochs']:g} epochs",
                     fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss (nats/character)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(_title(results), fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def draw(results: dict, path) -> list[Path]:
    """Both figures: `path` and <stem>_curves<suffix> beside it."""
    path = Path(path)
    return [draw_loss(results, path),
            draw_curves(results, path.with_name(f"{path.stem}_curves{path.suffix or '.png'}"))]


@figure("scaling.png", page="docs/scaling.md",
        what="validation loss falls with parameters on enough data and with data for every "
        "model; on little data the training loss falls while the validation loss does not")
def scaling_png(path: Path, quick: bool) -> None:
    draw_loss(_results(), path)


@figure("scaling_curves.png", page="docs/scaling.md",
        what="training and validation loss against step for every model and data size: "
        "on 20k characters validation turns up (overfitting), on the whole works it does not")
def scaling_curves_png(path: Path, quick: bool) -> None:
    draw_curves(_results(), path)
