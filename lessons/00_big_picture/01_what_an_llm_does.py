# %% [markdown]
# # What an LLM does, measured on a real one
#
# A language model is one function: the tokens so far in, a probability for every possible next
# token out,
#
# $$p_\theta(x_{t+1} \mid x_1, \dots, x_t) = \mathrm{softmax}(z)_{x_{t+1}}, \qquad
# \mathrm{softmax}(z)_i = \frac{e^{z_i}}{\sum_j e^{z_j}},$$
#
# where $z$ (the logits, one per vocabulary entry) comes out of the transformer. Everything else
# (training, fine-tuning, serving) computes, improves or delivers that distribution. Here each
# claim of the overview is measured on SmolLM2-135M-Instruct with our PyTorch engine: the next
# token, generation one token at a time, the context window, learning from examples in the
# prompt, and what pre-training, fine-tuning and inference cost. docs/big-picture.md has the
# figures of the full run and the sources.

# %%
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.pretrained import models

from _common import QUICK, check

if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")

from llm_deeper.config import ModelConfig
from llm_deeper.errors import UserError
from llm_deeper.evaluation import icl
from llm_deeper.generation import run, stream
from llm_deeper.pretrained.weights import load_gguf
from llm_deeper.sampling import SamplingParams
from llm_deeper.torch_engine.generate import greedy_batch, next_logits_fn
from llm_deeper.torch_engine.model import TorchGPT

pre = load_gguf(models.gguf_file("smollm2-135m"))
cfg, tok = pre.config, pre.tokenizer
model = TorchGPT(cfg, pre.params).eval()
N = sum(p.numel() for p in model.parameters())
print(f"SmolLM2-135M-Instruct: {N:,} parameters, {cfg.n_layer} layers, d_model {cfg.d_model}, "
      f"vocabulary {cfg.vocab_size:,}, context {cfg.context_length:,} tokens")
check("the parameters counted from the config = the loaded ones", N == cfg.n_params())

# %% [markdown]
# ## 1. Next-token prediction
# The overview's picture says P("Paris") = 0.92 for "The capital of France is"; that number is an
# illustration. Here is what a 135M model actually gives: the logits of the last position, a
# softmax, the five most likely tokens. The softmax is computed twice, by torch and by hand
# (subtracting the largest logit first, which changes nothing but avoids overflow).

# %%
prompt = "The capital of France is"
ids = tok.encode(prompt)
with torch.inference_mode():
    z = model(torch.tensor([ids]))[0][0, -1].double()  # (vocab,) logits of the next token
probs = torch.softmax(z, -1).numpy()
e = np.exp(z.numpy() - z.numpy().max())
by_hand = e / e.sum()
top = np.argsort(-probs)[:5]
print(f"{prompt!r} ->")
for i in top:
    print(f"  {tok.decode([int(i)])!r:>10}  p = {probs[i]:.3f}   logit {z[i]:6.2f}")
check("probabilities = softmax of the logits, by hand", np.allclose(probs, by_hand, rtol=1e-12))
check("the most likely next token is ' Paris'", tok.decode([int(top[0])]) == " Paris")

# %% [markdown]
# ## 2. Autoregression: one token at a time, fed back
# Generation appends the chosen token and runs the model again. Greedy decoding chooses the
# argmax. By hand we recompute the whole sequence every step; the package keeps a KV cache
# (lessons/03_modern/01_kv_cache.py) and gets the same tokens with one new row per step.

# %%
n_new = 8 if QUICK else 24
seq = list(ids)
with torch.inference_mode():
    for _ in range(n_new):
        seq.append(int(model(torch.tensor([seq]))[0][0, -1].argmax()))
hand = seq[len(ids):]
batch = greedy_batch(model, torch.tensor([ids]), n_new)[0].tolist()
streamed = run(stream(next_logits_fn(model), tok, ids,
                      SamplingParams(temperature=0, max_tokens=n_new))).token_ids
