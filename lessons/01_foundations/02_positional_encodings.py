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

fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
ax.imshow(pe.T, aspect="auto", cmap="RdBu", origin="lower")
ax.set_xlabel("position")
ax.set_ylabel("feature")
ax.set_title("sinusoidal positional encoding (d = 64)")
fig.tight_layout()
fig.savefig(OUT / "sinusoidal.png")
print(f"figure: {OUT / 'sinusoidal.png'}")

# %% [markdown]
# ## RoPE (Su et al. 2021): rotate queries and keys by their position
# With $R_m$ the rotation by angles $m\theta_i$,
# $\langle R_m q, R_n k\rangle = \langle q, R_{n-m} k\rangle$: the score depends only on the
# distance n - m, not on where the pair sits.

# %%
rng = np.random.default_rng(0)
q, k = rng.normal(size=(1, 64)), rng.normal(size=(1, 64))


def rotated(v, pos):
    cos, sin = rope_cos_sin(np.array([pos]), 64, 10000.0, np.float64)
    return rope_forward(v, cos, sin)


scores = [float((rotated(q, m) @ rotated(k, m + 3).T)[0, 0]) for m in (0, 7, 100, 1000)]
print("q.k at distance 3, from positions 0, 7, 100, 1000:", np.round(scores, 6))
check("RoPE scores depend only on the distance", np.allclose(scores, scores[0]))
check("a rotation keeps the length", np.isclose(np.linalg.norm(rotated(q, 42)), np.linalg.norm(q)))

# %% [markdown]
# ## Learned positions
# GPT-2 simply learns a table `wpe` (context_length x d_model) like the token embedding. It
# cannot represent positions beyond the context it was trained with; RoPE can at least compute
# them (and with scaling tricks, use them).
