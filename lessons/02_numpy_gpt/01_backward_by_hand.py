# %% [markdown]
# # A backward pass by hand: LayerNorm, then the whole GPT
#
# For $\hat x = (x - \mu)/\sigma$, $y = \hat x\, w + b$, the chain rule through the mean and
# the variance gives
#
# $$\frac{\partial L}{\partial x} = \frac{1}{\sigma}\left(\hat g - \overline{\hat g}
#   - \hat x\, \overline{\hat g \hat x}\right), \qquad \hat g = \frac{\partial L}{\partial y} w$$
#
# (bars are means over the feature axis). We check it, and then the whole model, by finite
# differences: nudge one number, see how the loss moves. No autograd anywhere.

# %%
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine.model import GPT
from llm_deeper.numpy_engine.norms import layernorm_backward, layernorm_forward

from _common import check

rng = np.random.default_rng(0)
x, w, b = rng.normal(size=(3, 6)), rng.normal(size=6), rng.normal(size=6)
g = rng.normal(size=(3, 6))  # dL/dy for L = sum(g * y)

y, cache = layernorm_forward(x, w, b, 1e-5)
mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
xhat = (x - mu) / np.sqrt(var + 1e-5)
ghat = g * w
dx_formula = (ghat - ghat.mean(-1, keepdims=True) - xhat * (ghat * xhat).mean(-1, keepdims=True)) \
    / np.sqrt(var + 1e-5)
dx, dw, db = layernorm_backward(g, cache)
check("the formula above is what norms.py computes", np.allclose(dx, dx_formula))

eps = 1e-6
num = np.zeros_like(x)
for i in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[i] += eps
    xm[i] -= eps
    num[i] = ((g * layernorm_forward(xp, w, b, 1e-5)[0]).sum()
              - (g * layernorm_forward(xm, w, b, 1e-5)[0]).sum()) / (2 * eps)
err = np.abs(num - dx).max() / np.abs(num).max()
print(f"LayerNorm dx vs finite differences: relative error {err:.2e}")
check("LayerNorm backward matches finite differences", err < 1e-7)

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
worst = 0.0
for name, p in model.params.items():
    for i in rng.choice(p.size, size=min(p.size, 8), replace=False):
        old = p.flat[i]
        p.flat[i] = old + eps
        lp = model.forward(ids, targets)[1]
        p.flat[i] = old - eps
        lm = model.forward(ids, targets)[1]
        p.flat[i] = old
        fd = (lp - lm) / (2 * eps)
        worst = max(worst, abs(fd - grads[name].flat[i]) / max(abs(fd), 1e-3))
print(f"loss {loss:.4f}; worst relative gradient error over sampled entries: {worst:.2e}")
check("model gradients match finite differences", worst < 1e-5)
