# %% [markdown]
# # Full fine-tuning with TRL's SFTTrainer
#
# Supervised fine-tuning (SFT) continues next-token training on conversations that show the
# behaviour we want. Two details decide whether it works:
#
# * **Loss on the assistant's turns only.** The system prompt and the user's words are context,
#   not something to imitate: their labels are -100, which cross-entropy ignores.
# * **The chat template.** Train on exactly the text the model will see when it is used.
#
# Full fine-tuning updates all 135M weights: AdamW keeps two more float32 numbers per weight, so
# it needs ~4x the model's memory and writes a full model. The task: the built-in tool-calling
# conversations (data/toolcalls.py).

# %%
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.data import shakespeare
from llm_deeper.pretrained import models

from _common import OUT, QUICK, check

if not models.is_cached("smollm2-135m") or not shakespeare.is_cached():
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' and "
                     "'llm-deeper data pull shakespeare' first")

from llm_deeper.data.toolcalls import tool_calling_dataset
from llm_deeper.hf.finetune import finetune, tokenize_conversation
from llm_deeper.hf.models import load

data = tool_calling_dataset(n_train=64 if QUICK else 400, n_val=8, n_test=1)
model, tok = load("smollm2-135m")

# %% [markdown]
# ## Which tokens are learned
# Each turn is rendered through the chat template; only the assistant's tokens keep their ids as
# labels.

# %%
ex = tokenize_conversation(tok, data["train"][0]["messages"], 512)
learned = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
print(f"{len(ex['input_ids'])} tokens, {len(learned)} learned:")
print(repr(tok.decode(learned)))
check("only assistant text is learned", "<tool_call>" in tok.decode(learned)
      and "You can call tools" not in tok.decode(learned))


def assistant_loss(m, rows) -> float:
    """Mean cross-entropy over the assistant tokens of some conversations."""
    total = count = 0.0
    with torch.inference_mode():
        for r in rows:
            t = tokenize_conversation(tok, r["messages"], 512)
            out = m(input_ids=torch.tensor([t["input_ids"]]), labels=torch.tensor([t["labels"]]))
            n = sum(lab != -100 for lab in t["labels"][1:])
            total, count = total + out.loss.item() * n, count + n
    return total / count


before = assistant_loss(model, data["validation"])
print(f"validation loss on assistant tokens, base model: {before:.3f} "
      f"(perplexity {math.exp(before):.1f})")
del model

# %% [markdown]
# ## Training
# `finetune` (hf/finetune.py) wraps SFTTrainer: float32 on CPU (bf16 on CUDA), no packing,
# cosine schedule with warmup, checkpoints to resume from.

# %%
steps = 4 if QUICK else 40
r = finetune("smollm2-135m", data["train"], str(OUT / "full-ft"), method="full", steps=steps,
             batch_size=2 if QUICK else 4, lr=5e-5, max_length=512, progress=not QUICK)
print({k: r[k] for k in ("trainable_params", "total_params", "train_loss", "seconds")})
check("full fine-tuning trains every weight", r["trainable_params"] == r["total_params"])

tuned, _ = load(r["output"])
after = assistant_loss(tuned, data["validation"])
print(f"validation loss after {steps} steps: {after:.3f} (perplexity {math.exp(after):.1f})")
print(f"written: {r['output']} ({r['weights_bytes'] / 1e6:.0f} MB: a whole model)")
check("the held-out loss went down", after < before)

# %% [markdown]
# ## Exercises
# 1. How much memory does full fine-tuning of SmolLM2 take in float32 with AdamW, before
#    activations? (Answer: 16 bytes per weight, weights 4 + gradients 4 + two moments 8:
#    16 x 134,515,008 = 2.15 GB; `llm-deeper calc memory --model smollm2-135m --context 512`
#    prints the same 0.538 + 0.538 + 1.076 GB, and 0.76 GB of activations for one sequence.)
# 2. In the printed example, 52 of 339 tokens are learned. Which are they? (The assistant's two
#    turns: the tool call and the final answer, each with its `<|im_end|>`; the system prompt,
#    the user's request and the tool's result are context.)
# 3. Set every label to the token itself (learn the whole conversation). What would the model
#    learn to produce besides answers? (The system prompt and the user's words, and tool
#    results it never computed: at inference it might write the tool's answer itself instead
#    of calling the tool.)
