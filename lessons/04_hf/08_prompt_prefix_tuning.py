# %% [markdown]
# # Prompt tuning and prefix tuning: the model frozen, a few virtual tokens trained
#
# LoRA changes weights. Prompt tuning (Lester et al. 2021) and prefix tuning (Li & Liang 2021)
# change nothing in the model: they learn a context that is put in front of every input.
#
# * **Prompt tuning** learns $n$ vectors of size $d_{model}$ fed to the first layer as if they
#   were the embeddings of $n$ tokens no vocabulary has: $n \cdot d_{model}$ numbers.
# * **Prefix tuning** learns, for every layer, the keys and values those $n$ positions would
#   leave in the KV cache: $n \cdot n_{layer} \cdot 2 \cdot n_{kv} \cdot d_{head}$ numbers.
#
# We check both statements against PEFT on SmolLM2-135M: counted by hand, rebuilt by hand from
# the base model (embeddings concatenated; `past_key_values`), then trained a few steps. The
# measured runs on the tool-calling task are in docs/finetuning.md.

# %%
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.pretrained import models

from _common import OUT, QUICK, check

if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")

from peft import LoraConfig, PrefixTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from llm_deeper.data.toolcalls import tool_calling_dataset
from llm_deeper.hf.finetune import (
    DEFAULT_LR,
    INIT_TEXT,
    NUM_VIRTUAL_TOKENS,
    init_prefix_from_text,
    prefix_as_cache,
    set_prefix,
    tokenize_conversation,
    virtual_token_config,
)
from llm_deeper.hf.models import hf_dir, load

torch.manual_seed(0)
torch.set_num_threads(1)  # short inputs: a second thread only waits (util/threads.py)
base, tok = load("smollm2-135m")
cfg = base.config
N = sum(p.numel() for p in base.parameters())
n, d, L = NUM_VIRTUAL_TOKENS, cfg.hidden_size, cfg.num_hidden_layers
n_kv, hd = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
print(f"SmolLM2-135M: {N:,} parameters, d_model {d}, {L} layers, {cfg.num_attention_heads} "
      f"query heads and {n_kv} KV heads of {hd}; {n} virtual tokens")

# %% [markdown]
# ## 1. What trains, by hand and by PEFT
# Prompt: $n \cdot d_{model}$. Prefix: a key and a value per layer and virtual token, each
# $n_{kv} \cdot d_{head}$ wide (192 for SmolLM2's grouped-query attention, not $d_{model}$ = 576).
# Li & Liang trained the prefix through an MLP (`prefix_projection=True` in PEFT: an embedding
# of $n \times w$, then $w \to h \to n_{layer} \cdot 2 w$ with $w = n_{kv} d_{head}$ and PEFT's
# default $h = w$); only its output, the prefix, is kept after training. We train the prefix
# directly, as PEFT does by default. LoRA r=16 on every linear layer of the blocks for scale,
# built on the meta device (counting needs shapes, not values).

# %%
prompt = get_peft_model(base, virtual_token_config("prompt", n, "text", hf_dir("smollm2-135m")))
prefix = get_peft_model(base, virtual_token_config("prefix", n))
with torch.device("meta"):
    shell = AutoModelForCausalLM.from_config(cfg)
lora = get_peft_model(copy.deepcopy(shell), LoraConfig(r=16, lora_alpha=32,
                                                       target_modules="all-linear",
                                                       task_type="CAUSAL_LM"))
mlp = get_peft_model(shell, PrefixTuningConfig(num_virtual_tokens=n, prefix_projection=True,
                                               task_type="CAUSAL_LM"))
w = n_kv * hd
f = cfg.intermediate_size
shapes = [(d, d), (d, w), (d, w), (d, d), (d, f), (d, f), (f, d)]  # q k v o gate up down
by_hand = {"prompt tuning": n * d,
           "prefix tuning": n * L * 2 * n_kv * hd,
           "prefix via MLP": n * w + (w * w + w) + (w * L * 2 * w + L * 2 * w),
           "LoRA r=16": L * sum(16 * (i + o) for i, o in shapes)}
trainable = {}
print(f"{'method':<15} {'by hand':>10} {'PEFT':>10} {'share':>9}")
for name, peft_model in zip(by_hand, (prompt, prefix, mlp, lora)):
    trainable[name], _ = peft_model.get_nb_trainable_parameters()
    print(f"{name:<15} {by_hand[name]:>10,} {trainable[name]:>10,} "
          f"{100 * trainable[name] / (N + trainable[name]):>8.4f}%")
    check(f"{name}: PEFT's count = by hand", trainable[name] == by_hand[name])
