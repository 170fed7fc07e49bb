"""Figures of docs/positions.md: the sinusoidal table and RoPE's rotations, drawn from the NumPy
engine's own functions (numpy_engine/positions.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import figure, pyplot, save

D = 64  # features (sinusoidal) or head_dim (RoPE)
BASE = 10000.0  # the period base of both, as in Vaswani et al. and RoFormer


@figure("sinusoidal.png", page="docs/positions.md",
        what="the sinusoidal position table: one clock per feature pair, periods 2pi to "
             "10000 x 2pi")
def sinusoidal(path: Path, quick: bool) -> None:
    from ..numpy_engine.positions import sinusoidal_table

    plt = pyplot()
    n_pos = 64 if quick else 128
    pe = sinusoidal_table(n_pos, D, BASE, np.float64)  # (positions, features)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.2), width_ratios=[1.3, 1],
                                 layout="constrained")
    im = ax.imshow(pe.T, aspect="auto", cmap="RdBu_r", origin="lower", vmin=-1, vmax=1,
                   interpolation="nearest")
    ax.set_xlabel("position p")
    ax.set_ylabel("feature (even: sin, odd: cos)")
    ax.set_title(f"PE[p, 2i] = sin(p / {BASE:.0f}^(2i/{D})), PE[p, 2i+1] = cos(...)")
    fig.colorbar(im, ax=ax, label="value")
    p = np.arange(64)  # the first 64 positions: the fast clocks stay readable
    for i in (0, 4, 8, 16):
        period = 2 * np.pi * BASE ** (2 * i / D)
        bx.plot(p, pe[p, 2 * i], lw=1.4, marker="." if i == 0 else None,
                label=f"feature {2 * i} (i = {i}): period {period:,.1f} positions")
    bx.set_xlabel("position p")
    bx.set_ylabel("PE[p, 2i]")
    bx.set_title("four sin features: slower clocks further down the vector")
    bx.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2)
    bx.grid(alpha=0.3)
    fig.suptitle(f"Sinusoidal positional encoding, d = {D} (numpy_engine.positions."
                 "sinusoidal_table)")
    save(fig, path)


def rotated(v: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """v (head_dim,) as RoPE turns it at each of the positions: (len(positions), head_dim)."""
    from ..numpy_engine.positions import rope_cos_sin, rope_forward

    cos, sin = rope_cos_sin(positions, v.size, BASE, np.float64)
    return rope_forward(np.broadcast_to(v, (len(positions), v.size)), cos, sin)


@figure("rope_rotations.png", page="docs/positions.md",
        what="RoPE turns each feature pair by position x its frequency; q.k depends on the "
             "distance only")
def rope_rotations(path: Path, quick: bool) -> None:
    plt = pyplot()
    half = D // 2
    pos = np.arange(16 if quick else 32)
    fig = plt.figure(figsize=(17, 4.6), layout="constrained")
    axes = fig.subplots(1, 4, width_ratios=[1, 1, 1, 2.1], gridspec_kw={"wspace": 0.08})
    for ax, i in zip(axes[:3], (0, 4, 12)):
        v = np.zeros(D)
        v[i] = 1.0  # the pair (i, i + d/2) starts as (1, 0): half-split pairing
        r = rotated(v, pos)
        theta = BASE ** (-2 * i / D)
        for t in pos:
            ax.plot([0, r[t, i]], [0, r[t, i + half]], color=plt.cm.viridis(t / pos[-1]), lw=1)
        sc = ax.scatter(r[:, i], r[:, i + half], c=pos, cmap="viridis", s=14, zorder=3)
        ax.set_xlim(-1.15, 1.15)
        ax.set_ylim(-1.15, 1.15)
        ax.set_aspect("equal")
        ax.set_xlabel(f"feature {i}")
        ax.set_ylabel(f"feature {i + half}")
        ax.set_title(f"pair i = {i}: {theta:.3g} rad per position", fontsize=9)
        ax.grid(alpha=0.3)
    fig.colorbar(sc, ax=axes[:3], shrink=0.8, pad=0.02, label="position of the token")
    q = np.random.default_rng(0).normal(size=D)  # the key is the same vector: k = q
    dist = np.arange(0, 64 if quick else 200)
    ax = axes[3]
    for m, style in ((0, "-"), (100, "--"), (1000, ":")):
        score = rotated(q, m + dist) @ rotated(q, np.array([m]))[0]
        ax.plot(dist, score, style, lw=1.6, label=f"query at position {m}, key at {m} + distance")
    ax.set_xlabel("distance n - m between the key and the query (positions)")
    ax.set_ylabel("score  (R_m q) . (R_n k)")
    ax.set_title(f"k = q (|q|^2 = {q @ q:.0f}): largest at distance 0, then falling off;\n"
                 "the same from every start position: the three curves coincide", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(f"RoPE, head_dim {D}, base {BASE:.0f}: a vector turned by position in three of "
                 f"its {half} planes (left), and one (q, k) pair's score (right)")
    save(fig, path)
