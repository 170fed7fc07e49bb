# %% [markdown]
# # Positional encodings: sinusoidal, learned and rotary (RoPE)
#
# Attention is blind to order: permute the tokens and the outputs permute the same way. A model
# learns order only if positions are written into the inputs (sinusoidal, learned) or into the
# queries and keys (RoPE).

# %%
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.numpy_engine.positions import rope_cos_sin, rope_forward, sinusoidal_table

from _common import OUT, check

# %% [markdown]
# ## Sinusoidal (Vaswani et al. 2017)
# $PE_{p,2i} = \sin(p / 10000^{2i/d})$, $PE_{p,2i+1} = \cos(p / 10000^{2i/d})$: each pair of
# features is a clock with its own period, from 2*pi up to 10000 * 2*pi positions.

# %%
pe = sinusoidal_table(128, 64, dtype=np.float64)
print("position 0:", pe[0, :6].round(3), " position 1:", pe[1, :6].round(3))
check("position 0 is sin 0 = 0 and cos 0 = 1",
      np.allclose(pe[0, 0::2], 0) and np.allclose(pe[0, 1::2], 1))
# A shift by k is a rotation of each (sin, cos) pair: PE[p + k] is a linear function of PE[p].
k, i = 5, 3
w = 1 / 10000 ** (2 * i / 64)
rot = np.array([[np.cos(k * w), -np.sin(k * w)], [np.sin(k * w), np.cos(k * w)]])
check("PE[p + k] = R(k) PE[p] for each pair",
      np.allclose(pe[10, 2 * i:2 * i + 2] @ rot, pe[15, 2 * i:2 * i + 2]))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7.5, 3.5), dpi=110)
im = ax.imshow(pe.T, aspect="auto", cmap="RdBu", origin="lower", vmin=-1, vmax=1)
fig.colorbar(im, ax=ax, label="value of PE[p, feature]")
ax.set_xlabel("position p")
ax.set_ylabel("feature (even: sin, odd: cos)")
ax.set_title("sinusoidal positional encoding (d = 64)")
fig.tight_layout()
fig.savefig(OUT / "sinusoidal.png")
print(f"figure: {OUT / 'sinusoidal.png'}")

# %% [markdown]
# ## RoPE (Su et al. 2021): rotate queries and keys by their position
# With $R_m$ the rotation of every pair $i$ of features by the angle $m\theta_i$,
# $\theta_i = 10000^{-2i/d}$: $\langle R_m q, R_n k\rangle = \langle q, R_{n-m} k\rangle$, so the
# score depends only on the distance $n - m$, not on where the pair sits. First in float64, with
# the angles computed in float64 too.

# %%
rng = np.random.default_rng(0)
d = 64
q, k = rng.normal(size=(1, d)), rng.normal(size=(1, d))
theta = 10000.0 ** (-np.arange(0, d, 2) / d)  # (d/2,) float64
positions = (0, 7, 100, 1000)


def rotated64(v, pos):
    ang = pos * theta  # float64 angles
    return rope_forward(v, np.cos(ang)[None], np.sin(ang)[None])


s64 = [float((rotated64(q, m) @ rotated64(k, m + 3).T)[0, 0]) for m in positions]
print("q.k at distance 3, from positions 0, 7, 100, 1000 (float64):", [f"{x:.15f}" for x in s64])
check("float64: RoPE scores depend only on the distance (to 1e-12)",
      max(abs(x - s64[0]) for x in s64) < 1e-12)
check("a rotation keeps the length",
      np.isclose(np.linalg.norm(rotated64(q, 42)), np.linalg.norm(q), rtol=1e-14))