print(f"{prompt}{tok.decode(hand)!r}")
check("the hand loop = greedy_batch (KV cache)", hand == batch)
check("= generation.stream with temperature 0", hand == streamed)

# %% [markdown]
# ## 3. The context window
# SmolLM2 was trained on sequences of up to 8,192 tokens; RoPE positions past that were never
# seen, so the engines refuse a longer input (`ModelConfig.check_input`, one sentence, a
# `UserError`). Generation that runs past the window drops the oldest tokens instead:
# `generation.cached_next_logits` starts a new cache on the last context_length - 1 tokens, and
# the model has then forgotten the beginning. Shown on a random model with a 16-token context,
# so it is cheap.

# %%
check("SmolLM2's context is 8,192 tokens", cfg.context_length == 8192)
tiny_cfg = ModelConfig(vocab_size=64, context_length=16, n_layer=2, n_head=4, n_kv_head=2,
                       d_model=32, d_ff=64, norm="rmsnorm", activation="swiglu", position="rope")
tiny = TorchGPT(tiny_cfg, seed=0).eval()
long = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(0))
try:
    tiny(long)
    refused = ""
except UserError as exc:
    refused = str(exc)
print("40 tokens into a 16-token model:", refused)
check("the engine refuses a sequence longer than its context", "context_length (16)" in refused)

next_logits, state, seq = next_logits_fn(tiny), {}, long[0].tolist()
with torch.inference_mode():
    for step in range(4):  # generation past the window: the model sees only the last tokens
        logits = next_logits(seq, state)
        seen = state["pos"]  # tokens in the cache now
        ref = tiny(torch.tensor([seq[-seen:]]))[0][0, -1].numpy()
        print(f"  sequence of {len(seq)} tokens: the model sees the last {seen}")
        check(f"step {step}: logits = the model run on the last {seen} tokens",
              seen in (15, 16) and np.allclose(logits, ref, atol=1e-5))
        seq.append(int(logits.argmax()))

# %% [markdown]
# ## 4. In-context learning, measured
# No weight changes: examples in the prompt are the only teacher. The task is country -> capital
# (`llm_deeper/evaluation/icl.py`): demonstrations come from a pool of 20 pairs, queries from 65
# held-out countries that share no country or capital with the pool; the answer is the first
# line of the greedy continuation and must match exactly. A 2-shot prompt:

# %%
demo_prompt = icl.build_prompt([("France", "Paris"), ("Japan", "Tokyo")], "Germany")
print(demo_prompt)
check("a k-shot prompt is k example lines, then the query",
      demo_prompt == "France -> Paris\nJapan -> Tokyo\nGermany ->")
pool_words = {w for pair in icl.DEMO_POOL for w in pair}
check("no held-out country or capital appears among the demonstrations",
      not pool_words & {w for pair in icl.HELD_OUT for w in pair})
check("the scorer takes the first line, exactly",
      icl.is_correct(" Berlin\nFrance -> Paris", "Berlin")
      and not icl.is_correct(" Berlin, Germany", "Berlin")
      and not icl.is_correct(" berlin", "Berlin"))

# %% [markdown]
# Zero-shot, "Germany ->" alone does not say what is wanted; SmolLM2 mostly answers with numbers
# or repeats the country. From three examples on it answers with capitals. The full run (all 65
# queries, three demonstration draws; docs/big-picture.md has the table and the command):
#
# | k | draw 0 | draw 1 | draw 2 |
# |---|---|---|---|
# | 0 | 0.00 | | |
# | 1 | 0.02 | 0.00 | 0.00 |
# | 3 | 0.42 | 0.38 | 0.34 |
# | 5 | 0.49 | 0.48 | 0.37 |
#
# One example is not enough for a 135M model: it copies the country. The spread between draws
# (0.37 to 0.49 at k = 5) is as large as the step from 3 to 5 shots: which examples you show
# matters as much as how many. Quick mode measures k = 0, 3, 5 on the first 15 queries, one draw.

