"""Figures of docs/transformer-block.md: one decoder block drawn as boxes and arrows (the
package's pre-LN block beside the original post-LN one), and pre-LN against post-LN measured:
gradient norm per block at initialisation, the residual stream's size, and training curves on
the works (computed by ln_placement.py, as lessons/03_modern/07_pre_vs_post_ln.py does)."""

from __future__ import annotations

import math
from pathlib import Path

from . import figure, pyplot, save

COLOURS = {"norm": "#f6e3a1", "attn": "#f4b183", "mlp": "#9dc3e6", "io": "#e7e6e6"}


def _box(ax, x, y, text, kind, w=2.3, h=0.62, size=9):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.03",
                                fc=COLOURS[kind], ec="black", lw=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=size)


def _add(ax, x, y):
    from matplotlib.patches import Circle

    ax.add_patch(Circle((x, y), 0.2, fc="white", ec="black", lw=1.2, zorder=3))
    ax.text(x, y, "+", ha="center", va="center", fontsize=13, zorder=4)


def _arrow(ax, points, note=None, note_at=0, note_side="left"):
    """A polyline ending in an arrow head; `note` written beside segment `note_at`."""
    xs, ys = zip(*points)
    ax.plot(xs[:-1] + (xs[-1],), ys[:-1] + (ys[-1],), color="black", lw=1.2, zorder=1)
    ax.annotate("", xy=points[-1], xytext=points[-2],
                arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 1.2})
    if note:
        (x0, y0), (x1, y1) = points[note_at], points[note_at + 1]
        dx = -0.12 if note_side == "left" else 0.12
        ax.text((x0 + x1) / 2 + dx, (y0 + y1) / 2, note, fontsize=7.5, color="#444444",
                ha="right" if note_side == "left" else "left", va="center")


def draw_block(ax, placement: str) -> None:
    """One decoder block, input at the bottom. The residual stream runs up the left (x = 0);
    each sub-layer branches off to the right (x = 2.6) and is added back."""
    s, b, shape = 0.0, 2.6, "(B, T, d)"
    _box(ax, s, 0, "x: the residual stream\n(B, T, d)", "io", w=2.6, h=0.75)
    if placement == "pre":
        _arrow(ax, [(s, 0.38), (s, 2.95)], shape, note_side="left")
        _arrow(ax, [(s, 0.9), (b, 0.9), (b, 1.25)])
        _box(ax, b, 1.55, "LayerNorm 1", "norm")
        _arrow(ax, [(b, 1.86), (b, 2.1)])
        _box(ax, b, 2.45, "causal self-attention\n(B, T, d) -> (B, T, d)", "attn", h=0.7)
        _arrow(ax, [(b, 2.8), (b, 3.15), (0.2, 3.15)])
        _add(ax, s, 3.15)
        _arrow(ax, [(s, 3.35), (s, 5.95)], shape, note_side="left")
        _arrow(ax, [(s, 3.9), (b, 3.9), (b, 4.25)])
        _box(ax, b, 4.55, "LayerNorm 2", "norm")
        _arrow(ax, [(b, 4.86), (b, 5.1)])
        _box(ax, b, 5.45, "MLP: d -> d_ff -> d\n(B, T, d_ff) inside", "mlp", h=0.7)
        _arrow(ax, [(b, 5.8), (b, 6.15), (0.2, 6.15)])
        _add(ax, s, 6.15)
        _arrow(ax, [(s, 6.35), (s, 6.9)], shape, note_side="left")
        top = "next block; after the last:\nfinal LayerNorm -> head"
        side = "identity path: the stream is never normalised"
        title = "pre-LN (GPT-2, Llama, this package)\nx = x + Attn(LN(x));  x = x + MLP(LN(x))"
    else:
        _arrow(ax, [(s, 0.38), (s, 1.95)], shape, note_side="left")
        _arrow(ax, [(s, 0.9), (b, 0.9), (b, 1.1)])
        _box(ax, b, 1.45, "causal self-attention\n(B, T, d) -> (B, T, d)", "attn", h=0.7)
        _arrow(ax, [(b, 1.8), (b, 2.15), (0.2, 2.15)])
        _add(ax, s, 2.15)
        _arrow(ax, [(s, 2.35), (s, 2.6)])
        _box(ax, s, 2.9, "LayerNorm 1", "norm", w=1.9)
        _arrow(ax, [(s, 3.21), (s, 4.95)], shape, note_side="left")
        _arrow(ax, [(s, 3.9), (b, 3.9), (b, 4.1)])
        _box(ax, b, 4.45, "MLP: d -> d_ff -> d\n(B, T, d_ff) inside", "mlp", h=0.7)
        _arrow(ax, [(b, 4.8), (b, 5.15), (0.2, 5.15)])
        _add(ax, s, 5.15)
        _arrow(ax, [(s, 5.35), (s, 5.6)])
        _box(ax, s, 5.9, "LayerNorm 2", "norm", w=1.9)
        _arrow(ax, [(s, 6.21), (s, 6.9)], shape, note_side="left")
        top = "next block; after the last:\nthe head (no final norm)"
        side = "every path to the input crosses 2 norms per block"
        title = "post-LN (the 2017 Transformer)\nx = LN(x + Attn(x));  x = LN(x + MLP(x))"
    ax.text(s - 1.6, 3.5, side, ha="center", va="center", fontsize=8, rotation=90,
            color="#555555")
    ax.text(s, 7.2, top, ha="center", va="bottom", fontsize=8.5)
    ax.set_title(title, fontsize=10)
    ax.set(xlim=(-2.0, 4.2), ylim=(-0.6, 7.9), aspect="equal")
    ax.axis("off")


