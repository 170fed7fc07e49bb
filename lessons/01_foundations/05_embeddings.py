# %% [markdown]
# # Token embeddings: SmolLM2's first (and last) matrix
#
# A model cannot multiply a token id. Its first layer is a table $W_{te}$ of $V$ rows, one
# vector of $d$ numbers per token of the vocabulary; token $i$ enters the network as row $i$:
#
# $$x = W_{te}[i] = e_i^\top W_{te}, \qquad W_{te} \in \mathbb{R}^{V \times d},$$
#
# where $e_i$ is the one-hot vector of $i$. Nobody writes the rows: they start random and are
# trained with the rest of the model, so tokens used alike end up with similar vectors. We
# measure "similar" with the cosine $\cos(a, b) = a \cdot b / (\lVert a\rVert\,\lVert b\rVert)$.
# SmolLM2 also *ties* the table to its output head (Press & Wolf 2017): the logit of token $j$
# is the final hidden state dotted with the same row $j$. Here, on SmolLM2-135M-Instruct:
# lookups, the tied head, nearest neighbours, the analogy test, the norms, and a 2-D map.
# docs/embeddings.md has the figures of a full run and the sources. Quick mode (what the tests
# run) prints 5 rows of neighbours instead of 7 and leaves out the comparison with
# scikit-learn's PCA; every other check runs in both modes.

# %%
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.pretrained import models

from _common import OUT, QUICK, check

if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")

from llm_deeper.figures.smollm2 import EMBEDDING_GROUPS, draw_embeddings
from llm_deeper.pretrained.weights import load_gguf
from llm_deeper.torch_engine.context import StepContext
from llm_deeper.torch_engine.model import TorchGPT, forward

pre = load_gguf(models.gguf_file("smollm2-135m"))
cfg, tok = pre.config, pre.tokenizer
model = TorchGPT(cfg, pre.params).eval()
p = model.param_dict()
W = p["wte"].detach()  # (V, d) = (49152, 576)
V, d = W.shape
n_all = sum(t.numel() for t in model.parameters())
print(f"wte: {V:,} x {d} = {V * d:,} numbers, {V * d / n_all:.0%} of SmolLM2's {n_all:,}")
check("the table has one row per vocabulary entry, d_model wide", (V, d) == (cfg.vocab_size,
                                                                        cfg.d_model))

# %% [markdown]
# ## 1. A lookup is a one-hot row times the matrix
# Indexing row $i$ and multiplying the one-hot $e_i$ by $W_{te}$ give the same vector; the
# index is just the cheap way (no $V \times d$ multiply-adds). Note how text becomes ids first:
# SmolLM2's tokenizer splits digits off, so " 7" is two tokens (a space, then "7").

# %%
ids = tok.encode(" king")
onehot = F.one_hot(torch.tensor(ids), V).float()  # (1, V)
print(f"' king' -> ids {ids};  ' 7' -> {tok.encode(' 7')} = "
      f"{[tok.decode([i]) for i in tok.encode(' 7')]}")
check("W[id] = one_hot(id) @ W, bit for bit", torch.equal(W[ids], onehot @ W))
check("' king' is one token, ' 7' two", len(ids) == 1 and len(tok.encode(" 7")) == 2)

# %% [markdown]
# ## 2. The tied head: logits = h W_te^T
# SmolLM2 has no separate output matrix: after the last block and the final RMSNorm, the
# hidden state $h$ of each position is scored against every row of the same table,
# $z = h\,W_{te}^\top$. We catch the last block's output from the engine through its step
# context (`select` sees it just before the final norm), normalize it by hand and multiply.

# %%
@dataclass
class Grab(StepContext):
    """The plain step context, keeping the residual stream that leaves the last block."""

    last: dict = field(default_factory=dict)

    def select(self, x):
        self.last["x"] = x
        return x


