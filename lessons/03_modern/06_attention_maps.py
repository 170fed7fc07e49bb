# %% [markdown]
# # Attention maps of a real model
#
# Each head of each layer mixes the tokens it may see with weights
#
# $$P = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d_{head}}} + M\right), \qquad
# M_{ts} = 0 \text{ if } s \le t \text{ else } -\infty,$$
#
# one row per query token, summing to 1 over the keys. Plotted, $P$ is an *attention map*. Here
# they come from SmolLM2-135M-Instruct (30 layers x 9 query heads, 3 KV heads, head_dim 64) on
# one sentence, computed from the queries and keys our PyTorch engine builds. Before reading the
# maps we prove they are the model's: $P V W_o$ must equal the engine's attention output in
# every layer, and $P$ must equal what transformers returns with `output_attentions=True`. Then:
# the "attention sink" (Xiao et al. 2023), previous-token heads, induction heads (Olsson et al.
# 2022), and where "it" looks. docs/attention-maps.md has the figures and the sources. Quick
# mode (what the tests run) plots 2 layers instead of 7 and loads transformers' model from the
# HF directory exported from the GGUF (section 3); every check runs in both modes.

# %%
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.pretrained import models

from _common import OUT, QUICK, check

if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")

from llm_deeper.figures.smollm2 import ATTENTION_LAYERS, draw_attention_grid
from llm_deeper.pretrained.weights import load_gguf
from llm_deeper.torch_engine.inspect import attention_maps
from llm_deeper.torch_engine.inspect import record as record_ids
from llm_deeper.torch_engine.model import TorchGPT
from llm_deeper.torch_engine.positions import rope_table

torch.set_grad_enabled(False)  # nothing here trains
pre = load_gguf(models.gguf_file("smollm2-135m"))
cfg, tok = pre.config, pre.tokenizer
model = TorchGPT(cfg, pre.params).eval()
p = model.param_dict()
L, H, KV, hd = cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.head_dim
G = H // KV  # query heads per KV head
print(f"{L} layers, {H} query heads, {KV} KV heads (groups of {G}), head_dim {hd}")

# %% [markdown]
# ## 1. Catching q, k and v as the engine computes them
# The engine's layer loop exists once (`torch_engine/model.py`); what a layer does with its
# keys and values is asked of a *step context* (`torch_engine/context.py`). A context that
# writes down what passes through, and otherwise does what the plain one does, is our hook:
# `attend` receives each layer's q, k (after RoPE) and v; `linear` sees the attention's
# input (for `wq`) and its output (for `wo`). It lives in the package,
# `llm_deeper.torch_engine.inspect.Recorder` (about 15 lines: read it), so that the docs'
# figure of these maps is drawn by the same code; the engine itself is not changed.

# %%
def record(text):
    ids = tok.encode(text)
    rec, logits = record_ids(p, cfg, ids)
    return ids, rec, logits


text = "The animal didn't cross the street because it was too tired."
ids, rec, logits = record(text)
T = len(ids)
toks = [tok.decode([i]) for i in ids]
print(f"{T} tokens: {toks}")
with torch.inference_mode():
    plain = model(torch.tensor([ids]))[0]
check("recording changes nothing: the same logits as the plain model", torch.equal(logits, plain))

# %% [markdown]
# Layer 5's queries and keys recomputed from its input and weights, to see what the engine did:
# $q = x W_q^\top$ split into 9 heads of 64, $k = x W_k^\top$ into 3 heads; then RoPE rotates
# feature $i$ with feature $i + 32$ of each head by the angle $t\,\theta^{-2i/64}$ at position
# $t$ ($\theta$ = 100,000 for SmolLM2).

# %%
layer = 5
x, _ = rec.io[f"h.{layer}.attn.wq"]  # (1, T, d_model): the normed input of the attention
q = (x @ p[f"h.{layer}.attn.wq"].T).view(1, T, H, hd).transpose(1, 2)  # (1, H, T, hd)
k = (x @ p[f"h.{layer}.attn.wk"].T).view(1, T, KV, hd).transpose(1, 2)  # (1, KV, T, hd)
cos, sin = (c[:T] for c in rope_table(cfg, "cpu", torch.float32))  # (T, hd / 2)


