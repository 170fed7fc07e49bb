# %% [markdown]
# # Scaling: bigger models and more data give lower loss, until they don't
#
# Kaplan et al. (2020, [arXiv 2001.08361](https://arxiv.org/abs/2001.08361)) trained hundreds of
# language models and found that the test loss falls as a power law in the number of
# parameters $N$, when data is plentiful, and in the number of training tokens $D$, when the
# model is big enough:
#
# $$L(N) \approx \left(\frac{N_c}{N}\right)^{\alpha_N}, \qquad
#   L(D) \approx \left(\frac{D_c}{D}\right)^{\alpha_D},$$
#
# and that the compute of a run is $C \approx 6ND$ FLOPs. Hoffmann et al. (2022, "Chinchilla",
# [arXiv 2203.15556](https://arxiv.org/abs/2203.15556)) showed that for a fixed $C$ the best model
# spends it on about 20 tokens per parameter. Here we see both effects on Shakespeare, character
# by character, with the package's one training loop: at equal steps a wider model reaches a
# lower validation loss; the same model trained on a sliver of the text (as `llm-deeper train
# --data-size` does: the first N tokens of the training split) drives its training loss down
# and its validation loss up: it memorises instead of generalising. Then we read the measured
# sweep behind docs/scaling.md.
# Needs the corpus: `llm-deeper data pull shakespeare`.

# %%
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper import scaling, sizing
from llm_deeper.config import preset
from llm_deeper.data import load_text, shakespeare, split_train_val
from llm_deeper.numpy_engine.model import GPT
from llm_deeper.numpy_engine.train import NumpyTrainer
from llm_deeper.tokenizers import CharTokenizer
from llm_deeper.train import TrainConfig, estimate_loss, train

from _common import OUT, QUICK, check

if not shakespeare.is_cached():
    raise SystemExit("run 'llm-deeper data pull shakespeare' first")
text = load_text("works")
tok = CharTokenizer.train(text)
train_ids, val_ids = split_train_val(np.asarray(tok.encode(text)))
V = tok.vocab_size
print(f"works: {len(train_ids):,} training and {len(val_ids):,} validation characters, "
      f"vocabulary {V}")

# %% [markdown]
# ## 1. Baselines: what a model that sees 0 or 1 characters back can do
# Before any transformer, two counting models give the scale of the losses below. A unigram
# model knows only character frequencies; a bigram model knows which character follows which.
# Their cross-entropy on the validation text (nats per character) is computed here from counts
# on the training split (add-$\epsilon$ smoothing). A language model's loss cannot fall below the
# entropy rate of the text, which no one knows exactly for Shakespeare; what we can say is that
# a model that beats the bigram has learned something about words.

# %%
p1 = (np.bincount(train_ids, minlength=V) + 1) / (len(train_ids) + V)
pairs = np.zeros((V, V))
np.add.at(pairs, (train_ids[:-1], train_ids[1:]), 1)
p2 = (pairs + 0.01) / (pairs + 0.01).sum(1, keepdims=True)
unigram = float(-np.log(p1[val_ids]).mean())
bigram = float(-np.log(p2[val_ids[:-1], val_ids[1:]]).mean())
print(f"uniform ln {V} = {np.log(V):.3f}, unigram {unigram:.3f}, bigram {bigram:.3f} nats/char")
check("the bigram model beats the unigram, which beats uniform guessing",
      bigram < unigram - 0.5 and unigram < np.log(V) - 0.5)

# %% [markdown]
# ## 2. Bigger models, same data, same steps
# Three widths of the `tiny` preset (2 Llama-style blocks; d_model 16, 32 and 64, the last being
# `tiny` itself), each trained for the same steps on batches of the whole training split. Same
# steps and batch means the same tokens $D$, so the compute $6ND$ grows with $N$.

# %%
steps = 100 if QUICK else 400
T, B = 32, 16
D = steps * B * T
tc = TrainConfig(steps=steps, batch_size=B, lr=3e-3, warmup=steps // 10, eval_interval=steps,
                 eval_iters=10, final_eval_iters=20 if QUICK else 100, seed=0)
widths = (16, 32, 64) if QUICK else (16, 32, 64, 128)