# %%
res = icl.run(model, tok, shots=(0, 3, 5) if QUICK else (0, 1, 3, 5),
              seeds=(0,) if QUICK else (0, 1, 2), n_queries=15 if QUICK else None)
acc = {k: v[0] for k, v in res["accuracy"].items()}  # draw 0
zero, five = res["results"][0], [r for r in res["results"] if r.k == 5][0]
for (x, y), a0, a5 in list(zip(icl.HELD_OUT, zero.answers, five.answers))[:6]:
    print(f"  {x:>12} -> {y:<12} zero-shot: {a0!r:<14} 5-shot: {a5!r}")
check(f"few-shot beats zero-shot on {res['queries']} queries (k=0: {acc[0]:.2f}, "
      f"k=3: {acc[3]:.2f}, k=5: {acc[5]:.2f})", min(acc[3], acc[5]) > acc[0])

# %% [markdown]
# ## 5. Emergent abilities (cited, not demonstrated)
# Wei et al. (2022) call an ability emergent when it is absent in smaller models and present in
# larger ones, so it cannot be extrapolated from the small ones. Their Table 1 lists, e.g., 3-digit
# addition few-shot appearing in GPT-3 at 13B parameters (2.3e22 training FLOPs), MMLU at 175B
# (3.1e23), chain-of-thought on math word problems with LaMDA at 68B (1.3e23). Schaeffer et al.
# (2023) answer that over 92 % of BIG-Bench's emergent abilities are measured with exact string
# match or multiple-choice grade: an answer of $L$ tokens, each right with probability $p$, is
# right with probability $p^L$, so a smooth rise of $p$ looks like a jump (with $L = 5$,
# $p = 0.5 \to 0.9$ gives $0.03 \to 0.59$); under per-token metrics the curves are smooth. Our
# exact-match scorer above is such a metric.

# %% [markdown]
# ## 6. Why "large": compute from $C \approx 6 N D$
# Training costs about 6 FLOPs per parameter per token (Kaplan et al. 2020): 2 for the forward
# pass (a multiply and an add per weight), 4 for the backward pass (gradients for the
# activations and for the weights). Generating costs the forward pass only, about $2N$ per token.

# %%
from llm_deeper import sizing  # the calculators behind `llm-deeper calc` (docs/sizing.md)


def training_flops(arch: sizing.Arch, tokens: float) -> float:
    """C = 6 N D, N counted exactly from the model's shape by the calculator."""
    return sizing.training_flops(arch, tokens)["rule_6ND"]


SMOL = sizing.from_config(cfg, "SmolLM2-135M")
GPT3 = sizing.from_hf({"model_type": "gpt2", "n_embd": 12288, "n_head": 96, "n_layer": 96,
                       "n_positions": 2048, "vocab_size": 50257})  # Brown et al. 2020, Table 2.1
LLAMA_405B = sizing.from_hf({  # Llama 3.1 405B's published config.json
    "model_type": "llama", "hidden_size": 16384, "num_attention_heads": 128,
    "num_key_value_heads": 8, "num_hidden_layers": 126, "intermediate_size": 53248,
    "vocab_size": 128256, "tie_word_embeddings": False, "max_position_embeddings": 131072})
MODELS = [  # name, shape, training tokens, FLOPs as reported (None: not published)
    ("SmolLM2-135M", SMOL, 2e12, None),  # 2T tokens: model card / Allal et al. 2025
    ("GPT-3 175B", GPT3, 300e9, 3.14e23),  # Brown et al. 2020, sec. 2.2 and Table D.1
    ("Llama 3.1 405B", LLAMA_405B, 15.6e12, 3.8e25),  # Llama 3 paper (Dubey et al. 2024)
]
check("the calculator counts SmolLM2's parameters exactly", sizing.params(SMOL)["total"] == N)
for name, arch, d, reported in MODELS:
    n, c = sizing.params(arch)["total"], training_flops(arch, d)
    note = f"reported {reported:.2e}" if reported else "not reported"
    print(f"  {name:<15} N = {n:.3g}  D = {d:.3g} tokens  6ND = {c:.2e} FLOPs ({note})")
    if reported:
        check(f"{name}: 6ND within 1.5 % of the reported compute", abs(c / reported - 1) < 0.015)

