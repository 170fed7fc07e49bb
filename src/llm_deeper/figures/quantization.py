"""Figures of the quantization formats (docs/quantization.md), drawn on one of SmolLM2's weight
matrices with the package's own quantizers (llm_deeper/quantization/):

* quant_grids.png: the histogram of the matrix and, over it, the values each format can give
  back: INT8 with one absmax scale for the tensor, INT4 and NF4 with the scale of one group or
  block (the one of median absmax), FP8 E4M3 with one scale for the tensor;
* quant_error_bits.png: reconstruction error against bits per parameter for every format.

lessons/07_quantization/01_number_formats.py draws the same two pictures with these functions.

The matrix is what SmolLM2's GGUF stores, dequantized: its block matrices are Q4_1 in the file
(the token embedding Q8_0), so "the truth" here is already a 4-bit matrix, and Q4_1 gives it
back with no error at all (the lesson checks that).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import figure, pyplot, save

MATRIX = "h.0.attn.wq"  # (576, 576): one row's absmax is 5x the median row's (an outlier row)

# (label, format, options): every format of quantization/formats.py, as the lesson tabulates them
FORMAT_TABLE = (
    ("int8, per tensor", "int8", {}),
    ("int8, per row", "int8", {"per_channel": True}),
    ("int8 zero point, per row", "int8_asym", {"per_channel": True}),
    ("GGUF Q8_0 (blocks of 32)", "q8_0", {}),
    ("FP8 E4M3, per tensor", "fp8_e4m3", {}),
    ("FP8 E4M3, per row", "fp8_e4m3", {"per_channel": True}),
    ("FP8 E5M2, per row", "fp8_e5m2", {"per_channel": True}),
    ("INT4, groups of 32", "int4", {"group_size": 32}),
    ("INT4, groups of 64", "int4", {"group_size": 64}),
    ("GGUF Q4_0 (blocks of 32)", "q4_0", {}),
    ("GGUF Q4_1 (blocks of 32)", "q4_1", {}),
    ("NF4, blocks of 64", "nf4", {}),
    ("NF4 + double quantization", "nf4", {"double_quant": True}),
)


def smollm2_matrix(name: str = MATRIX) -> np.ndarray:
    """One weight matrix of SmolLM2-135M as float32 (the copy the SmolLM2 figures share)."""
    from .smollm2 import smollm2

    model, _ = smollm2()
    return model.param_dict()[name].detach().float().numpy().copy()


def median_group(absmax: np.ndarray) -> tuple[int, float]:
    """(flat index, value) of the group whose absmax is the median one: a typical group."""
    flat = np.asarray(absmax, dtype=np.float64).reshape(-1)
    i = int(np.argsort(flat, kind="stable")[flat.size // 2])
    return i, float(flat[i])


def grids(w: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
    """label -> (every value the format can give back, one line saying whose scale it is), each
    read off the package's quantized tensor of w."""
    from ..quantization import fp8, integer, nf4

    s8 = float(integer.int8_quantize(w).scales[0])
    q4 = integer.int4_quantize(w, group_size=64)
    g4, s4 = median_group(q4.scales)
    qn = nf4.nf4_quantize(w, block_size=64)
    gn, cn = median_group(qn.scales)
    qf = fp8.fp8_quantize(w, "e4m3")
    e4m3 = fp8.decode(np.arange(256, dtype=np.uint8), "e4m3")
    e4m3 = np.unique(e4m3[np.isfinite(e4m3)]) * float(qf.scales[0])
    return {
        "INT8, one absmax scale per tensor": (
            np.arange(-127, 128) * s8, f"255 levels, step max|w| / 127 = {s8:.4f}"),
        "INT4, one group of 64": (
            np.arange(-7, 8) * s4, f"15 levels, step {s4:.4f} (the median group's max|w| / 7)"),
        "NF4, one block of 64": (
            nf4.NF4 * cn, f"16 levels at normal quantiles x {cn:.3f} (the median block's absmax)"),
        "FP8 E4M3, one scale per tensor": (
            e4m3, f"{e4m3.size} values (254 finite codes; +0 and -0 alike), scale max|w| / 448"),
    }


