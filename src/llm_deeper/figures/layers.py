"""Figures of a layer's parts, drawn from the NumPy engine's code: the activations and their
derivatives (numpy_engine/ffn.py), and which tiles causal tiled attention computes and how much
memory it saves (numpy_engine/flash_attention.py). The lessons that teach them
(lessons/03_modern/02_activations.py, lessons/03_modern/05_flash_attention.py) draw their figures
with these functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import figure, pyplot, save


def activation_curves(lo: float = -4.0, hi: float = 4.0, n: int = 401):
    """(a, {name: act(a)}, {name: act'(a)}) for ReLU, GELU (tanh form) and SiLU, each computed by
    the engine's forward and backward (the derivative is the backward of a gradient of ones)."""
    from ..numpy_engine.ffn import ACT

    a = np.linspace(lo, hi, n)
    curves, grads = {}, {}
    for name in ("relu", "gelu", "silu"):
        forward, backward = ACT[name]
        curves[name], cache = forward(a)
        grads[name] = backward(np.ones_like(a), cache)
    return a, curves, grads


@figure("activations.png", page="docs/training.md",
        what="ReLU, GELU and SiLU with their derivatives, and SwiGLU's gate silu(g) x u")
def activations(path: Path, quick: bool) -> None:
    plt = pyplot()
    a, curves, grads = activation_curves(n=201 if quick else 401)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), width_ratios=[1, 1, 1.1],
                             layout="constrained")
    labels = {"relu": "ReLU max(0, a)", "gelu": "GELU a Phi(a) (tanh form)",
              "silu": "SiLU a sigmoid(a)"}
    for name in curves:
        axes[0].plot(a, curves[name], lw=1.6, label=labels[name])
        axes[1].plot(a, grads[name], lw=1.6, label=labels[name])
    axes[0].set_title("activation f(a)\n(ReLU is flat below 0: no gradient there)")
    axes[0].set_ylabel("f(a)")
    axes[1].set_title("derivative f'(a): the share of the\ngradient the backward pass lets through")
    axes[1].set_ylabel("f'(a)")
    for ax in axes[:2]:
        ax.axhline(0, color="0.5", lw=0.8)
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_xlabel("pre-activation a")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    g, gate, _ = activation_curves(n=81 if quick else 161)  # g and u on the same grid
    im = axes[2].imshow(gate["silu"][None, :] * g[:, None], origin="lower", extent=(-4, 4, -4, 4),
                        cmap="RdBu_r", vmin=-16, vmax=16, aspect="auto")
    axes[2].set_xlabel("gate g = x W1 (through SiLU)")
    axes[2].set_ylabel("up u = x W3")
    axes[2].set_title("SwiGLU's unit silu(g) x u: near 0 wherever\n"
                      "the gate g is negative, whatever u says")
    fig.colorbar(im, ax=axes[2], label="silu(g) x u")
    fig.suptitle("Activations of the MLP (numpy_engine/ffn.py: the forward and its hand-written "
                 "backward)")
    save(fig, path)


KIND_COLOURS = {"full": "#4878d0", "partial": "#ee854a", "skipped": "#e6e6e6"}


def _tiles_panel(ax, T: int, Br: int, Bc: int) -> None:
    """Each (query, key) entry coloured by its tile's kind, from one run of the tiled forward."""
    from matplotlib.patches import Patch

    from ..numpy_engine.flash_attention import flash_attention_forward

    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(1, 1, T, 4)) for _ in range(3))
    steps = []
    flash_attention_forward(q, k, v, Br=Br, Bc=Bc, on_block=steps.append)
    rgb = np.ones((T, T, 3))
    order = 0
    for s in steps:
        (r0, r1), (c0, c1) = s.rows, s.cols
        colour = np.array([int(KIND_COLOURS[s.kind][i:i + 2], 16) / 255 for i in (1, 3, 5)])
        rgb[r0:r1, c0:c1] = colour
        if s.kind == "partial":  # entries above the diagonal are masked inside the tile
            rows, cols = np.mgrid[r0:r1, c0:c1]
            rgb[r0:r1, c0:c1][cols > rows] = 0.55 + 0.45 * colour
        if s.kind != "skipped":
            order += 1
            ax.text((c0 + c1 - 1) / 2, (r0 + r1 - 1) / 2, str(order), ha="center", va="center",
                    fontsize=7, color="white" if s.kind == "full" else "black")
    ax.imshow(rgb, interpolation="nearest")
    for r in range(0, T + 1, Br):
        ax.axhline(r - 0.5, color="black", lw=0.8)
    for c in range(0, T + 1, Bc):
        ax.axvline(c - 0.5, color="black", lw=0.8)
    ax.plot([-0.5, T - 0.5], [-0.5, T - 0.5], color="black", lw=1, ls="--")
    counts = {kd: sum(s.kind == kd for s in steps) for kd in KIND_COLOURS}
    ax.legend(handles=[Patch(color=c, label=f"{kd} ({counts[kd]} tiles)")
                       for kd, c in KIND_COLOURS.items()], loc="upper right", fontsize=8)
    ax.set_xlabel(f"key position (blocks of Bc = {Bc})")
    ax.set_ylabel(f"query position (blocks of Br = {Br})")
    ax.set_title(f"causal tiles, T = {T}: numbers = the order the loop computes them;\n"
                 "pale = masked inside a partial tile", fontsize=9)


def _memory_panel(ax, heads: int = 9, head_dim: int = 64) -> None:
    from ..numpy_engine.flash_attention import attention_memory

    Ts = 2 ** np.arange(7, 18)
    for name, nbytes, style in (("fp32", 4, "-"), ("fp16", 2, "--")):
        mems = [attention_memory(int(t), head_dim, bytes_per_number=nbytes) for t in Ts]
        ax.plot(Ts, [heads * m.naive for m in mems], style, color="C3",
                label=f"naive (S and P), {name}")
        ax.plot(Ts, [heads * m.tiled for m in mems], style, color="C0",
                label=f"tiled 64 x 64, {name}")
    ax.axhline(80e9, color="gray", lw=0.8)
    ax.text(Ts[0], 80e9 * 1.4, "80 GB (one H100)", color="gray", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T (tokens)")
    ax.set_ylabel(f"bytes, one layer ({heads} heads, batch 1)")
    ax.set_title(f"memory beyond Q, K, V, O: SmolLM2's attention (head_dim {head_dim})",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


@figure("flash_tiles.png", page="docs/flash-attention.md",
        what="which tiles causal tiled attention computes or skips, and its memory vs naive")
def flash_tiles(path: Path, quick: bool) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.6), width_ratios=[1, 1.25],
                                 layout="constrained")
    _tiles_panel(ax, *((24, 8, 4) if quick else (48, 12, 8)))
    _memory_panel(bx)
    fig.suptitle("FlashAttention in NumPy (numpy_engine/flash_attention.py): tiles of the "
                 "loop (left), memory (right)")
    save(fig, path)
