"""Figures of the parallelism page: where tensor parallelism splits an MLP and communicates, and
what each rank holds under DDP and the three ZeRO stages as the ranks grow."""

from __future__ import annotations

from pathlib import Path

from . import figure, pyplot, save

# bytes per parameter of AdamW training in float32: weights 4, gradients 4, two moments 8
STAGES = {"DDP": (4, 4, 8, ()), "ZeRO-1 (optimizer state)": (4, 4, 8, ("m",)),
          "ZeRO-2 (+ gradients)": (4, 4, 8, ("g", "m")),
          "ZeRO-3 = FSDP (+ weights)": (4, 4, 8, ("w", "g", "m"))}


def bytes_per_rank(n_params: float, ranks: int, stage: str) -> float:
    """Training-state bytes one rank holds: each sharded part divided by the ranks."""
    w, g, m, sharded = STAGES[stage]
    return n_params * (w / (ranks if "w" in sharded else 1) + g / (ranks if "g" in sharded else 1)
                       + m / (ranks if "m" in sharded else 1))


@figure("parallelism.png", page="docs/parallelism.md",
        what="tensor parallelism's column- then row-split MLP with its one all-reduce, and the "
             "training state per rank under DDP and ZeRO-1/2/3 against the number of ranks")
def parallelism(path: Path, quick: bool) -> None:
    from matplotlib.patches import FancyArrowPatch, Rectangle

    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [1.4, 1]})
    # left: a 2-way tensor-parallel MLP, y = gelu(x W1) W2
    colours = ("#4c72b0", "#dd8452")

    def box(x, y, w, h, text, colour="#e8e8e8"):
        ax.add_patch(Rectangle((x, y), w, h, facecolor=colour, edgecolor="black", alpha=0.85))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    def arrow(x0, y0, x1, y1):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12))

    box(0, 2.1, 1.7, 0.8, "x (B, T, d)\non both ranks")
    for r, (y, c) in enumerate(zip((3.6, 0.6), colours)):
        box(2.3, y, 2.4, 0.8, f"W1, columns half {r}\n(d, d_ff/2)", c)
        box(5.2, y, 1.7, 0.8, "GELU\n(B, T, d_ff/2)")
        box(7.4, y, 2.4, 0.8, f"W2, rows half {r}\n(d_ff/2, d)", c)
        box(10.3, y, 1.6, 0.8, f"partial y{r}\n(B, T, d)")
        ax.text(1.0, y + 0.4, f"rank {r}", ha="center", va="center", fontsize=10,
                color=c, weight="bold")
        arrow(1.7, 2.5, 2.3, y + 0.4)
        for x0, x1 in ((4.7, 5.2), (6.9, 7.4), (9.8, 10.3)):
            arrow(x0, y + 0.4, x1, y + 0.4)
        arrow(11.9, y + 0.4, 12.4, 2.5)
    box(12.4, 2.0, 1.7, 1.0, "all-reduce\ny = y0 + y1", "#c8e6c9")
    ax.text(3.5, 4.75, "column-parallel:\nno communication", ha="center", fontsize=9)
    ax.text(8.6, 4.75, "row-parallel:\npartial sums", ha="center", fontsize=9)
    ax.text(7.0, -0.35, "one all-reduce per MLP (and per attention block, heads split the same "
            "way) in the forward pass,\none in the backward pass: "
            "lessons/06_parallel/01_tensor_parallel.py runs it on 2 processes", ha="center",
            fontsize=8.5)
    ax.set(xlim=(-0.2, 14.3), ylim=(-0.8, 5.3), title="tensor parallelism: an MLP on 2 ranks")
    ax.axis("off")
    # right: training state per rank for a 7B model against the ranks
    n_params = 7e9
    ranks = [1, 2, 4, 8, 16, 32, 64] if not quick else [1, 8, 64]
    for stage in STAGES:
        bx.plot(ranks, [bytes_per_rank(n_params, n, stage) / 1e9 for n in ranks], "o-",
                label=stage)
    bx.axhline(80, color="grey", ls="--", lw=0.8)
    bx.text(ranks[-1], 84, "one 80 GB GPU", ha="right", fontsize=8, color="dimgrey")
    bx.set_xscale("log", base=2)
    bx.set_yscale("log")
    bx.set_xticks(ranks, [str(n) for n in ranks])
    bx.set(xlabel="ranks N (data-parallel processes)",
           ylabel="GB per rank (weights + gradients + AdamW)",
           title="a 7B model's training state per rank\n(float32 AdamW: 16 bytes per parameter)")
    bx.grid(alpha=0.3, which="both")
    bx.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
