# %% [markdown]
# # The math a transformer needs: vectors, matrices, softmax, cross-entropy, gradients
#
# Five ideas carry the whole course: the **dot product** measures how well two vectors agree;
# a **matrix** maps vectors to vectors; **softmax** turns scores into probabilities;
# **cross-entropy** scores a probability against the right answer; and **gradient descent**
# follows derivatives, obtained with the **chain rule**, downhill. Every formula is checked
# numerically: derivatives against finite differences, the loss against the package's.

# %%
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.numpy_engine.loss import cross_entropy_backward, cross_entropy_forward

from _common import check

np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Vectors and the dot product
# $a \cdot b = \sum_i a_i b_i = \lVert a\rVert\,\lVert b\rVert \cos\theta$, with $\theta$ the
# angle between them. Dividing by the lengths leaves the **cosine similarity**
# $\cos\theta \in [-1, 1]$: 1 for the same direction, 0 for perpendicular, -1 for opposite.
# Attention scores are dot products of queries and keys; embeddings of related words point in
# similar directions.

# %%
a, b = np.array([1.0, 2.0, 2.0]), np.array([2.0, 0.0, 1.0])
dot = a @ b
print(f"a . b = {dot}, |a| = {np.linalg.norm(a)}, |b| = {np.linalg.norm(b):.4f}")
check("a @ b = the sum of products", dot == sum(x * y for x, y in zip(a, b)))
check("|a| = sqrt(a . a)", np.isclose(np.linalg.norm(a), np.sqrt(a @ a)))


def cosine(u, v):
    return u @ v / (np.linalg.norm(u) * np.linalg.norm(v))


alpha, beta = 1.1, 0.3  # two unit vectors in the plane at these angles
u, v = np.array([np.cos(alpha), np.sin(alpha)]), np.array([np.cos(beta), np.sin(beta)])
print(f"cosine of vectors at angles {alpha} and {beta}: {cosine(u, v):.6f}")
check("cosine similarity = cos(angle between them)",
      np.isclose(cosine(u, v), np.cos(alpha - beta)))
check("the cosine ignores length: cos(3a, b) = cos(a, b)",
      np.isclose(cosine(3 * a, b), cosine(a, b)))
check("perpendicular: 0; opposite: -1",
      np.isclose(cosine(np.array([1.0, 0]), np.array([0, 2.0])), 0)
      and np.isclose(cosine(a, -a), -1))

# %% [markdown]
# ## 2. Matrices are maps
# A matrix $W$ of shape `(out, in)` maps a vector of `in` numbers to one of `out` numbers,
# $y = W x$, and the map is **linear**: $W(sx + tz) = s\,Wx + t\,Wz$. Every projection in a
# transformer (queries, keys, values, the MLP) is such a map. A rotation of the plane by
# $\phi$ is the matrix below; doing two rotations is multiplying their matrices (RoPE rotates
# pairs of query and key features this way).

# %%
def rotation(phi):
    return np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])


R = rotation(0.5)
print("rotation by 0.5 rad:\n", R)
check("R(0.5) turns the vector at angle 0.3 into the one at 0.8",
      np.allclose(R @ v, [np.cos(0.8), np.sin(0.8)]))
check("R(0.5) R(0.2) = R(0.7): composing maps multiplies matrices",
      np.allclose(rotation(0.5) @ rotation(0.2), rotation(0.7)))
check("a rotation keeps lengths and dot products", np.isclose((R @ u) @ (R @ v), u @ v))
W = rng.normal(size=(4, 3))
x, z = rng.normal(size=3), rng.normal(size=3)
check("x -> W x is linear", np.allclose(W @ (2 * x - 3 * z), 2 * (W @ x) - 3 * (W @ z)))

# %% [markdown]
# ## 3. Softmax
# $p_i = e^{z_i} / \sum_j e^{z_j}$ turns any scores $z$ (*logits*) into positive numbers that sum
# to one. Adding a constant to every score changes nothing, so we subtract the largest before
# exponentiating: $e^{1000}$ overflows, $e^{0}$ does not. Dividing the scores by a temperature
# $\tau$ sharpens ($\tau < 1$) or flattens ($\tau > 1$) the distribution.

# %%
def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


z = np.array([2.0, 1.0, 0.1, -1.0])
p = softmax(z)
print(f"z = {z} -> softmax {p}, sum {p.sum():.6f}")
# an independent computation: the package's cross-entropy is -log softmax, computed its own way
from_loss = np.exp([-cross_entropy_forward(z[None, None], np.array([[i]]))[0] for i in range(4)])
check("softmax = exp(-cross-entropy) of numpy_engine.loss, entry by entry",
      np.allclose(p, from_loss, rtol=1e-12))