def rope(v):
    a, b = v[..., :hd // 2], v[..., hd // 2:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


q_eng, k_eng, _ = rec.qkv[layer]
check(f"layer {layer}: q and k by hand (projection, then RoPE) = the engine's",
      torch.allclose(rope(q), q_eng, atol=1e-5) and torch.allclose(rope(k), k_eng, atol=1e-5))

# %% [markdown]
# ## 2. The maps, and the proof that they are the model's
# GQA: 9 query heads, 3 key/value heads. Query head $h$ uses KV head $\lfloor h / 3 \rfloor$:
# heads 0-2 share KV head 0, 3-5 KV head 1, 6-8 KV head 2 (`repeat_interleave`). Each map is
# checked three ways: rows sum to 1, nothing above the diagonal (no look at the future), and
# $\mathrm{concat}_h(P_h V_{kv(h)})\,W_o^\top$ equals the engine's attention output.

# %%
# The maps: `attention_maps(rec.qkv, H, group)` (torch_engine/inspect.py) does, per layer,
#     k = k[0, [group(h) for h in range(H)]]                 # (H, T, hd): each query head's keys
#     s = q[0] @ k.transpose(-1, -2) / math.sqrt(hd)          # (H, T, T)
#     softmax(s with -inf above the diagonal)
# with group(h) = h // 3 unless told otherwise.


def layer_outputs(P, qkv, group=lambda h: h // G):
    """P V per head, the heads concatenated, times W_o: (L, T, d_model)."""
    outs = []
    for i, (Pl, (_, _, v)) in enumerate(zip(P, qkv)):
        o = Pl @ v[0, [group(h) for h in range(H)]]  # (H, T, hd)
        outs.append(o.transpose(0, 1).flatten(1) @ p[f"h.{i}.attn.wo"].T)  # (T, d_model)
    return torch.stack(outs)


P = attention_maps(rec.qkv, H)  # (L, H, T, T)
engine_out = torch.stack([rec.io[f"h.{i}.attn.wo"][1][0] for i in range(L)])  # (L, T, d)
err = float((layer_outputs(P, rec.qkv) - engine_out).abs().max())
big = float(engine_out.abs().max())
print(f"P: {tuple(P.shape)}; max |P V W_o - engine| over all {L} layers: {err:.1e} "
      f"(the outputs reach {big:.0f}: {err / big:.0e} of that)")
check("every row of every map sums to 1", torch.allclose(P.sum(-1), torch.ones(L, H, T)))
check("zero above the diagonal (a token never sees the future)",
      bool((P.triu(1) == 0).all()))
check("P V W_o = the engine's attention output, all 30 layers (1e-6 of the largest)",
      err < 1e-6 * big)


def swap(h):  # heads 0, 3, 6 on KV head 0, ...
    return h % KV


wrong = float((layer_outputs(attention_maps(rec.qkv, H, swap), rec.qkv, swap) - engine_out)
              .abs().max())
print(f"the same with the wrong sharing (head h on KV head h % 3): error {wrong:.2f}")
check("the sharing is h // 3: the other grouping does not reproduce the model", wrong > 0.1)

# %% [markdown]
# Sharing a key head does not make the maps equal: each query head has its own $W_q$ rows, so
# three heads read the same keys with different questions.

# %%
alike = [float((P[i, a] - P[i, b]).abs().max()) for i in range(L) for a in range(H)
         for b in range(a + 1, H) if a // G == b // G]
print(f"heads sharing a KV head: the largest difference between their maps, median over "
      f"pairs {np.median(alike):.2f}")
check("heads of one group attend differently (median largest difference > 0.1)",
      np.median(alike) > 0.1)

# %% [markdown]
# ## 3. Against transformers
# transformers' Llama with `attn_implementation="eager"` writes the softmax out and returns it
# with `output_attentions=True`. In full mode the model is read from the same GGUF by
# transformers' own reader (its own dequantization and RoPE row order, as
# `tests/test_pretrained.py` does); quick mode reads the HF directory our exporter wrote from
# that GGUF (`llm_deeper.hf.models.hf_dir`), which skips a second GGUF decode.

# %%
from transformers import AutoModelForCausalLM

if QUICK:
    from llm_deeper.hf.models import hf_dir

    hf = AutoModelForCausalLM.from_pretrained(hf_dir("smollm2-135m"), dtype=torch.float32,
                                              attn_implementation="eager")
else:
    path = models.gguf_file("smollm2-135m")
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              dtype=torch.float32, attn_implementation="eager")
with torch.inference_mode():
    ref = torch.stack(hf.eval()(torch.tensor([ids]), output_attentions=True).attentions)[:, 0]
hf_err = float((P - ref).abs().max())
print(f"transformers' attentions {tuple(ref.shape)}; max |ours - theirs| = {hf_err:.1e}")
check("our maps = transformers' output_attentions, every layer and head (1e-5)", hf_err < 1e-5)

# %% [markdown]
# ## 4. A grid of maps
# Rows: query tokens; columns: the keys they attend to. Dark is 0, bright is 1.

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# drawn by the same code as the docs' figure (docs/figures/attention_heads.png)
shown = [16, 29] if QUICK else list(ATTENTION_LAYERS)
draw_attention_grid(OUT / "attention_maps.png", P, toks, shown,
                    f"SmolLM2-135M attention maps: {text!r}")
print(f"figure: {OUT / 'attention_maps.png'}")

# %% [markdown]
# ## 5. Sinks, previous-token heads, induction heads
# Per head, averaged over the query positions from 2 on (position 1's previous token *is* the
# first): the weight on the first token, and the weight on the token just before. Uniform
# attention would put $1/(t+1)$ on each. A second text tells a habit of the head from an
# accident of the sentence. Then Olsson et al.'s test for induction heads: a random token
# sequence, repeated; in the second copy an induction head looks at the token that *followed*
# the current token the first time, the pattern that lets the model copy. Its key has to say
# "the token before me was A" (written by an earlier previous-token head), and keys are shared
# by the three query heads of a group: in layer 17 the whole group of KV head 1 does it.

# %%
def sink_and_previous(P):
    n = P.shape[-1]
    return (P[:, :, 2:, 0].mean(-1),
            torch.stack([P[:, :, t, t - 1] for t in range(2, n)], -1).mean(-1))


sink, prev = sink_and_previous(P)  # (L, H) each
other = ("Once upon a time, in a small village by the sea, there lived an old fisherman who "
         "went out every morning before sunrise and came back with his boat full of fish.")
_, rec2, _ = record(other)
sink2, prev2 = sink_and_previous(attention_maps(rec2.qkv, H))
uniform = float(np.mean([1 / (t + 1) for t in range(2, T)]))
print(f"weight on the first token, layers 3-29: {sink[3:].mean():.2f} here, "
      f"{sink2[3:].mean():.2f} on the second text; uniform on the sentence: {uniform:.2f}")
check("an attention sink: from layer 3 on, heads put 3x uniform weight on token 0, both texts",
      min(sink[3:].mean(), sink2[3:].mean()) > 3 * uniform)
print("per layer:", " ".join(f"{w:.2f}" for w in sink.mean(1).tolist()))
# What the parked weight brings back: token 0's value vectors against the others' (layers 3-29)
vnorm = torch.stack([v[0].norm(dim=-1) for _, _, v in rec.qkv])  # (L, KV, T)
ratio = float((vnorm[3:, :, 0] / vnorm[3:, :, 1:].median(-1).values).mean())
print(f"|v| of the first token / median |v| of the others, layers 3-29: {ratio:.2f}")
check("the sink's values are short (< half the others'): parking there adds little", ratio < 0.5)
prev_heads = [(i, h) for i, h in zip(*np.nonzero(prev.numpy() > 0.5))]
top2 = torch.topk(prev2.flatten(), len(prev_heads)).indices.tolist()
print("previous-token heads (mean weight > 0.5):",
      ", ".join(f"L{i} H{h} ({prev[i, h]:.2f}, {prev2[i, h]:.2f})" for i, h in prev_heads))
check("the same heads are the strongest previous-token heads on the second text",
      {i * H + h for i, h in prev_heads} == set(top2) and len(prev_heads) >= 2)

N = 25
rand = torch.randint(1000, 20000, (N,), generator=torch.Generator().manual_seed(0)).tolist()
rec3, logits3 = record_ids(p, cfg, rand + rand)
P3 = attention_maps(rec3.qkv, H)
induction = torch.stack([P3[:, :, N + t, t + 1] for t in range(N - 1)], -1).mean(-1)  # (L, H)
hits = (logits3[0, :-1].argmax(-1) == torch.tensor(rand + rand)[1:]).float()
ind_heads = [(i, h) for i, h in zip(*np.nonzero(induction.numpy() > 0.5))]
print("induction heads (weight > 0.5 on the token after the earlier copy):",
      ", ".join(f"L{i} H{h} ({induction[i, h]:.2f})" for i, h in ind_heads))
print(f"next-token accuracy on the random tokens: first copy {hits[:N - 1].mean():.2f}, "
      f"second copy {hits[N:].mean():.2f}")
check("induction heads exist (weight > 0.5; uniform would give < 0.04)", len(ind_heads) >= 1)
check("layer 17's three heads on KV head 1 (heads 3, 4, 5) are all induction heads",
      {(17, 3), (17, 4), (17, 5)} <= set(ind_heads))
idle = [float(sink[i, h]) for i, h in ((17, 3), (17, 4), (17, 5), (18, 6))]
print("the same four heads on the sentence, where nothing repeats: weight on the first token",
      ", ".join(f"{w:.2f}" for w in idle))
check("with nothing to copy, these induction heads rest on the sink (> 0.9)", min(idle) > 0.9)
check("and the model copies: second-copy accuracy > 0.5, first < 0.1",
      hits[N:].mean() > 0.5 and hits[:N - 1].mean() < 0.1)

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 6.5), dpi=110, sharey=True, layout="constrained")
panels = [(sink, "attention to the first token (sink)"),
          (prev, "attention to the previous token"),
          (induction, "induction score (repeated random tokens)")]