# %% [markdown]
# ### The same in float32, as models run it
# The package's `rope_cos_sin` computes the angles $m\theta_i$ in float32, exactly as HF
# transformers does (so that a real model's logits agree with it to the last bit), and models
# run in float32 or less. Then the scores differ in the fifth digit: -7.70618 at position 0,
# -7.70622 at position 1000. Not a bug: a float32 keeps 24 significant bits, about 7 decimal
# digits, of every number. The angle $1000\,\theta_0 = 1000$ rad is stored to within half a unit
# in its last bit, $2^{-24} \cdot 1000 \approx 6 \cdot 10^{-5}$ rad (and $\theta_i$ itself is
# rounded as much), so the rotation is off by that much; the error grows with the position,
# while the score's size does not. A pair's dot product moves by at most
# $|q_i|\,|k_i|\,\delta$ when its angle is off by $\delta$, which gives a tolerance from the
# magnitudes of $q$ and $k$:
# $$|s_{32}(m) - s_{64}| \le 2^{-24} \sum_i |q_i|\,|k_i| \left(2(2m + 3)\,\theta_i + 8\right)$$
# (each of the two angles, $m\theta_i$ and $(m+3)\theta_i$, off by up to two roundings;
# the $+8$: a few roundings of cos, sin and the sums, each at most $2^{-24}$ of its size).

# %%
def rotated32(v, pos):
    cos, sin = rope_cos_sin(np.array([pos]), d, 10000.0, np.float32)  # float32 angles
    return rope_forward(v.astype(np.float32), cos, sin)


pair = lambda v: np.hypot(v[0, :d // 2], v[0, d // 2:])  # |v_i| of each pair (half pairing)
u = 2.0 ** -24
s32 = [float((rotated32(q, m) @ rotated32(k, m + 3).T)[0, 0]) for m in positions]
tol = [u * float(np.sum(pair(q) * pair(k) * (2 * (2 * m + 3) * theta + 8))) for m in positions]
for m, x, t in zip(positions, s32, tol):
    print(f"  position {m:>4}: float32 score {x:.7f}, |float32 - float64| {abs(x - s64[0]):.1e} "
          f"<= tolerance {t:.1e}")
check("float32: every score within the rounding tolerance of the float64 one",
      all(abs(x - s64[0]) <= t for x, t in zip(s32, tol)))
# The rounded angle is the whole story: float64 arithmetic on the float32 angles gives the
# float32 score, not the exact one.
cos, sin = rope_cos_sin(np.array([1000, 1003]), d, 10000.0, np.float64)  # float32 angles
s_angles32 = float((rope_forward(q, cos[:1], sin[:1]) @ rope_forward(k, cos[1:], sin[1:]).T)[0, 0])
print(f"position 1000, float32 angles, float64 arithmetic: {s_angles32:.7f} "
      f"(float32 {s32[3]:.7f}, exact {s64[0]:.7f})")
check("at position 1000 the float32 angles explain the gap (their score is 10x closer to "
      "float32's than float32's is to the exact one)",
      abs(s_angles32 - s32[3]) < 0.1 * abs(s32[3] - s64[0]))

# %% [markdown]
# ## Learned positions
# GPT-2 simply learns a table `wpe` (context_length x d_model) like the token embedding. It
# cannot represent positions beyond the context it was trained with; RoPE can at least compute
# them (and with scaling tricks, use them).

# %% [markdown]
# ## Exercises
# 1. From which position on is the float32 angle of pair 0 off by more than 0.001 rad? Work it
#    out from $2^{-24} m > 10^{-3}$, then add that position to `positions` and watch the
#    printed float32 error (answer: $m > 2^{24} \cdot 10^{-3} \approx 16{,}777$; the float32
#    check still passes, because its tolerance grows with $m$ too).
# 2. Change the distance from 3 to 50 in both RoPE cells. Does the float64 check still hold?
#    (It should: the scores change, but they are still equal across positions.)
# 3. The shift rule `PE[p + k] = R(k) PE[p]` was checked for pair i = 3, k = 5. Check it for
#    every pair and k = 1..20 at once (all of them hold: each pair is a clock with its own
#    angular speed $1/10000^{2i/d}$).