# %% [markdown]
# The forward pass of our engine, counted by torch's FLOP counter: every matrix multiply costs
# 2 FLOPs per weight per token (the tied embedding counts once, as the output head; the norms'
# weights are not multiplied), plus attention's own $QK^T$ and $PV$, small for short sequences.

# %%
from torch.utils.flop_counter import FlopCounterMode

T = 16
with FlopCounterMode(display=False) as counter, torch.inference_mode():
    model(torch.tensor([(ids * 4)[:T]]))  # 16 tokens
mm = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "mm" in str(op))
norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
per_token = counter.get_total_flops() / T
print(f"forward, {T} tokens: {per_token / 1e6:.1f} MFLOPs per token; 2N = {2 * N / 1e6:.1f} M")
check("matrix multiplies = 2 x (parameters - norm weights) per token", mm == 2 * (N - norms) * T)
check("a forward pass is ~2N FLOPs per token", abs(per_token / (2 * N) - 1) < 0.01)

# %% [markdown]
# ## 7. Pre-training vs fine-tuning vs inference
# The same formula prices all three phases for SmolLM2: pre-training on 2T tokens, fine-tuning
# on a million tokens (a large instruction set; LoRA skips the weight gradients of the frozen
# matrices, about a third of it), and one 200-token answer ($2N$ per token). In GPU time:
# Llama 3.1 405B's 3.8e25 FLOPs took 30.84M H100-hours (its model card), an effective
# 342 TFLOP/s per GPU, 35 % of the H100's 989 TFLOP/s dense bf16 peak; at that rate SmolLM2's
# pre-training is about 1,300 H100-hours (our estimate: its cost is not published).

# %%
pretrain, finetune, answer = training_flops(SMOL, 2e12), training_flops(SMOL, 1e6), 2 * N * 200
print(f"pre-training {pretrain:.2e} FLOPs | fine-tuning on 1M tokens {finetune:.2e} | "
      f"one 200-token answer {answer:.2e}")
print(f"pre-training = {pretrain / finetune:,.0f} fine-tunings = {pretrain / answer:.1e} answers")
per_gpu = 3.8e25 / (30.84e6 * 3600)  # FLOP/s per H100, Llama 3.1 405B's run
h100_hours = pretrain / per_gpu / 3600
print(f"Llama 3.1 405B: {per_gpu / 1e12:.0f} TFLOP/s per H100 ({per_gpu / 989e12:.0%} of peak); "
      f"SmolLM2-135M at that rate: {h100_hours:,.0f} H100-hours")
check("pre-training on 2T tokens = 2 million fine-tunings on 1M", round(pretrain / finetune) == 2e6)
check("Llama 3.1's run used its GPUs at 30-40 % of peak", 0.30 < per_gpu / 989e12 < 0.40)

# %% [markdown]
# ## 8. The fine-tuning family: what each trains, counted by PEFT and by hand
# Full fine-tuning trains every weight. LoRA (Hu et al. 2021) trains $r(d_{in} + d_{out})$ per
# adapted matrix; QLoRA (Dettmers et al. 2023) trains the same adapters over a base stored in
# 4-bit NF4. Prompt tuning (Lester et al. 2021) learns $n_{virtual} \cdot d_{model}$ input
# embeddings; prefix tuning (Li & Liang 2021) learns a key and a value per virtual token in
# every layer. PEFT builds each on SmolLM2's config on the meta device: counting needs shapes,
# not values.

# %%
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from llm_deeper.hf.models import hf_dir

hf_cfg = AutoConfig.from_pretrained(hf_dir("smollm2-135m"))


def fresh():
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_cfg)


base = fresh()
check("the transformers model has exactly our parameters",
      sum(p.numel() for p in base.parameters()) == N)