prompt = "The capital of France is"
pids = torch.tensor([tok.encode(prompt)])
ctx = Grab()
with torch.inference_mode():
    logits, _ = forward(p, cfg, pids, ctx=ctx)  # (1, T, V), the engine
    x = ctx.last["x"]  # (1, T, d)
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * p["norm_f.weight"]
    by_hand = h @ W.T  # (1, T, V)
err = float((by_hand - logits).abs().max())
paris = tok.encode(" Paris")[0]
print(f"{prompt!r}: top token {tok.decode([int(logits[0, -1].argmax())])!r}, "
      f"|h W^T - engine| max {err:.1e}")
check("the model has no lm_head of its own (tied)", cfg.tie_embeddings and "lm_head" not in p)
check("logits = final hidden state @ wte^T, as the engine computes", err < 1e-4)

# %% [markdown]
# ## 3. Cosine similarity and nearest neighbours
# The cosine ignores length and keeps direction: 1 for the same direction, 0 for orthogonal.
# Computed by hand, then by torch. The neighbours of a word are the rows with the largest
# cosine to its row. Many are the same word spelled otherwise (" King", "King"): each spelling
# is its own token, and training taught the model they mean the same; the table skips those.

# %%
norms = W.norm(dim=1)  # (V,)
Wn = W / norms[:, None]  # unit rows: a cosine is now a dot product


def tid(word: str) -> int:
    (i,) = tok.encode(word)  # one token, or this fails
    return i


a, b = W[tid(" king")], W[tid(" queen")]
cos_hand = float(a @ b / (a.norm() * b.norm()))
check(f"cos(' king', ' queen') = {cos_hand:.4f} by hand = torch's cosine_similarity",
      abs(cos_hand - float(F.cosine_similarity(a, b, dim=0))) < 1e-6)


def neighbours(vec, k=5, skip=()):
    """The k tokens whose rows have the largest cosine with vec, skipping ids and respellings."""
    sims = Wn @ (vec / vec.norm())
    words = {tok.decode([i]).strip().lower() for i in skip}
    out = []
    for i in sims.argsort(descending=True).tolist():
        if i not in skip and tok.decode([i]).strip().lower() not in words:
            out.append((tok.decode([i]), float(sims[i])))
        if len(out) == k:
            return out


QUERIES = [" king", " Paris", " Monday", " happy", "7", " seven", " red"]
if QUICK:
    QUERIES = QUERIES[:5]
print(f"{'word':>9} | nearest 5 by cosine (other spellings of the word skipped)")
near = {}
for w in QUERIES:
    near[w] = neighbours(W[tid(w)], 5, skip={tid(w)})
    print(f"{w!r:>9} | " + ", ".join(f"{n!r} {s:.2f}" for n, s in near[w]))
DAYS = {" Tuesday", " Wednesday", " Thursday", " Friday", " Saturday", " Sunday"}
check("the 5 nearest to ' Monday' are days of the week", {n for n, _ in near[" Monday"]} <= DAYS)
check("the 5 nearest to '7' are digits", all(n.isdigit() for n, _ in near["7"]))

# %% [markdown]
# ## 4. The analogy test: king - man + woman
# Mikolov et al. (2013) found that word2vec's vectors answer "man is to king as woman is to ?"
# by arithmetic: the nearest word to $w_{king} - w_{man} + w_{woman}$, the three input words
# excluded, is "queen". Does a 2024 LM's input table do it? The rank of the expected answer,
# for the offset and (a baseline) for $b$ alone: if $b$'s own neighbours already contain the
# answer, the offset deserves less credit (Linzen 2016).

# %%
ANALOGIES = [(" man", " king", " woman", " queen"), (" France", " Paris", " Italy", " Rome"),
             (" Germany", " Berlin", " France", " Paris"),
             (" walk", " walking", " swim", " swimming"),
             (" big", " bigger", " small", " smaller"), (" boy", " brother", " girl", " sister")]


def rank(vec, target, skip):
    sims = Wn @ (vec / vec.norm())
    sims[list(skip)] = -2.0
    return int((sims > sims[target]).sum()) + 1, tok.decode([int(sims.argmax())])