for ax, (m, title) in zip(axes, panels):
    im = ax.imshow(m.numpy(), cmap="magma", vmin=0, vmax=1, aspect="auto")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("head (KV head = head // 3)")
    ax.set_xticks(range(H))
    for i, h in (prev_heads if m is prev else ind_heads if m is induction else []):
        ax.add_patch(plt.Rectangle((h - 0.5, i - 0.5), 1, 1, fill=False, ec="cyan", lw=1.5))
axes[0].set_ylabel("layer")
fig.colorbar(im, ax=axes, shrink=0.7, label="mean attention weight")
fig.suptitle("SmolLM2-135M: what each head does, on average")
fig.savefig(OUT / "attention_heads_summary.png")
print(f"figure: {OUT / 'attention_heads_summary.png'}")

# %% [markdown]
# ## 6. Where does "it" look?
# The sentence is the classic coreference example: "it" is the animal. A head does not have to
# resolve it, and heads disagree. Leaving out the first token (the sink), the heads that put
# the most weight on " animal" and on " street" from the query " it":

# %%
it, animal, street = toks.index(" it"), toks.index(" animal"), toks.index(" street")
for target in (animal, street):
    best = torch.topk(P[:, :, it, target].flatten(), 3).indices.tolist()
    for b in best:
        i, h = divmod(b, H)
        row = P[i, h, it].clone()
        row[0] = 0
        top = row.argsort(descending=True)[:3].tolist()
        print(f"  L{i:>2} H{h}: ' it' -> " + ", ".join(f"{toks[j]!r} {P[i, h, it, j]:.2f}"
                                                       for j in top)
              + f"  (first token {P[i, h, it, 0]:.2f})")