def run(d_model: int, n_data: int | None, name: str) -> dict:
    """Train a `tiny` of this width on the first n_data training tokens (None: all) through the
    package's training loop; return its numbers, the training loss measured like the validation
    loss (the final model, on its own training data)."""
    cfg = preset("tiny", vocab_size=V, context_length=T, d_model=d_model,
                 d_ff=d_model * 11 // 4 // 8 * 8)
    trainer = NumpyTrainer(GPT(cfg, seed=0))
    t0 = time.process_time()
    r = train(trainer, tok, train_ids[:n_data], val_ids, tc, OUT / f"scaling-{name}",
              progress=False, log=lambda *_: None)
    cpu = time.process_time() - t0
    tr = estimate_loss(trainer, train_ids[:n_data], tc.final_eval_iters, B, tc.seed + 2)
    return {"cfg": cfg, "N": cfg.n_params(), "train": tr, "val": r["val_loss"], "cpu": cpu}


sized = {d: run(d, None, f"d{d}") for d in widths}
print(f"{steps} steps x {B} x {T} = D = {D:,} tokens each")
print(f"{'d_model':>8} {'N':>9} {'6ND (FLOPs)':>12} {'train':>7} {'val':>7}")
for d, r in sized.items():
    print(f"{d:>8} {r['N']:>9,} {6 * r['N'] * D:>12.3e} {r['train']:>7.3f} {r['val']:>7.3f}")
vals = [r["val"] for r in sized.values()]
check("each wider model ends with a validation loss at least 0.05 lower, at equal steps",
      all(a > b + 0.05 for a, b in zip(vals, vals[1:])))

# %% [markdown]
# ## 3. The compute of a run: $6ND$, by hand and by the calculator
# Per parameter and token, 2 FLOPs forward and 4 backward. $N$ here comes from the shapes the
# engines create (`ModelConfig.n_params`); the calculator (`llm_deeper.sizing`, behind `llm-deeper
# calc flops`) counts it again from the architecture and adds attention's $QK^\top$ and $AV$,
# which grow with the context rather than with $N$.

# %%
cfg = sized[64]["cfg"]
by_hand = 6 * cfg.n_params() * D
calc = sizing.training_flops(sizing.from_config(cfg), D)
print(f"tiny: N = {cfg.n_params():,}, D = {D:,}: 6ND = {by_hand:.4e}; calculator "
      f"{calc['rule_6ND']:.4e}, with attention {calc['total']:.4e} "
      f"({calc['attention'] / calc['total']:.0%} attention)")
print(f"tokens per parameter: {D / cfg.n_params():.1f} (Chinchilla's compute-optimal: about 20); "
      f"{by_hand / max(sized[64]['cpu'], 1e-9) / 1e9:.1f} GFLOP/s (6ND) on this CPU")
check("6ND by hand equals the calculator's rule_6ND", by_hand == calc["rule_6ND"])

# %% [markdown]
# ## 4. Less data, same model, same steps: overfitting
# `tiny` again, now on only the first 1,000 characters of the training split (10,000 in the full
# mode), each seen about 50 (20) times, against the whole split, on the same validation text. On
# little data the training loss falls far below the validation loss: the model learns the
# sample, not the language.

# %%
n_small = 1000 if QUICK else 10_000
few = run(64, n_small, "few")
full = sized[64]
print(f"{'data':>10} {'epochs':>7} {'train':>7} {'val':>7}")
for n, r in ((n_small, few), (len(train_ids), full)):
    print(f"{n:>10,} {D / n:>7.1f} {r['train']:>7.3f} {r['val']:>7.3f}")
check(f"on {n_small:,} characters the training loss ends at least 0.3 lower than on all",
      few["train"] < full["train"] - 0.3)
check("... and the validation loss at least 0.1 higher (overfitting)",
      few["val"] > full["val"] + 0.1)

# %% [markdown]
# ## 5. The measured sweep
# `llm-deeper scaling sweep` trains every pair of `tiny`, `small` and `medium` (98K, 548K, 2.0M
# parameters) and 20k, 200k, 1.5M characters and the whole split (4.55M) for 1,000 steps of
# 12 x 128 characters, each through `train --data-size`; docs/data/scaling.json holds its
# results and docs/scaling.md its figures. Here we print the table and check its claims.

# %%
res = json.loads((Path(__file__).resolve().parents[2] / "docs/data/scaling.json").read_text())
print(scaling.table(res))
for sentence, ok in scaling.findings(res):
    check(sentence, ok)
sizes, datas, runs = scaling.grid(res)
top = [runs[s, datas[-1]] for s in sizes]
alpha = -np.polyfit(np.log([r["params"] for r in top]), np.log([r["val_loss"] for r in top]),
                    1)[0]
print(f"on all the data, L ~ N^-a with a = {alpha:.3f} (a line through {len(top)} points, log-log)")

# %% [markdown]
# ## 6. Where it stops on this corpus
# Read off the same table: the returns of size shrink, size stops paying where data is short,
# and data stops paying where the model is small.

# %%
val = lambda s, d: runs[s, d]["val_loss"]
d20, d200, d15, d_all = datas
slopes = [np.log(a["val_loss"] / b["val_loss"]) / np.log(b["params"] / a["params"])
          for a, b in zip(top, top[1:])]
print("local exponents on all the data (tiny -> small, small -> medium): "
      + ", ".join(f"{x:.3f}" for x in slopes))
check("returns diminish: the local exponent of small -> medium is below tiny -> small's",
      slopes[1] < slopes[0])
print(f"200k characters: small {val('small', d200):.3f}, medium {val('medium', d200):.3f}; "
      f"20k, best on the way: small {runs['small', d20]['best_val_loss']:.3f}, medium "
      f"{runs['medium', d20]['best_val_loss']:.3f}")
check("on 200k characters (7.7 epochs) medium is no better than small: size stops paying",
      val("medium", d200) > val("small", d200) - 0.01)
check("on 20k, even medium's best validation loss (stopping early) is above small's",
      runs["medium", d20]["best_val_loss"] > runs["small", d20]["best_val_loss"])
print(f"1.5M -> all: tiny {val('tiny', d15):.3f} -> {val('tiny', d_all):.3f}, medium "
      f"{val('medium', d15):.3f} -> {val('medium', d_all):.3f}")
check("tiny gains nothing from all the data over 1.5M characters, medium more than 0.03",
      val("tiny", d_all) > val("tiny", d15) - 0.01
      and val("medium", d_all) < val("medium", d15) - 0.03)

# %% [markdown]
# ## Exercises
# 1. Run the quick mode (`LLM_DEEPER_QUICK=1`) with `n_small = 100_000` in section 4. The
#    100,000 characters are read only about 0.5 times, so nothing is memorised: you should see
#    training 2.728 and validation 2.754 against 2.739 and 2.717 on the whole split, and the
#    overfitting check fail.
# 2. A run reads $D$ = steps x batch x context tokens. How many steps of 12 x 128 would the
#    `medium` preset (2,044,592 parameters) need for Chinchilla's 20 tokens per parameter?
#    (Answer: 20 x 2,044,592 / 1,536 = 26,622 steps, about 27x the sweep's 1,000.)
# 3. Fit the power law of section 5 to the 20k column instead (`datas[0]`): the exponent comes
#    out negative (-0.165), since on 20k characters a bigger model only memorises more.