print(f"{'a : b :: c : ?':<36} {'expected':>10} {'rank':>5} {'top':>11} {'rank near b':>12}")
ranks = {}
for wa, wb, wc, wd in ANALOGIES:
    ia, ib, ic, idd = map(tid, (wa, wb, wc, wd))
    r, top = rank(W[ib] - W[ia] + W[ic], idd, {ia, ib, ic})
    r_b, _ = rank(W[ib], idd, {ib})
    ranks[wd] = r
    print(f"{wa + ' :' + wb + ' ::' + wc + ' : ?':<36} {wd!r:>10} {r:>5} {top!r:>11} {r_b:>12}")
with_inputs = neighbours(W[tid(" king")] - W[tid(" man")] + W[tid(" woman")], 2)
print("king - man + woman, inputs not excluded:", with_inputs)
check("king - man + woman: ' queen' is nearest (inputs excluded)", ranks[" queen"] == 1)
check("...and even with the inputs left in", with_inputs[0][0] == " queen")
check("the test is not always right: ' Rome' is not in the top 10 for Paris - France + Italy",
      ranks[" Rome"] > 10)

# %% [markdown]
# ## 5. Norms, and a shared direction
# The lengths of the rows are not equal. Which tokens are shortest and longest? The ids help:
# a BPE vocabulary lists its merges in the order they were learned, frequent pieces first, so
# the id is a rough rank of how common a token is (docs/tokenization.md). And the rows are
# far from spread in all directions: two random tokens have a mean cosine well above 0, because
# every row shares a common component (the mean row). Subtracting it (centering) is what PCA
# does next, and it makes cosines between unrelated words smaller.

# %%
check("norms = sqrt(sum of squares), by hand", torch.allclose(norms, (W * W).sum(1).sqrt()))
q = torch.quantile(norms, torch.tensor([0.0, 0.01, 0.5, 0.99, 1.0])).tolist()
order = norms.argsort()
print("norms: min {:.2f}, 1% {:.2f}, median {:.2f}, 99% {:.2f}, max {:.2f}".format(*q))
print("shortest:", [tok.decode([i]) for i in order[:8].tolist()])
print("longest: ", [tok.decode([i]) for i in order[-8:].tolist()])
# BPE ids follow the merge order after the specials and single bytes: late merges are rarer
early, late = float(norms[:5000].mean()), float(norms[-5000:].mean())
r = float(np.corrcoef(norms.numpy(), np.arange(V))[0, 1])
print(f"mean norm of ids < 5,000: {early:.2f}; of the last 5,000: {late:.2f} (correlation of "
      f"norm and id {r:.2f})")
check("later (rarer) merges have longer rows on average", late > early + 0.3 and r > 0.2)
g = torch.Generator().manual_seed(0)
i, j = torch.randint(0, V, (2, 20000), generator=g)
mean_row = W.mean(0)
Wc = W - mean_row
Wcn = Wc / Wc.norm(dim=1, keepdim=True)
raw_cos, centred_cos = float((Wn[i] * Wn[j]).sum(1).mean()), float((Wcn[i] * Wcn[j]).sum(1).mean())
print(f"mean cosine of 20,000 random pairs: {raw_cos:.2f} raw, {centred_cos:.2f} centred; "
      f"|mean row| = {float(mean_row.norm()):.2f} against a median norm of {q[2]:.2f}")
check("random pairs point the same way (mean cosine > 0.3)", raw_cos > 0.3)
check("centring removes most of it (|mean cosine| < 0.05)", abs(centred_cos) < 0.05)

# %% [markdown]
# ## 6. Groups of words, and a 2-D map by PCA
# Five groups of single-token words. First the number the picture will suggest, measured in 576
# dimensions: the mean cosine between two words of the same group against the mean cosine to
# words of the other groups. Then principal component analysis (PCA): centre the rows
# ($X_c = X - \bar{x}$), take the SVD $X_c = U S V^\top$; the rows of $V^\top$ are the
# directions of largest variance, $S^2/(n-1)$ the variances along them (the eigenvalues of the
# covariance $X_c^\top X_c / (n-1)$), and $X_c V_{:, :2}$ the 2-D coordinates.