@figure("transformer_block.png", page="docs/transformer-block.md",
        what="one decoder block as boxes and arrows, pre-LN (the package's) beside post-LN, "
             "shapes (B, T, d) on the residual stream")
def transformer_block(path: Path, quick: bool) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 7.2))
    for ax, placement in zip(axes, ("pre", "post")):
        draw_block(ax, placement)
    fig.text(0.5, 0.02, "yellow: LayerNorm (or RMSNorm), orange: attention (mixes tokens), "
             "blue: MLP (each token alone), +: residual addition", ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save(fig, path)


def plot_comparison(prof: dict, runs: list, unigram: float, vocab: int, path: Path,
                    steps: int) -> Path:
    """Four panels: gradient norm per block at initialisation, the residual stream's norm,
    training curves at the lr where they part, final validation loss against peak lr.
    prof: ln_placement.profiles(...); runs: ln_placement.sweep(...)."""
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(2, 2, figsize=(12, 8.4))
    colour = {"pre": "tab:blue", "post": "tab:red"}
    name = {"pre": "pre-LN", "post": "post-LN", "glorot": "Glorot init",
            "gpt2": "GPT-2 init (the package's)"}
    for init, ls in (("glorot", "-"), ("gpt2", "--")):
        for pl in ("pre", "post"):
            g, s, _ = prof[init][pl]
            ax[0, 0].plot(np.arange(1, len(g) + 1), g, ls, color=colour[pl], marker=".",
                          label=f"{name[pl]}, {name[init]}")
            ax[0, 1].plot(np.arange(len(s)), s, ls, color=colour[pl], marker=".",
                          label=f"{name[pl]}, {name[init]}")
    L = len(prof["glorot"]["pre"][0])
    ax[0, 0].set(yscale="log", xlabel="block (1 = nearest the input)",
                 ylabel="|dL/d(block parameters)|",
                 title=f"gradient per block at initialisation, {L} blocks")
    ax[0, 1].set(yscale="log", xlabel="depth (0 = embeddings, l = after block l)",
                 ylabel="mean |x| per token",
                 title="the residual stream's size (post-LN: sqrt(d) after every block)")
    for a in ax[0]:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)

    lrs = sorted({r["pre"].lr for r in runs})
    shown = 3e-3 if 3e-3 in lrs else lrs[len(lrs) // 2]
    seed0 = min(r["pre"].seed for r in runs)
    for r in runs:
        if r["pre"].lr != shown or r["pre"].seed != seed0:
            continue
        for pl in ("pre", "post"):
            t = np.array(r[pl].train)
            k = max(1, len(t) // 30)
            smooth = np.convolve(t, np.ones(k) / k, mode="valid")
            ax[1, 0].plot(np.arange(k, len(t) + 1), smooth, "-" if r[pl].warmup == 0 else ":",
                          color=colour[pl], label=f"{name[pl]}, warmup {r[pl].warmup}")
    ax[1, 0].set(xlabel="step", ylabel=f"training loss (nats, mean of {k} steps)",
                 title=f"the works, character level, peak lr {shown:g}, seed {seed0}")
    for a in ax[1]:
        a.axhline(unigram, color="grey", lw=0.8, ls="--")
        a.axhline(math.log(vocab), color="black", lw=0.8, ls="-.")
    ax[1, 0].text(0.55 * steps, unigram - 0.1, "character frequencies only", fontsize=8,
                  color="grey", va="top")
    ax[1, 0].text(1, math.log(vocab) - 0.12, f"uniform guess ln {vocab}", fontsize=8)

    for pl in ("pre", "post"):
        for warm in sorted({r[pl].warmup for r in runs}):
            vals = [[r[pl].val_loss for r in runs if r[pl].lr == lr and r[pl].warmup == warm]
                    for lr in lrs]
            mean = np.array([np.mean(v) for v in vals])
            err = np.array([[m - min(v), max(v) - m] for m, v in zip(mean, vals)]).T
            ax[1, 1].errorbar(lrs, mean, yerr=err, fmt="o-" if warm == 0 else "s:",
                              color=colour[pl], capsize=3,
                              label=f"{name[pl]}, warmup {warm}")
    n_seeds = len({r["pre"].seed for r in runs})
    ax[1, 1].set(xscale="log", xlabel="peak learning rate (AdamW)",
                 ylabel="validation loss after training (nats)",
                 title=f"{steps} steps, " + (f"{n_seeds} seeds: mean, min-max" if n_seeds > 1
                                              else f"seed {seed0}"))
    for a in ax[1]:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


@figure("pre_vs_post_ln.png", page="docs/transformer-block.md", needs="shakespeare",
        what="pre-LN against post-LN: gradient per block at init, the residual stream's size, "
             "and training on the works at several peak learning rates with and without warmup")
def pre_vs_post_ln(path: Path, quick: bool) -> None:
    from .ln_placement import profiles, stack_config, sweep, unigram_loss, works_corpus

    corpus = works_corpus()
    tok, train_ids, _ = corpus
    prof = profiles(12 if quick else 24, range(2 if quick else 8), train_ids)
    steps = 20 if quick else 300
    runs = sweep(corpus, stack_config(6, vocab_size=tok.vocab_size),
                 (3e-3,) if quick else (1e-3, 3e-3, 1e-2), (0,) if quick else (0, steps // 2),
                 (0,), steps)
    plot_comparison(prof, runs, unigram_loss(train_ids, tok.vocab_size), tok.vocab_size, path,
                    steps)
