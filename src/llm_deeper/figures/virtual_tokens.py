"""The prompt- and prefix-tuning figure of docs/finetuning.md: where the trained numbers sit in
the model (the input row alone, or every layer's keys and values), and how many there are on
SmolLM2-135M next to LoRA and full fine-tuning (counted from the shapes; the lesson
lessons/04_hf/08_prompt_prefix_tuning.py checks the same counts against PEFT)."""

from __future__ import annotations

from pathlib import Path

from . import figure, pyplot, save


def counts(n_virtual: int = 20, rank: int = 16) -> dict[str, int]:
    """Trainable parameters of each method on SmolLM2-135M (n virtual tokens, LoRA rank)."""
    from .. import sizing
    from .pages import smollm2_arch

    a = smollm2_arch()
    kv = a.n_kv_head * a.head_dim
    return {"prompt tuning": n_virtual * a.d_model,
            "prefix tuning": n_virtual * a.n_layer * 2 * kv,
            "prefix via MLP\n(training only)": n_virtual * kv + kv * kv + kv
            + kv * a.n_layer * 2 * kv + a.n_layer * 2 * kv,
            f"LoRA r={rank}\n(all linear)": sizing.lora_params(a, rank, ("all-linear",)),
            "full": sizing.params(a)["total"]}


@figure("virtual_tokens.png", page="docs/finetuning.md",
        what="prompt tuning trains the input vectors of n virtual tokens, prefix tuning their "
             "keys and values in every layer; trainable parameters on SmolLM2 next to LoRA")
def virtual_tokens(path: Path, quick: bool) -> None:
    import numpy as np
    from matplotlib.colors import ListedColormap

    plt = pyplot()
    n_virtual, n_real, n_layer = (4, 6, 6) if quick else (5, 8, 8)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    cmap = ListedColormap(["#eeeeee", "#c9d6ea", "#f4b183"])  # empty, frozen, trained
    for ax, method in zip(axes[:2], ("prompt", "prefix")):
        grid = np.ones((n_layer + 1, n_virtual + n_real))  # row 0: the input vectors
        if method == "prompt":
            grid[0, :n_virtual] = 2  # learned embeddings; the layers above compute from them
        else:
            grid[0, :n_virtual] = 0  # no input vector: only keys and values exist there
            grid[1:, :n_virtual] = 2
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=2, origin="lower", aspect="auto")
        ax.set_xticks(range(n_virtual + n_real),
                      [f"v{i + 1}" for i in range(n_virtual)] + [f"x{i + 1}" for i in
                                                                 range(n_real)], fontsize=8)
        ax.set_yticks(range(n_layer + 1), ["input"] + [f"layer {i + 1}" for i in
                                                       range(n_layer)], fontsize=8)
        ax.axvline(n_virtual - 0.5, color="black", lw=1)
        ax.set_xlabel("position (v: virtual tokens, x: the input's tokens)")
        ax.set_title("prompt tuning: n input vectors trained" if method == "prompt" else
                     "prefix tuning: keys and values trained\nin every layer", fontsize=10)
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=cmap(2), label="trained"),
                        Patch(color=cmap(1), label="computed by the frozen model"),
                        Patch(color=cmap(0), label="none")], loc="upper left", ncol=3,
               fontsize=8, frameon=False)
    fig.text(0.01, 0.02, f"(schematic: {n_virtual} virtual tokens and {n_layer} layers drawn; "
             "SmolLM2 has 30 layers, and 20 virtual tokens are used here)", fontsize=8)
    c = counts()
    names = list(c)
    bx = axes[2]
    bars = bx.barh(range(len(names)), [c[k] for k in names],
                   color=["#f4b183", "#f4b183", "#f8cbad", "#9dc3e6", "#c9d6ea"])
    bx.set_xscale("log")
    bx.set_yticks(range(len(names)), names, fontsize=9)
    bx.invert_yaxis()
    total = c["full"]
    for b, k in zip(bars, names):
        bx.text(b.get_width() * 1.15, b.get_y() + b.get_height() / 2,
                f"{c[k]:,} ({100 * c[k] / total:.3g} %)", va="center", fontsize=8)
    bx.set(xlim=(5e3, 5e9), xlabel="trainable parameters (log scale)",
           title="SmolLM2-135M, 20 virtual tokens")
    bx.grid(alpha=0.3, axis="x")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    save(fig, path)
