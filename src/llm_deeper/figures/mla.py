"""Multi-head latent attention's data flow (torch_engine/mla.py, numpy_engine/mla.py): which
tensors are computed, their shapes at DeepSeek-V2-Lite's sizes, which two are cached, and what
absorbed decoding never builds."""

from __future__ import annotations

from pathlib import Path

from . import figure, pyplot, save

# DeepSeek-V2-Lite's attention (figures/kv.py has its whole config)
SIZES = dict(d=2048, H=16, d_c=512, d_R=64, d_n=128, d_v=128)

COLOURS = {"act": "#eeeeee", "weight": "#c9d6ea", "cache": "#f4b183", "op": "#d9ead3",
           "skip": "#ffffff"}


def _box(ax, x, y, text, kind, w=1.9, h=0.62, fontsize=8.5):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04",
                                facecolor=COLOURS[kind], edgecolor="black",
                                linestyle="--" if kind == "skip" else "-", lw=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)
    return (x, y, w, h)


def _arrow(ax, a, b, text="", colour="black"):
    """From the right edge of box a to the left edge of box b."""
    (xa, ya, wa, _), (xb, yb, wb, _) = a, b
    ax.annotate("", xy=(xb - wb / 2, yb), xytext=(xa + wa / 2, ya),
                arrowprops=dict(arrowstyle="-|>", color=colour, lw=1, shrinkA=2, shrinkB=2))
    if text:
        ax.text((xa + wa / 2 + xb - wb / 2) / 2, (ya + yb) / 2 + 0.13, text, ha="center",
                fontsize=7.5, color=colour)


def draw_dataflow(path: Path) -> Path:
    plt = pyplot()
    s = SIZES
    fig, ax = plt.subplots(figsize=(15, 7.2))
    x = _box(ax, 0.9, 4.0, f"x\n(T, d={s['d']})", "act", w=1.3)
    # queries
    wq = _box(ax, 3.0, 6.3, f"W_Q\nd -> H (d_n + d_R)\n{s['d']} x {s['H'] * 192:,}", "weight",
              h=0.8)
    qc = _box(ax, 5.6, 6.9, f"q_C\n(H={s['H']}, T, d_n={s['d_n']})", "act", w=2.1)
    qr0 = _box(ax, 5.6, 5.8, f"q_R before RoPE\n(H, T, d_R={s['d_R']})", "act", w=2.1)
    qr = _box(ax, 8.2, 5.8, "q_R\n(H, T, d_R)", "act", w=1.6)
    # keys and values: one down-projection
    wdkv = _box(ax, 3.0, 2.7, f"W_DKV\nd -> d_c + d_R\n{s['d']} x {s['d_c'] + s['d_R']}",
                "weight", h=0.8)
    craw = _box(ax, 5.6, 2.0, f"c raw\n(T, d_c={s['d_c']})", "act", w=2.1)
    kr0 = _box(ax, 5.6, 3.5, "k_R before RoPE\n(T, d_R)", "act", w=2.1)
    c = _box(ax, 8.4, 2.0, "c_KV  CACHED\n(T, d_c)", "cache", w=1.8)
    kr = _box(ax, 8.4, 3.5, "k_R  CACHED\n(T, d_R), all heads", "cache", w=1.8)
    # up-projections (naive path)
    kc = _box(ax, 11.0, 2.6, "k_C = c W_UK\n(H, S, d_n)", "skip", w=1.9)
    v = _box(ax, 11.0, 1.4, "v = c W_UV\n(H, S, d_v)", "skip", w=1.9)
    sc = _box(ax, 13.4, 5.0, "scores (H, T, S)\n(q_C . k_C + q_R . k_R)\n/ sqrt(d_n + d_R)",
              "op", w=2.3, h=0.95)
    o = _box(ax, 13.4, 1.4, "o = softmax(scores) v\n(H, T, d_v)", "op", w=2.3, h=0.8)
    y = _box(ax, 13.4, -0.2, f"y = o W_O\n(T, d={s['d']})", "act", w=2.3)
    for a, b, t in ((x, wq, ""), (wq, qc, "split"), (wq, qr0, ""), (qr0, qr, "RoPE"),
                    (x, wdkv, ""), (wdkv, craw, "split"), (wdkv, kr0, ""), (craw, c, "RMSNorm"),
                    (kr0, kr, "RoPE"), (c, kc, "W_UK per head"), (c, v, "W_UV per head"),
                    (qc, sc, ""), (qr, sc, ""), (kc, sc, ""), (v, o, "")):
        _arrow(ax, a, b, t)
    ax.annotate("", xy=(sc[0] - 0.6, sc[1] - 0.48), xytext=(kr[0] + 0.9, kr[1] + 0.2),
                arrowprops=dict(arrowstyle="-|>", lw=1, shrinkA=2, shrinkB=2))
    ax.annotate("", xy=(o[0], o[1] + 0.4), xytext=(sc[0], sc[1] - 0.48),
                arrowprops=dict(arrowstyle="-|>", lw=1))
    ax.annotate("", xy=(y[0], y[1] + 0.31), xytext=(o[0], o[1] - 0.4),
                arrowprops=dict(arrowstyle="-|>", lw=1))
    ax.text(y[0] + 0.1, 0.55, "W_O", fontsize=7.5)
    per_token, mha = s["d_c"] + s["d_R"], s["H"] * (s["d_n"] + s["d_R"] + s["d_v"])
    caption = [
        "Absorbed decoding: q_C . (W_UK c) = (W_UK^T q_C) . c, so each head's query is mapped into "
        "the latent space once, (H, T, d_c), and scored against the cached c directly;",
        "softmax(scores) v = W_UV (softmax(scores) c), so the values' up-projection comes after "
        "attending over c. The dashed boxes (k_C and v of every head and past token)",
        "are never built: attention runs as one shared key/value head of d_c + d_R numbers. RoPE "
        "stays on its own small key k_R: a rotation between W_UK and c would depend",
        "on the key's position and block the absorption. Cached per token and layer: "
        f"d_c + d_R = {per_token} numbers, against H (d_n + d_R + d_v) = {mha:,} for MHA with "
        f"the same heads ({mha / per_token:.1f}x)."]
    ax.text(0.1, -0.75, "\n".join(caption), fontsize=8.5, va="top")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=COLOURS[k], edgecolor="black",
                             linestyle="--" if k == "skip" else "-") for k in COLOURS]
    ax.legend(handles, ["activation", "weight", "KV cache", "attention",
                        "not built when decoding\n(absorbed)"], loc="upper left", fontsize=8,
              frameon=False, bbox_to_anchor=(0.0, 0.93))
    ax.set(xlim=(0, 14.8), ylim=(-2.1, 7.6),
           title="Multi-head latent attention (DeepSeek-V2), shapes at DeepSeek-V2-Lite's sizes: "
                 "T new tokens, S cached")
    ax.axis("off")
    fig.tight_layout()
    return save(fig, path)


@figure("mla_dataflow.png", page="docs/torch-engine.md",
        what="MLA's data flow with shapes: the latent c_KV and the RoPE key cached, W_UK and W_UV "
             "absorbed when decoding")
def mla_dataflow(path: Path, quick: bool) -> None:
    draw_dataflow(path)
