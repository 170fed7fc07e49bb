# %% [markdown]
# # A backward pass by hand: LayerNorm, then the whole GPT
#
# LayerNorm (Ba et al. 2016) works on one token vector $x \in \mathbb{R}^d$ at a time:
#
# $$\mu = \frac1d \sum_j x_j, \qquad v = \frac1d \sum_j (x_j - \mu)^2, \qquad
#   \sigma = \sqrt{v + \epsilon}, \qquad \hat x_i = \frac{x_i - \mu}{\sigma}, \qquad
#   y_i = \gamma_i \hat x_i + \beta_i .$$
#
# The backward pass receives $g = \partial L / \partial y$ (one number per output) and must
# return $\partial L/\partial \gamma$, $\partial L/\partial \beta$ and $\partial L/\partial x$.
# The first two are one line each; the third has to go through $\mu$ and $v$, which depend on
# *every* $x_j$, so each input moves every output. We derive it one step at a time, and compute
# every intermediate numerically beside its formula, checked by finite differences (nudge one
# number, see how the result moves). No autograd anywhere. Then the whole model, the same way.

# %%
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine.model import GPT
from llm_deeper.numpy_engine.norms import layernorm_backward, layernorm_forward

from _common import check

np.set_printoptions(precision=4, suppress=True, linewidth=100)
rng = np.random.default_rng(0)
n, d, EPS = 3, 6, 1e-5  # 3 token vectors of 6 features
x, gamma, beta = rng.normal(size=(n, d)) * 2 + 1, rng.normal(size=d), rng.normal(size=d)
g = rng.normal(size=(n, d))  # dL/dy: we take L = sum(g * y), so dL/dy is exactly g


def fd(f, x, h=1e-6):
    """Central finite differences: J[..., j] = (f(x + h e_j) - f(x - h e_j)) / 2h for every
    entry j of x (the Jacobian of f, one column per input number)."""
    cols = []
    for j in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[j] += h
        xm[j] -= h
        cols.append((np.asarray(f(xp)) - np.asarray(f(xm))) / (2 * h))
    return np.stack(cols, -1).reshape(np.shape(f(x)) + x.shape)


