"""Figures read off SmolLM2-135M-Instruct, run by our PyTorch engine: its attention maps, its
next-token distribution under the sampler's settings, and its token embeddings.

The model is loaded once per process (`smollm2()`), whichever figures ask for it. The drawing
functions take the computed arrays, so the lessons that compute the same things by hand
(lessons/03_modern/06_attention_maps.py, lessons/01_foundations/05_embeddings.py) draw their
figures with this code too.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from . import figure, pyplot, save

ATTENTION_TEXT = "The animal didn't cross the street because it was too tired."
ATTENTION_LAYERS = (0, 2, 11, 16, 17, 18, 29)  # one of each habit (docs/attention-maps.md)
SAMPLING_PROMPT = "The capital of France is"

# Single-token words in five groups (lessons/01_foundations/05_embeddings.py measures them)
EMBEDDING_GROUPS = {
    "numbers": "one two three four five six seven eight nine ten eleven twelve twenty thirty "
               "forty fifty hundred thousand million billion",
    "days & months": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February "
                     "March April May June July August September October November December",
    "countries": "France Germany Italy Spain China Japan India Russia Canada Brazil Mexico Egypt "
                 "Kenya Australia Sweden Norway Poland Greece Turkey Iran",
    "colours": "red blue green yellow orange purple pink brown black white grey gray violet "
               "silver golden turquoise cyan",
    "pronouns": "I you he she it we they me him her us them my your his its our their mine yours",
}


@functools.cache
def smollm2():
    """(TorchGPT in eval mode, tokenizer) of SmolLM2-135M-Instruct, read from its GGUF once per
    process. Figures only read it."""
    from ..evaluation.icl import load_smollm2

    return load_smollm2()


# --- attention maps ------------------------------------------------------------------------------

def draw_attention_grid(path: Path, P, tokens: list[str], layers, title: str) -> Path:
    """One map per (layer, head): P (L, H, T, T) of one text, the rows `layers` of it."""
    plt = pyplot()
    H, T = P.shape[1], P.shape[-1]
    group = H // 3 if H % 3 == 0 else 1  # SmolLM2: 9 query heads on 3 KV heads
    labels = [t.strip() or repr(t) for t in tokens]
    fig, axes = plt.subplots(len(layers), H, figsize=(1.75 * H + 1.2, 1.85 * len(layers) + 0.9),
                             layout="constrained", squeeze=False)
    for r, li in enumerate(layers):
        for h in range(H):
            ax = axes[r, h]
            im = ax.imshow(np.asarray(P[li, h]), cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(T), labels if r == len(layers) - 1 else [], rotation=90,
                          fontsize=6)
            ax.set_yticks(range(T), labels if h == 0 else [], fontsize=6)
            ax.set_title(f"layer {li}, head {h} (KV {h // group})", fontsize=7)
    axes[-1, H // 2].set_xlabel("key token (what is read)", fontsize=9)
    axes[len(layers) // 2, 0].set_ylabel("query token (who reads)", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.5, label="attention weight (each row sums to 1)")
    fig.suptitle(title)
    return save(fig, path)


@figure("attention_heads.png", page="docs/attention-maps.md", needs="smollm2",
        what="SmolLM2's attention maps on one sentence: 7 layers x 9 heads, from our engine")
def attention_heads(path: Path, quick: bool) -> None:
    from ..torch_engine.inspect import attention_maps, record

    model, tok = smollm2()
    ids = tok.encode(ATTENTION_TEXT)
    rec, _ = record(model.param_dict(), model.cfg, ids)
    P = attention_maps(rec.qkv, model.cfg.n_head)
    draw_attention_grid(path, P, [tok.decode([i]) for i in ids],
                        (16, 29) if quick else ATTENTION_LAYERS,
                        f"SmolLM2-135M attention maps: {ATTENTION_TEXT!r}")


# --- the sampler on a real distribution ----------------------------------------------------------

def next_token_logits(text: str) -> np.ndarray:
    """SmolLM2's logits (float64, vocabulary-long) for the token after `text`."""
    import torch

    model, tok = smollm2()
    with torch.inference_mode():
        logits, _ = model(torch.tensor([tok.encode(text)]))
    return logits[0, -1].double().numpy()


@figure("sampling.png", page="docs/generation.md", needs="smollm2",
        what="SmolLM2's next token after 'The capital of France is': temperature, top-k, top-p")