check("softmax(z + 1000) = softmax(z)", np.allclose(softmax(z + 1000), p))
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.exp(z + 1000) / np.exp(z + 1000).sum()
print(f"without subtracting the max, z + 1000 gives {naive}")
check("the naive formula overflows to nan", np.isnan(naive).all())
for tau in (0.5, 1.0, 2.0):
    print(f"  temperature {tau}: {softmax(z / tau)}")
check("a lower temperature puts more mass on the top score",
      softmax(z / 0.5)[0] > p[0] > softmax(z / 2.0)[0])

# %% [markdown]
# ### Its Jacobian
# How does $p_i$ move when $z_j$ moves? $\partial p_i/\partial z_j = p_i(\delta_{ij} - p_j)$, i.e.
# the matrix $J = \mathrm{diag}(p) - p\,p^\top$. We check it column by column with central
# finite differences, $(p(z + \epsilon e_j) - p(z - \epsilon e_j)) / 2\epsilon$.

# %%
J = np.diag(p) - np.outer(p, p)
eps = 1e-6
J_fd = np.stack([(softmax(z + eps * e) - softmax(z - eps * e)) / (2 * eps)
                 for e in np.eye(len(z))], axis=1)
print("J = diag(p) - p p^T:\n", J)
print(f"largest difference from finite differences: {np.abs(J - J_fd).max():.1e}")
check("softmax Jacobian = diag(p) - p p^T (finite differences)", np.allclose(J, J_fd, atol=1e-9))
check("each column of the finite-difference Jacobian sums to 0 (moving a logit moves no "
      "probability mass in or out: the probabilities still sum to one)",
      np.allclose(J_fd.sum(0), 0, atol=1e-9))

# %% [markdown]
# ## 4. Cross-entropy
# A language model outputs logits over the vocabulary at every position; the loss is minus the
# log-probability it gave the right next token, averaged over positions:
#
# $$L = -\frac1N \sum_n \log p_{n, y_n}
#     = \frac1N \sum_n \left(\log\sum_j e^{z_{n,j}} - z_{n,y_n}\right).$$
#
# A model that knows nothing (equal logits) scores $\ln V$. Its gradient is simple:
# $\partial L / \partial z_n = (p_n - \mathrm{onehot}(y_n)) / N$.

# %%
V = 6
logits = rng.normal(size=(2, 3, V))  # (B, T, V)
targets = rng.integers(0, V, size=(2, 3))
probs = softmax(logits)
ours = -np.mean(np.log(np.take_along_axis(probs, targets[..., None], -1)))
loss, cache = cross_entropy_forward(logits, targets)
print(f"cross-entropy by hand {ours:.6f}, numpy_engine.loss {loss:.6f}")
check("cross-entropy by hand = numpy_engine.loss.cross_entropy_forward", np.isclose(ours, loss))
check("equal logits score ln V",
      np.isclose(cross_entropy_forward(np.zeros((1, 3, V)), targets[:1])[0], np.log(V)))
grad = (probs - np.eye(V)[targets]) / targets.size


def ce(lg):
    return cross_entropy_forward(lg, targets)[0]


grad_fd = np.zeros_like(logits)
for i in np.ndindex(logits.shape):
    step = np.zeros_like(logits)
    step[i] = eps
    grad_fd[i] = (ce(logits + step) - ce(logits - step)) / (2 * eps)
check("dL/dz = (p - onehot) / N (finite differences)", np.allclose(grad, grad_fd, atol=1e-9))
check("... and = numpy_engine.loss.cross_entropy_backward",
      np.allclose(grad, cross_entropy_backward(cache)))

# %% [markdown]
# ## 5. Gradient descent
# To minimise a loss $L(\theta)$, step against its gradient: $\theta \leftarrow \theta - \eta
# \nabla L$, with a small learning rate $\eta$. First a line $y = w x + c$ fit to noisy points
# by mean squared error, $L = \frac1n\sum (w x_i + c - y_i)^2$, whose gradient is
# $\partial L/\partial w = \frac2n \sum r_i x_i$, $\partial L/\partial c = \frac2n \sum r_i$
# ($r$ the residuals). Least squares also has an exact answer (`np.linalg.lstsq`): gradient
# descent should walk to it.

# %%
n = 50
xs = rng.uniform(-1, 1, n)
ys = 3.0 * xs - 0.5 + 0.1 * rng.normal(size=n)
w, c, lr = 0.0, 0.0, 0.3
for step in range(300):
    r = w * xs + c - ys
    if step % 100 == 0:
        print(f"step {step:3d}: loss {np.mean(r ** 2):.4f}, w {w:.3f}, c {c:.3f}")
    w, c = w - lr * 2 * np.mean(r * xs), c - lr * 2 * np.mean(r)
