# %% [markdown]
# # Evaluating a language model: perplexity, ROUGE, BERTScore, task metrics
#
# * **Perplexity** exp(mean NLL per token): how surprised the model is by real text. Texts longer
#   than the context are scored in sliding windows; each window scores only the tokens the
#   previous one did not, and windows are weighted by that count.
# * **ROUGE** counts overlap with a reference answer: unigrams (ROUGE-1), bigrams (ROUGE-2), the
#   longest common subsequence (ROUGE-L), each an F-measure.
# * **BERTScore** matches tokens in embedding space, so paraphrases score well where ROUGE fails.
# * **Task metrics** are best when answers can be checked: did the model call the right tool with
#   the right arguments, and is the tool's result in its answer?

# %%
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.data import shakespeare
from llm_deeper.pretrained import models

from _common import QUICK, check

if not models.is_cached("smollm2-135m") or not shakespeare.is_cached():
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' and "
                     "'llm-deeper data pull shakespeare' first")

from llm_deeper.evaluation.text_metrics import bertscore, rouge

# %% [markdown]
# ## ROUGE-L by hand
# LCS of reference and candidate tokens; recall = LCS/|ref|, precision = LCS/|cand|,
# F = 2PR/(P+R). rouge-score lowercases, splits on non-alphanumerics and (here) stems.

# %%
ref = "there are 299 days from 2025-03-01 to 2025-12-25"
cand = "from 2025-03-01 to 2025-12-25 there are 299 days"


def lcs(a, b):
    t = np.zeros((len(a) + 1, len(b) + 1), dtype=int)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            t[i + 1, j + 1] = t[i, j] + 1 if x == y else max(t[i, j + 1], t[i + 1, j])
    return int(t[-1, -1])


import re

ra, ca = re.findall(r"[a-z0-9]+", ref), re.findall(r"[a-z0-9]+", cand)
n = lcs(ra, ca)
p, r = n / len(ca), n / len(ra)
f_hand = 2 * p * r / (p + r)
scores = rouge([cand], [ref])
print(f"tokens {ra}\nLCS {n}: P {p:.3f} R {r:.3f} F {f_hand:.4f}; rouge-score: {scores}")
check("ROUGE-L by hand = rouge-score", abs(f_hand - scores["rougeL"]) < 1e-9)
check("same words, other order: ROUGE-1 is 1", abs(scores["rouge1"] - 1) < 1e-9)

# %% [markdown]
# ## BERTScore rewards paraphrase
# all-MiniLM-L6-v2 (shipped on PyPI, offline).

# %%
refs = ["The answer is 84.", "William Shakespeare wrote Hamlet."]
paraphrase = ["It comes to 84.", "Hamlet was written by Shakespeare."]
unrelated = ["The weather is cold today.", "I like green apples."]
bp, bu = bertscore(paraphrase, refs), bertscore(unrelated, refs)
print(f"paraphrase: ROUGE-L {rouge(paraphrase, refs)['rougeL']:.3f}, BERTScore F1 "
      f"{bp['bertscore_f1']:.3f}; unrelated: ROUGE-L {rouge(unrelated, refs)['rougeL']:.3f}, "
      f"BERTScore F1 {bu['bertscore_f1']:.3f}")
check("BERTScore prefers the paraphrase", bp["bertscore_f1"] > bu["bertscore_f1"])
check("identical text scores 1", abs(bertscore(refs, refs)["bertscore_f1"] - 1) < 1e-4)

# %% [markdown]
# ## Perplexity with a sliding window
# With stride = window the windows do not overlap and the result is the plain chunked score;
# with stride < window every token after the first window has more context, so perplexity drops.

# %%
from llm_deeper.data import load_text
from llm_deeper.evaluation.perplexity import perplexity, torch_logprobs
from llm_deeper.pretrained.weights import load_gguf
from llm_deeper.torch_engine.model import TorchGPT

pre = load_gguf(models.require("smollm2-135m"))
fn = torch_logprobs(TorchGPT(pre.config, pre.params).eval())
text = load_text("sonnets")
ids = np.asarray(pre.tokenizer.encode(text))[:512 if QUICK else 4096]
for window, stride in ((256, 256), (256, 128), (256, 64)):
    res = perplexity(fn, ids, window, stride)
    print(f"window {window} stride {stride:>3}: perplexity {res.perplexity:7.2f} "
          f"({res.windows} windows, {res.tokens} tokens scored)")
check("every token after the first is scored once", res.tokens == len(ids) - 1)

# %% [markdown]
# ## Task metrics
# `llm-deeper eval toolcalls --compare` plays held-out requests to the end and reports these
# beside ROUGE and BERTScore of the final answers (docs/hf.md has the measured table). Scoring
# two hand-written replies shows what each metric asks for:

# %%
from llm_deeper.chat.tools import format_call
from llm_deeper.data.toolcalls import tool_calling_dataset
from llm_deeper.hf.toolcall_eval import score

ex = tool_calling_dataset(n_train=0, n_val=0, n_test=20)["test"]
ex = [e for e in ex if e["calls"]][:2]
good = ex[0]["calls"][0]
bad = {"name": ex[1]["calls"][0]["name"],
       "arguments": {k: "?" for k in ex[1]["calls"][0]["arguments"]}}
records = [{"calls": [good], "reply": format_call(**good),
            "answer": ex[0]["messages"][-1]["content"]},
           {"calls": [bad], "reply": format_call(**bad), "answer": "I am not sure."}]
s = score(ex, records, text_metrics=False)
print(s)
check("right tool twice, right arguments once", s["tool_name_accuracy"] == 1 and
      s["exact_match"] == 0.5 and s["answer_correct"] == 0.5)

# %% [markdown]
# ## Exercises
# 1. Compute ROUGE-2 of `cand` against `ref` by hand (bigram overlap, then F) and compare with
#    the printed `rouge2` (answer: 10 of the 11 bigrams of each match, F = 10/11 = 0.909: only
#    the bigram across the reordering point differs).
# 2. Why does perplexity drop from stride 256 to 128 but not further to 64? (With stride 128
#    every scored token after the first window sees at least 128 tokens of context; SmolLM2's
#    predictions gain little from context beyond that on the sonnets, and 512 tokens are few:
#    the numbers move by noise.)
# 3. Score a reply with the right tool name and a wrong argument value by hand: which of the
#    three task metrics count it? (tool_name_accuracy yes, exact_match no, answer_correct only
#    if the final answer still holds the right result; check with `score` on a record like the
#    `bad` one above.)