more = int((P[:, :, it, animal] > P[:, :, it, street]).sum())
print(f"of all {L * H} heads, {more} weigh ' animal' above ' street' from ' it', "
      f"{L * H - more} the reverse")
check("some head puts > 0.5 on ' animal' and some other > 0.5 on ' street'",
      P[:, :, it, animal].max() > 0.5 and P[:, :, it, street].max() > 0.5)

# %% [markdown]
# A map says where a head reads from, not what it does with it or whether the output depends
# on it (Jain & Wallace 2019; Wiegreffe & Pinter 2019): the value vectors, $W_o$ and the 29
# other layers decide that. Maps are a place to form hypotheses, which ablations then test.
#
# ## Exercises (answers checked below)
# 1. In layer 16, head 0, which token does " tired" attend to most? *Answer: " too", the
#    previous token (L16 H0 is the strongest previous-token head).*
# 2. Which query heads share KV head 2? *Answer: heads 6, 7 and 8.*
# 3. From the query "." (the last token), what share of layer 20's attention, averaged over its
#    9 heads, goes to the first token? *Answer: more than half (the sink).*

# %%
tired = toks.index(" tired")
check("exercise 1: L16 H0 at ' tired' reads ' too'", toks[int(P[16, 0, tired].argmax())] == " too")
check("exercise 2: heads 6, 7, 8", [h for h in range(H) if h // G == 2] == [6, 7, 8])
check(f"exercise 3: {float(P[20, :, -1, 0].mean()):.2f} > 0.5", float(P[20, :, -1, 0].mean()) > 0.5)