exact = np.linalg.lstsq(np.stack([xs, np.ones(n)], 1), ys, rcond=None)[0]
print(f"gradient descent: w {w:.5f}, c {c:.5f}; least squares: w {exact[0]:.5f}, c {exact[1]:.5f}")
check("gradient descent reaches the least-squares line", np.allclose([w, c], exact, atol=1e-4))

# %% [markdown]
# The same with softmax and cross-entropy: **softmax regression** classifies 2-D points from
# three clusters with logits $z = X W^\top + b$. By the gradient of section 4 and the chain
# rule through $z = XW^\top + b$: $\nabla_W L = (P - Y)^\top X / n$ and $\nabla_b L$ the column
# means of $P - Y$. A language model's last layer is this, with the vocabulary as the classes.

# %%
centers = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
labels = rng.integers(0, 3, 300)
X = centers[labels] + 0.9 * rng.normal(size=(300, 2))  # the clusters overlap a little
Wc, bc = np.zeros((3, 2)), np.zeros(3)
for step in range(201):
    Z = X @ Wc.T + bc  # (n, 3) logits
    P = softmax(Z)
    L = cross_entropy_forward(Z, labels)[0]
    if step % 50 == 0:
        print(f"step {step:3d}: loss {L:.4f}, accuracy {np.mean(P.argmax(1) == labels):.3f}")
    G = (P - np.eye(3)[labels]) / len(X)
    Wc, bc = Wc - 1.0 * G.T @ X, bc - 1.0 * G.sum(0)
print(f"ln 3 = {np.log(3):.4f} at the start")
check("softmax regression: the loss fell from ln 3 to below 0.3", L < 0.3)
check("and it classifies more than 90 % of the points", np.mean(P.argmax(1) == labels) > 0.9)

# %% [markdown]
# ## 6. The chain rule
# For $L = f(g(x))$, $\frac{dL}{dx} = f'(g(x))\, g'(x)$: multiply the local derivatives along
# the path. A 2-step vector function: $h = \tanh(Wx)$, $L = \sum_i h_i^2$. Backward, one step at
# a time: $\partial L/\partial h = 2h$; through tanh, $\partial L/\partial a = 2h \odot (1 - h^2)$
# with $a = Wx$; through the matrix, $\partial L/\partial x = W^\top\, \partial L/\partial a$
# and $\partial L/\partial W = (\partial L/\partial a)\, x^\top$. Backpropagation is this, layer
# after layer (lessons/02_numpy_gpt/01_backward_by_hand.py does the whole GPT).

# %%
W = rng.normal(size=(4, 3))
x = rng.normal(size=3)


def f(W, x):
    return np.sum(np.tanh(W @ x) ** 2)


h = np.tanh(W @ x)
dL_dh = 2 * h
dL_da = dL_dh * (1 - h ** 2)
dL_dx = W.T @ dL_da
dL_dW = np.outer(dL_da, x)
dx_fd = np.array([(f(W, x + eps * e) - f(W, x - eps * e)) / (2 * eps) for e in np.eye(3)])
dW_fd = np.zeros_like(W)
for i in np.ndindex(W.shape):
    E = np.zeros_like(W)
    E[i] = eps
    dW_fd[i] = (f(W + E, x) - f(W - E, x)) / (2 * eps)
print(f"dL/dx by the chain rule {dL_dx}\n      by finite differences {dx_fd}")
check("chain rule dL/dx = finite differences", np.allclose(dL_dx, dx_fd, atol=1e-8))
check("chain rule dL/dW = finite differences", np.allclose(dL_dW, dW_fd, atol=1e-8))

# %% [markdown]
# ## Exercises
# 1. Compute softmax(z / 0.5) for z = [2, 1, 0.1, -1] by hand (divide, exponentiate, normalise)
#    and compare with the temperature loop's printout (answer: [0.862, 0.117, 0.019, 0.002]).
# 2. Rerun the line fit of section 5 with `lr = 1.1`. What happens, and why? (The loss grows
#    without bound and the check fails: along $c$ the loss is $(c - c^*)^2$ times 1, whose
#    second derivative is 2, and gradient descent diverges once $\eta > 2/2 = 1$.)
# 3. Cross-entropy of equal logits over V = 50 classes: predict it, then check it with
#    `cross_entropy_forward(np.zeros((1, 1, 50)), np.array([[7]]))` (answer: ln 50 = 3.912).