r, nv = 16, 20
d, f, L = cfg.d_model, cfg.d_ff, cfg.n_layer
kv = cfg.n_kv_head * cfg.head_dim  # 3 x 64 = 192: K and V are narrower than d_model (GQA)
shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)]  # q k v o gate up down
by_hand = {"LoRA r=16": L * sum(r * (i + o) for i, o in shapes),
           "prompt tuning": nv * d,
           "prefix tuning": nv * 2 * L * kv}
configs = {"LoRA r=16": LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                   task_type="CAUSAL_LM"),
           "prompt tuning": PromptTuningConfig(num_virtual_tokens=nv, task_type="CAUSAL_LM"),
           "prefix tuning": PrefixTuningConfig(num_virtual_tokens=nv, task_type="CAUSAL_LM")}
trainable = {"full": N}
for name, pc in configs.items():
    trainable[name], _ = get_peft_model(fresh(), pc).get_nb_trainable_parameters()
    check(f"{name}: PEFT's count = by hand ({by_hand[name]:,})", trainable[name] == by_hand[name])
trainable["QLoRA r=16"] = trainable["LoRA r=16"]
print(f"prefix tuning with d_model instead of the KV width would be {nv * 2 * L * d:,}: PEFT "
      f"sizes the prefix by n_kv_head x head_dim = {kv} for a GQA model")

# %% [markdown]
# Memory to train, weights and optimizer only (activations left out): a frozen weight costs its
# storage (bf16: 2 bytes; NF4 with double quantization: $4 + 8/64 + 32/(64 \cdot 256) = 4.127$
# bits, QLoRA's figure); a trained one costs 16 bytes in mixed-precision AdamW (bf16 weight and
# gradient, fp32 master copy and two moments: ZeRO's accounting, Rajbhandari et al. 2020).
# QLoRA quantizes the blocks' linear layers; embeddings and norms stay in bf16.

# %%
linear = L * sum(i * o for i, o in shapes)
embed_and_norms = N - linear
nf4_bytes = linear * (4 + 8 / 64 + 32 / (64 * 256)) / 8
print(f"{'method':<14} {'trainable':>11} {'share':>8} {'frozen base':>12} {'+ training':>11}")
for name, n_train in trainable.items():
    frozen = (0 if name == "full" else
              nf4_bytes + 2 * embed_and_norms if name.startswith("QLoRA") else 2 * N)
    print(f"{name:<14} {n_train:>11,} {100 * n_train / N:>7.3f}% {frozen / 1e6:>9.1f} MB "
          f"{(frozen + 16 * n_train) / 1e6:>8.1f} MB")
check("the blocks' linear layers + embeddings + norms = all parameters",
      linear + cfg.vocab_size * d + norms == N)
check("LoRA trains 3.63 % of SmolLM2, prompt tuning < 0.01 %",
      round(100 * trainable["LoRA r=16"] / N, 2) == 3.63 and trainable["prompt tuning"] / N < 1e-4)

# %% [markdown]
# ## Exercises
# 1. Replace France by Italy in section 1's prompt and predict the most likely next token;
#    then put your answer in place of `" Paris"` in that cell's last check and rerun. (You
#    should find `' Rome'` with p = 0.38, against 0.77 for Paris: the model is less sure, and
#    `' Florence'` gets 0.09.)
# 2. With $C \approx 6ND$: what does fine-tuning SmolLM2 for 48 steps of 4 sequences of 512
#    tokens cost? Compute it with `training_flops(SMOL, 48 * 4 * 512)` (answer: $6 \times
#    134{,}515{,}008 \times 98{,}304 \approx 7.9 \cdot 10^{13}$ FLOPs: a quarter of a second
#    of an H100 at the 342 TFLOP/s of section 7, about 13 minutes of a laptop CPU at
#    $10^{11}$ FLOP/s).
# 3. Set `r = 8` in section 8 and predict LoRA's trainable share before running (answer: half of
#    3.63 %, because $r(d_{in} + d_{out})$ is linear in $r$; the PEFT-vs-hand check still passes,
#    the last check fails since it states 3.63 %).