print(f"LoRA r=16 trains {trainable['LoRA r=16'] / trainable['prompt tuning']:.0f} x prompt "
      f"tuning and {trainable['LoRA r=16'] / trainable['prefix tuning']:.0f} x prefix tuning")
check("prompt < prefix < LoRA in trainable parameters",
      trainable["prompt tuning"] < trainable["prefix tuning"] < trainable["LoRA r=16"])

# %% [markdown]
# ## 2. Prompt tuning is concatenated embeddings
# Started from text (PEFT's TEXT init: the embeddings of `INIT_TEXT`'s tokens, repeated or cut
# to $n$), the virtual tokens are that text, so the model computes what it computes with the
# text typed in front. Then we give them other values, as training would, and rebuild PEFT's
# output ourselves: the base model fed `inputs_embeds = concat(virtual, embed(ids))`.

# %%
x = tok("Add 7 and 5.", return_tensors="pt")["input_ids"]
T = x.shape[1]
text_ids = tok(INIT_TEXT, add_special_tokens=False)["input_ids"]
text_ids = (text_ids * (n // len(text_ids) + 1))[:n]
P = prompt.prompt_encoder["default"].embedding.weight
embed = base.get_input_embeddings()
with torch.no_grad():
    start = prompt(input_ids=x).logits
    typed = base(input_ids=torch.cat([torch.tensor([text_ids]), x], 1)).logits
    err_text = float((start - typed).abs().max())
    P.add_(0.05 * torch.randn_like(P))  # as if trained
    theirs = prompt(input_ids=x).logits
    mine = base(inputs_embeds=torch.cat([P[None], embed(x)], 1)).logits
err = float((theirs - mine).abs().max())
print(f"PEFT's logits: {tuple(theirs.shape)} ({n} virtual + {T} real positions)")
print(f"text init vs the text typed in: max |diff| = {err_text:.1e}; "
      f"trained-like prompt vs concat by hand: {err:.1e}")
check("a text-initialised prompt = the text typed in front (1e-4)", err_text < 1e-4)
check("prompt tuning = base model on concat(virtual, token embeddings) (1e-4)", err < 1e-4)

# %% [markdown]
# ## 3. Prefix tuning is a KV cache
# PEFT hands the base model `past_key_values`: layer by layer, keys and values of shape
# (batch, $n_{kv}$, $n$, $d_{head}$), as if $n$ tokens had been read before the input. The
# input's positions start at $n$. We start the prefix from the cache the model builds for the
# same text (`init_prefix_from_text`; Li & Liang initialise from real words too), which makes it
# the text-initialised prompt exactly; then we rebuild PEFT's output with a `DynamicCache`.

# %%
init_prefix_from_text(prefix, tok)
with torch.no_grad():
    err_init = float((prefix(input_ids=x).logits - start[:, n:]).abs().max())
    W = prefix.prompt_encoder["default"].embedding.weight
    W.add_(0.05 * torch.randn_like(W))
    theirs = prefix(input_ids=x).logits
    cache = prefix_as_cache(prefix)
    k0 = cache.layers[0].keys
    mine = base(input_ids=x, past_key_values=cache).logits
err = float((theirs - mine).abs().max())
print(f"PEFT stores the prefix as {tuple(W.shape)} = ({n}, {L} x 2 x {n_kv} x {hd}); as a cache: "
      f"{len(cache.layers)} layers, keys {tuple(k0.shape)}")
print(f"text-initialised prefix vs prompt: {err_init:.1e}; prefix vs cache by hand: {err:.1e}")
check("a text-initialised prefix = the text-initialised prompt (1e-4)", err_init < 1e-4)
check("prefix tuning = base model with the prefix as past_key_values (1e-4)", err < 1e-4)

# %% [markdown]
# Every prompt is a prefix: the cache the base model computes for the virtual embeddings $P$
# is a prefix giving the same outputs. The converse fails: a prefix sets keys and values in
# every layer freely, which no input to the first layer need produce; that is what the extra
# parameters buy.

# %%
with torch.no_grad():
    set_prefix(prefix, base(inputs_embeds=P[None], use_cache=True).past_key_values)
    err = float((prefix(input_ids=x).logits - prompt(input_ids=x).logits[:, n:]).abs().max())
print(f"prefix = cache of the prompt P: max |diff| = {err:.1e}")
check("every prompt is a prefix (1e-4)", err < 1e-4)

# %% [markdown]
# ## 4. A few optimizer steps lower the loss
# The loss on the assistant's tokens only (labels -100 elsewhere, `tokenize_conversation`), on
# short conversations of the task (the system prompt left out to keep this fast: one
# conversation and 2 steps in quick mode, two and 5 steps otherwise), with the
# optimizer and peak learning rate `llm-deeper finetune` uses (AdamW; 3e-2 for the prompt,
# 1e-2 for the prefix: see docs/finetuning.md). Gradients reach the virtual tokens through
# every frozen layer.

# %%
rows = tool_calling_dataset(n_train=1 if QUICK else 2, n_val=1, n_test=1)["train"]
enc = [tokenize_conversation(tok, r["messages"][1:3], 256) for r in rows]
width = max(len(e["input_ids"]) for e in enc)
batch = {"input_ids": torch.tensor([e["input_ids"] + [tok.eos_token_id] * (width - len(
             e["input_ids"])) for e in enc]),
         "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(
             e["input_ids"])) for e in enc]),
         "labels": torch.tensor([e["labels"] + [-100] * (width - len(e["labels"]))
                                 for e in enc])}