def draw_quant_grids(path: Path, w: np.ndarray, title: str) -> Path:
    """Four panels: the histogram of w, and over it the values of one format each."""
    plt = pyplot()
    lim = 1.15 * float(np.quantile(np.abs(w), 0.999))
    body = w[np.abs(w) <= lim].reshape(-1)
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.6), layout="constrained", sharex=True)
    for ax, (label, (values, what)), colour in zip(axes.flat, grids(w).items(),
                                                    ("C0", "C1", "C2", "C3")):
        shown = values[np.abs(values) <= lim]
        ax.vlines(shown, 0, 1, transform=ax.get_xaxis_transform(), color=colour, lw=0.6,
                  alpha=0.8, zorder=1)
        ax.hist(body, bins=240, range=(-lim, lim), color="0.45", alpha=0.75, density=True,
                zorder=2)
        ax.set_title(f"{label}: {shown.size} of its values in view", fontsize=10)
        ax.text(0.01, 0.97, what, transform=ax.transAxes, va="top", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
        ax.set_xlim(-lim, lim)
        ax.set_yticks([])
    for ax in axes[1]:
        ax.set_xlabel(f"weight value (|w| up to {lim:.2f}, the 99.9th percentile x 1.15, "
                      f"shown; max |w| = {np.abs(w).max():.2f})", fontsize=8)
    fig.suptitle(title)
    return save(fig, path)


def error_rows(w: np.ndarray) -> list[dict]:
    """error_report of w for every format of FORMAT_TABLE, with its label."""
    from ..quantization import error_report

    return [{"label": label, **error_report(w, fmt, **opts)} for label, fmt, opts in FORMAT_TABLE]


def draw_error_bits(path: Path, rows: list[dict], w_var: float, title: str) -> Path:
    """One bar per format: relative RMS error sqrt(MSE / Var w) (log scale), with its bits per
    parameter beside it; ordered by bits."""
    plt = pyplot()
    rows = sorted(rows, key=lambda r: (r["bits_per_param"], -r["mse"]))
    fig, ax = plt.subplots(figsize=(9.5, 0.42 * len(rows) + 1.6), layout="constrained")
    floor = 1e-3
    for i, r in enumerate(rows):
        rel = float(np.sqrt(r["mse"] / w_var))
        family = ("C3" if r["format"].startswith("fp8") else
                  "C0" if r["bits_per_param"] >= 6 else "C1")
        note = f"{r['bits_per_param']:.3f} bits/param"
        if rel == 0:  # Q4_1 on a matrix the file stores as Q4_1
            note += ": error 0, the file's own format gives its numbers back"
        else:
            ax.barh(i, rel - floor, left=floor, color=family, height=0.7)
            note += f", error {rel:.3g}"
        ax.text(max(rel, floor) * 1.08, i, note, va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(floor, 3.0)
    ax.set_xlabel("RMS error / standard deviation of the weights (log scale); blue: 8-bit "
                  "integer, red: FP8, orange: 4-bit")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return save(fig, path)


@figure("quant_grids.png", page="docs/quantization.md", needs="smollm2",
        what="a SmolLM2 weight matrix's histogram with the values INT8 (per tensor), INT4 "
             "(one group), NF4 (one block) and FP8 E4M3 (per tensor) can give back")
def quant_grids(path: Path, quick: bool) -> None:
    w = smollm2_matrix()
    draw_quant_grids(path, w, f"SmolLM2-135M {MATRIX} {tuple(w.shape)}: its weights (grey) and "
                              "what each format can store (lines)")


@figure("quant_error_bits.png", page="docs/quantization.md", needs="smollm2",
        what="reconstruction error against bits per parameter for every format of the package, "
             "on one SmolLM2 weight matrix")
def quant_error_bits(path: Path, quick: bool) -> None:
    w = smollm2_matrix()
    draw_error_bits(path, error_rows(w), float(w.astype(np.float64).var()),
                    f"Every format of llm_deeper.quantization on SmolLM2-135M {MATRIX} "
                    f"{tuple(w.shape)}")