# %%
GROUPS = EMBEDDING_GROUPS  # llm_deeper/figures/smollm2.py: the docs' figure uses them too
words = [(" " + w, gi) for gi, ws in enumerate(GROUPS.values()) for w in ws.split()]
check(f"all {len(words)} words are single tokens", all(len(tok.encode(w)) == 1 for w, _ in words))
X = W[[tid(w) for w, _ in words]].double().numpy()  # (n, d)
group = np.array([gi for _, gi in words])
Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
C = Xn @ Xn.T
print(f"{'group':<14} {'words':>5} {'cos within':>10} {'cos to others':>13}")
gaps = []
for gi, name in enumerate(GROUPS):
    m = group == gi
    within = C[np.ix_(m, m)][~np.eye(m.sum(), dtype=bool)].mean()
    between = C[np.ix_(m, ~m)].mean()
    gaps.append(within - between)
    print(f"{name:<14} {m.sum():>5} {within:>10.2f} {between:>13.2f}")
check("every group: mean cosine within > mean cosine to the other groups", min(gaps) > 0)

Xc = X - X.mean(0)
U, S, Vt = np.linalg.svd(Xc, full_matrices=False)
var = S**2 / (len(X) - 1)  # variance along each principal direction
eig = np.linalg.eigvalsh(np.cov(Xc.T))[::-1]  # (d,), largest first
xy = Xc @ Vt[:2].T  # (n, 2)
share = var[:2] / var.sum()
print(f"PC1 and PC2 explain {share[0]:.1%} and {share[1]:.1%} of the variance of these words")
check("S^2/(n-1) from the SVD = the covariance's eigenvalues",
      np.allclose(var[:20], eig[:20], rtol=1e-8))
check("the coordinates are U S", np.allclose(xy, U[:, :2] * S[:2]))
if not QUICK:  # importing scikit-learn takes seconds; quick mode keeps the eigenvalue check
    from sklearn.decomposition import PCA

    sk = PCA(n_components=10, svd_solver="full").fit(X)  # the default may pick a randomized one
    check("= scikit-learn's PCA (variances; directions up to sign)",
          np.allclose(sk.explained_variance_, var[:10], rtol=1e-8)
          and np.allclose(np.abs(sk.components_), np.abs(Vt[:10]), atol=1e-8))

# %%
# The same drawing code as the docs' figure (docs/figures/embeddings_pca.png)
draw_embeddings(OUT / "embeddings_pca.png", [w for w, _ in words], list(GROUPS), group, xy, share,
                norms.numpy())
print(f"figure: {OUT / 'embeddings_pca.png'}")

# %% [markdown]
# ## Exercises (answers checked below)
# 1. Which token is nearest to " Tuesday", its other spellings skipped? *Answer: " Wednesday".*
# 2. With the tied head, the logit of " Paris" after "The capital of France is" is the last
#    position's $h$ dotted with `wte[' Paris']`. Compute it from `h` and `W`. *Answer: 17.4
#    (docs/big-picture.md has its softmax, 0.77).*
# 3. Japan is to Tokyo as China is to ? (the offset, inputs excluded). *Answer: " Beijing".*

# %%
check("exercise 1: ' Wednesday'", neighbours(W[tid(" Tuesday")], 1, {tid(" Tuesday")})[0][0]
      == " Wednesday")
z_paris = float(h[0, -1] @ W[paris])
check(f"exercise 2: h . wte[' Paris'] = {z_paris:.2f} = the engine's logit",
      abs(z_paris - float(logits[0, -1, paris])) < 1e-4 and round(z_paris, 1) == 17.4)
check("exercise 3: ' Beijing'", rank(W[tid(" Tokyo")] - W[tid(" Japan")] + W[tid(" China")],
                                     tid(" Beijing"), {tid(w) for w in (" Tokyo", " Japan",
                                                                        " China")})[0] == 1)