def sampling(path: Path, quick: bool) -> None:
    from ..sampling import SamplingParams, filter_logits, log_softmax

    plt = pyplot()
    _, tok = smollm2()
    logits = next_token_logits(SAMPLING_PROMPT)
    settings = [("temperature 0.5", SamplingParams(temperature=0.5)),
                ("temperature 1", SamplingParams(temperature=1.0)),
                ("temperature 1.5", SamplingParams(temperature=1.5)),
                ("temperature 1, top-k 5", SamplingParams(top_k=5)),
                ("temperature 1, top-p 0.9", SamplingParams(top_p=0.9))]
    n = 10 if quick else 20
    probs = [np.exp(log_softmax(filter_logits(logits, sp))) for _, sp in settings]
    top = np.argsort(-probs[1], kind="stable")[:n]  # the n most likely at temperature 1
    labels = [repr(tok.decode([int(i)])) for i in top]
    fig, axes = plt.subplots(1, len(settings), figsize=(16, 0.28 * n + 2.2), sharey=True,
                             layout="constrained")
    y, lo = np.arange(n), 1e-6  # lo: the left end of the log axis
    for ax, (name, _), pr in zip(axes, settings, probs):
        kept = pr[top] > 0
        ax.barh(y[kept], pr[top][kept], color="C0")
        for yi, v in zip(y, pr[top]):
            ax.text(max(v, lo) * 1.3, yi, "removed" if v == 0 else f"{100 * v:.2g} %",
                    va="center", fontsize=6.5, color="0.5" if v == 0 else "0.15")
        ax.set_xscale("log")
        ax.set_xlim(lo, 8)
        ax.set_title(f"{name}\n{int((pr > 0).sum()):,} tokens left, entropy "
                     f"{-(pr[pr > 0] * np.log(pr[pr > 0])).sum():.2f} nats", fontsize=9)
        ax.set_xlabel("probability (log scale)")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_ylabel(f"the {n} most likely next tokens at temperature 1")
    fig.suptitle(f"SmolLM2-135M after {SAMPLING_PROMPT!r}: the distribution `choose` draws "
                 "from (llm_deeper.sampling.filter_logits)")
    save(fig, path)


# --- token embeddings ----------------------------------------------------------------------------

def draw_embeddings(path: Path, words: list[str], group_names: list[str], group: np.ndarray,
                    xy: np.ndarray, share: np.ndarray, norms: np.ndarray) -> Path:
    """Left: the words at their 2-D PCA coordinates xy, by group; right: a histogram of the
    norms of all embedding rows."""
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 6), width_ratios=[2, 1])
    for gi, name in enumerate(group_names):
        m = group == gi
        ax.scatter(xy[m, 0], xy[m, 1], s=18, color=f"C{gi}", label=name)
        for k in np.nonzero(m)[0]:
            ax.annotate(words[k].strip(), xy[k], fontsize=6, color=f"C{gi}", xytext=(2, 2),
                        textcoords="offset points")
    ax.set_xlabel(f"PC1 ({share[0]:.0%} of the variance)")
    ax.set_ylabel(f"PC2 ({share[1]:.0%})")
    ax.set_title(f"{len(words)} SmolLM2 token embeddings (576-d) projected by PCA")
    ax.legend(loc="best", fontsize=8)
    bx.hist(norms, bins=100, color="C7")
    bx.set_yscale("log")
    bx.set_xlabel("row norm ||wte[i]||")
    bx.set_ylabel("tokens (log scale)")
    bx.set_title(f"norms of all {len(norms):,} rows")
    fig.tight_layout()
    return save(fig, path)


@figure("embeddings_pca.png", page="docs/embeddings.md", needs="smollm2",
        what="96 of SmolLM2's token embeddings in 2-D by PCA, and the norms of all 49,152 rows")
def embeddings_pca(path: Path, quick: bool) -> None:
    model, tok = smollm2()
    W = model.param_dict()["wte"].detach().double().numpy()  # (V, d)
    words = [(" " + w, gi) for gi, ws in enumerate(EMBEDDING_GROUPS.values()) for w in ws.split()]
    X = W[[tok.encode(w)[0] for w, _ in words]]
    Xc = X - X.mean(0)
    U, S, _ = np.linalg.svd(Xc, full_matrices=False)
    share = S**2 / (S**2).sum()
    draw_embeddings(path, [w for w, _ in words], list(EMBEDDING_GROUPS),
                    np.array([gi for _, gi in words]), U[:, :2] * S[:2], share,
                    np.linalg.norm(W, axis=1))