steps = 2 if QUICK else 5
losses = {}
for method, model in (("prompt", prompt), ("prefix", prefix)):
    if method == "prefix":
        init_prefix_from_text(prefix, tok)
    else:
        with torch.no_grad():
            P.copy_(embed(torch.tensor(text_ids)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=DEFAULT_LR[method], weight_decay=0.0)
    t0, trace = time.perf_counter(), []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        trace.append(loss.item())
    with torch.no_grad():
        trace.append(model(**batch).loss.item())
    losses[method] = trace
    print(f"{method}: loss {' -> '.join(f'{v:.3f}' for v in trace)} "
          f"({time.perf_counter() - t0:.1f} s, {int(batch['labels'].ne(-100).sum())} "
          f"assistant tokens)")
    check(f"{steps} {method}-tuning steps lower the loss on the batch", trace[-1] < trace[0])

# %% [markdown]
# ## 5. (full mode) Training on the task and scoring held-out tool calls
# `finetune` is what `llm-deeper finetune --method prompt|prefix` runs: TRL's SFTTrainer with
# the loss on the assistant's turns, here 16 steps of 2 conversations as in the measured runs of
# docs/finetuning.md, then each of 40 held-out requests played to the end. About 25 minutes on a
# 2-core CPU (estimated from those runs: 5-6 minutes of training and 3-6 of evaluation per
# method); the quick mode stops before this cell.

# %%
if not QUICK:
    from llm_deeper.hf.finetune import finetune
    from llm_deeper.hf.toolcall_eval import play, score

    data = tool_calling_dataset(n_train=1200, n_val=1, n_test=40)
    for method in ("prompt", "prefix"):
        r = finetune("smollm2-135m", data["train"], str(OUT / f"tools-{method}"), method=method,
                     steps=16, batch_size=2)
        model, tok_ = load("smollm2-135m", adapter=r["output"])
        res = score(data["test"], play(model, tok_, data["test"]), text_metrics=False)
        print(f"{method}: {r['trainable_params']:,} trainable, adapter "
              f"{r['weights_bytes'] / 1e3:.0f} kB, {r['seconds']:.0f} s, train loss "
              f"{r['train_loss']:.3f}; held-out {res}")
        check(f"{method}: metrics are fractions", all(0 <= v <= 1 for k, v in res.items()
                                                      if k != "examples"))

# %% [markdown]
# ## Exercises
# 1. With 50 virtual tokens instead of 20, how many parameters do prompt and prefix tuning
#    train on SmolLM2? Answer: $50 \cdot 576 = 28{,}800$ and $50 \cdot 30 \cdot 2 \cdot 192 =
#    576{,}000$; set `n = 50` in the first code cell and the count checks of section 1 tell you.
# 2. Start the prefix at random instead (`virtual_token_config("prefix", n)` alone, without
#    `init_prefix_from_text`: PEFT draws every key and value from N(0, 1)) and print the loss on
#    `batch` before training. You should see 7 to 9 nats (depending on the seed) instead of the
#    2.5 of the text start: random keys and values in every layer wreck the model.
# 3. Prompt tuning from random vectors (`virtual_token_config("prompt", n, "random")`): PEFT
#    draws them from N(0, 1), about 7 times the RMS of SmolLM2's token embeddings (0.136). Check
#    the two RMS values with `P.pow(2).mean().sqrt()` and `embed.weight.pow(2).mean().sqrt()`.