def rel_err(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def loss_of(x, gamma=gamma, beta=beta):
    return (g * layernorm_forward(x, gamma, beta, EPS)[0]).sum()


# %% [markdown]
# ## Step 1: the gain and the bias
# $y_i = \gamma_i \hat x_i + \beta_i$ in every row, and $\gamma$, $\beta$ are shared by the rows,
# so their gradients sum over the rows (over batch and time in the model):
#
# $$\frac{\partial L}{\partial \beta_i} = \sum_{\text{rows}} g_i, \qquad
#   \frac{\partial L}{\partial \gamma_i} = \sum_{\text{rows}} g_i\, \hat x_i .$$

# %%
mu = x.mean(-1, keepdims=True)
var = ((x - mu) ** 2).mean(-1, keepdims=True)
sigma = np.sqrt(var + EPS)
xhat = (x - mu) / sigma
dbeta, dgamma = g.sum(0), (g * xhat).sum(0)
fd_beta = fd(lambda b: loss_of(x, beta=b), beta)
fd_gamma = fd(lambda w: loss_of(x, gamma=w), gamma)
print("dL/dbeta  by formula:", dbeta, "\n          by finite differences:", fd_beta)
print("dL/dgamma by formula:", dgamma, "\n          by finite differences:", fd_gamma)
check("dbeta = sum of g over rows (finite differences, rel. error < 1e-8)",
      rel_err(dbeta, fd_beta) < 1e-8)
check("dgamma = sum of g * xhat over rows (finite differences, rel. error < 1e-8)",
      rel_err(dgamma, fd_gamma) < 1e-8)

# %% [markdown]
# ## Step 2: into the normalised vector
# $\partial y_i / \partial \hat x_i = \gamma_i$ and $y_i$ depends on no other $\hat x_k$, so
#
# $$\hat g_i := \frac{\partial L}{\partial \hat x_i} = g_i\, \gamma_i .$$
#
# Everything below is the backward of $\hat x = (x - \mu)/\sigma$ alone: the gain is done.

# %%
ghat = g * gamma
fd_ghat = fd(lambda xh: (g * (xh * gamma + beta)).sum(), xhat)
check("dL/dxhat = g * gamma (finite differences)", rel_err(ghat, fd_ghat) < 1e-8)

# %% [markdown]
# ## Step 3: how the mean, the variance and $\sigma$ move with one input
# Nudge one input $x_j$ (one row; $\delta_{kj}$ is 1 when $k = j$, else 0):
#
# * the mean: $\mu = \frac1d \sum_k x_k$, so $\dfrac{\partial \mu}{\partial x_j} = \dfrac1d$;
# * the variance: $v = \frac1d \sum_k (x_k - \mu)^2$, so
#   $\dfrac{\partial v}{\partial x_j} = \dfrac2d \sum_k (x_k - \mu)\left(\delta_{kj} -
#   \dfrac1d\right) = \dfrac2d (x_j - \mu) - \dfrac{2}{d^2} \sum_k (x_k - \mu)
#   = \dfrac2d (x_j - \mu)$, because the deviations from the mean sum to zero: the path through
#   $\mu$ drops out of $v$'s derivative;
# * the standard deviation: $\sigma = \sqrt{v + \epsilon}$, so
#   $\dfrac{\partial \sigma}{\partial x_j} = \dfrac{1}{2\sigma} \dfrac{\partial v}{\partial x_j}
#   = \dfrac{x_j - \mu}{d\,\sigma} = \dfrac{\hat x_j}{d}$.

# %%
row = x[0]
dmu_fd = fd(lambda r: r.mean(), row)
dvar_fd = fd(lambda r: ((r - r.mean()) ** 2).mean(), row)
dsigma_fd = fd(lambda r: np.sqrt(((r - r.mean()) ** 2).mean() + EPS), row)
print("d mu / dx    ", dmu_fd, "   formula 1/d =", round(1 / d, 4))
print("d var / dx   ", dvar_fd, "\n   2 (x - mu)/d", 2 * (row - mu[0]) / d)
print("d sigma / dx ", dsigma_fd, "\n   xhat / d    ", xhat[0] / d)
check("d mu / d x_j = 1/d", np.allclose(dmu_fd, 1 / d, atol=1e-8))
check("d var / d x_j = 2 (x_j - mu) / d", rel_err(2 * (row - mu[0]) / d, dvar_fd) < 1e-7)
check("d sigma / d x_j = xhat_j / d", rel_err(xhat[0] / d, dsigma_fd) < 1e-7)

# %% [markdown]
# ## Step 4: the Jacobian of the normalisation
# $\hat x_i = (x_i - \mu)\,\sigma^{-1}$: a product, each factor depending on $x_j$. The
# product rule with step 3:
#
# $$\frac{\partial \hat x_i}{\partial x_j}
#   = \frac{\delta_{ij} - \frac1d}{\sigma} - \frac{x_i - \mu}{\sigma^2}\,\frac{\hat x_j}{d}
#   = \frac1\sigma\left(\delta_{ij} - \frac1d - \frac{\hat x_i \hat x_j}{d}\right).$$
#
# As a matrix, $J = \frac1\sigma\left(I - \frac1d \mathbf{1}\mathbf{1}^\top - \frac1d \hat x
# \hat x^\top\right)$: the identity, minus the projection on the all-ones direction (the mean
# was removed), minus the projection on $\hat x$ itself (the scale was removed), over
# $\sigma$. It is symmetric, and it sends $\mathbf 1$ and $\hat x$ to zero (both have
# $\frac1d \mathbf 1^\top \mathbf 1 = \frac1d \hat x^\top \hat x = 1$ up to $\epsilon$, and
# $\mathbf 1^\top \hat x = 0$).

# %%
J = (np.eye(d) - 1 / d - np.outer(xhat[0], xhat[0]) / d) / sigma[0, 0]
J_fd = fd(lambda r: (r - r.mean()) / np.sqrt(((r - r.mean()) ** 2).mean() + EPS), row)
print("J (formula), first 3 rows:\n", J[:3])
print(f"relative error against finite differences: {rel_err(J, J_fd):.1e}")
print(f"largest entry of J @ ones: {np.abs(J @ np.ones(d)).max():.1e}, of J @ xhat: "
      f"{np.abs(J @ xhat[0]).max():.1e}")
check("the Jacobian d xhat_i / d x_j = (delta_ij - 1/d - xhat_i xhat_j / d) / sigma",
      rel_err(J, J_fd) < 1e-7)
check("J sends the all-ones vector and xhat to (almost) zero",
      np.abs(J @ np.ones(d)).max() < 1e-10 and np.abs(J @ xhat[0]).max() < 1e-4)

# %% [markdown]
# ## Step 5: the chain, and the compact formula
# Each input reaches the loss through every $\hat x_i$:
# $\frac{\partial L}{\partial x_j} = \sum_i \hat g_i \frac{\partial \hat x_i}{\partial x_j}$,
# that is $\partial L/\partial x = J^\top \hat g$ row by row. Putting step 4 in and summing
# each term:
#
# $$\frac{\partial L}{\partial x_j}
#   = \frac1\sigma\Big(\hat g_j - \frac1d\sum_i \hat g_i - \hat x_j \frac1d \sum_i \hat g_i
#     \hat x_i\Big)
#   = \frac1\sigma\left(\hat g_j - \overline{\hat g} - \hat x_j\, \overline{\hat g \hat x}
#     \right)$$
#
# (bars are means over the $d$ features). This is the formula `norms.py` computes: no $d \times
# d$ matrix, two means and a few element-wise products per row, from what the forward pass kept
# ($\hat x$ and $1/\sigma$). The result has no component along $\mathbf 1$ or $\hat x$: moving
# every input by the same amount, or (for small $\epsilon$) scaling them all, leaves $y$ as it
# was, so the loss cannot care about those directions.

# %%
dx_chain = np.stack([Jr.T @ gr for Jr, gr in zip(
    [(np.eye(d) - 1 / d - np.outer(xr, xr) / d) / sr for xr, sr in zip(xhat, sigma[:, 0])],
    ghat)])
dx_compact = (ghat - ghat.mean(-1, keepdims=True)
              - xhat * (ghat * xhat).mean(-1, keepdims=True)) / sigma
y, cache = layernorm_forward(x, gamma, beta, EPS)
dx_pkg, dgamma_pkg, dbeta_pkg = layernorm_backward(g, cache)
dx_fd = fd(loss_of, x)
print("dL/dx (compact formula):\n", dx_compact)
print(f"against the Jacobian chain {rel_err(dx_compact, dx_chain):.1e}, the package "
      f"{rel_err(dx_compact, dx_pkg):.1e}, finite differences {rel_err(dx_compact, dx_fd):.1e}")
print("row sums of dL/dx:", dx_compact.sum(-1), " rows of dL/dx . xhat:",
      (dx_compact * xhat).sum(-1))
check("the compact formula = J^T ghat (the chain written out)", rel_err(dx_compact, dx_chain)
      < 1e-12)
check("the compact formula = norms.layernorm_backward", rel_err(dx_compact, dx_pkg) < 1e-12
      and rel_err(dgamma, dgamma_pkg) < 1e-12 and rel_err(dbeta, dbeta_pkg) < 1e-12)
check("LayerNorm backward matches finite differences", rel_err(dx_compact, dx_fd) < 1e-7)
check("dL/dx sums to zero over the features of each row",
      np.abs(dx_compact.sum(-1)).max() < 1e-10)

# %% [markdown]
# ## The whole model
# A Llama-style toy (RMSNorm, SwiGLU, RoPE, grouped-query attention): every gradient from the
# hand-written backward pass against central differences of the loss.

# %%
cfg = ModelConfig(vocab_size=7, context_length=5, n_layer=1, n_head=2, n_kv_head=1, d_model=8,
                  d_ff=12, norm="rmsnorm", activation="swiglu", position="rope")
model = GPT(cfg, seed=1, dtype=np.float64)
ids, targets = rng.integers(0, 7, (2, 5)), rng.integers(0, 7, (2, 5))
loss, grads = model.loss_and_grads(ids, targets)
eps, worst = 1e-6, 0.0
for name, p in model.params.items():
    for i in rng.choice(p.size, size=min(p.size, 8), replace=False):
        old = p.flat[i]
        p.flat[i] = old + eps
        lp = model.forward(ids, targets)[1]
        p.flat[i] = old - eps
        lm = model.forward(ids, targets)[1]
        p.flat[i] = old
        num = (lp - lm) / (2 * eps)
        worst = max(worst, abs(num - grads[name].flat[i]) / max(abs(num), 1e-3))
print(f"loss {loss:.4f}; worst relative gradient error over sampled entries: {worst:.2e}")
check("model gradients match finite differences", worst < 1e-5)

# %% [markdown]
# ## Exercises
# 1. Derive RMSNorm's backward the same way: $\hat x = x / r$ with $r = \sqrt{\overline{x^2} +
#    \epsilon}$ (no mean, no bias). Step 3 becomes $\partial r / \partial x_j = x_j / (d\,r)
#    = \hat x_j / d$. You should arrive at $\partial L/\partial x = \frac1r\left(\hat g -
#    \hat x\, \overline{\hat g \hat x}\right)$; check it with `np.allclose` against
#    `rmsnorm_backward(g, cache)` from `llm_deeper.numpy_engine.norms` (its `cache` comes from
#    `rmsnorm_forward(x, gamma, None, 1e-5)`).
# 2. Add 5 to every entry of `x` and run the LayerNorm cells again: $\hat x$, $y$ and
#    $\partial L/\partial x$ do not change (the mean is removed). Multiply `x` by 3 instead:
#    $\hat x$ stays (up to $\epsilon$) but $\partial L/\partial x$ is divided by 3, because
#    $\sigma$ is 3 times larger. Explain both from the formula of step 5.
# 3. Why is `J @ xhat` only *almost* zero (step 4 prints its largest entry)? Set `EPS = 0.0`
#    at the top and run again: it falls to rounding level (about $10^{-16}$), since
#    $\frac1d \hat x^\top \hat x = v / (v + \epsilon)$ is exactly 1 only without $\epsilon$.
