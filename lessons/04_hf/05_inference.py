# %% [markdown]
# # Inference with a fine-tuned model: adapter, merged model, tool calls run for real
#
# A LoRA adapter is used in one of two ways: loaded on top of the base model with PEFT (one base
# in memory, adapters swapped per request — how servers host many fine-tunes), or merged into the
# weights (`llm-deeper merge`) for a plain model with no PEFT at run time. Both must generate the
# same tokens. Then the agent loop: the model writes `<tool_call>{...}</tool_call>`, we parse it,
# run the real tool, hand the result back as a `tool` message, and the model answers.
#
# It uses the adapter from `llm-deeper finetune ... --out runs/tools-lora` when there is one
# (docs/hf.md), else trains a small one first (a few steps: it will call tools less well).

# %%
import datetime
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

from llm_deeper.chat.reply import parse_tool_calls
from llm_deeper.chat.tools import run_call, tools_system_prompt
from llm_deeper.data.toolcalls import tool_calling_dataset
from llm_deeper.hf.finetune import finetune
from llm_deeper.hf.models import load, merge

adapter = Path("runs/tools-lora/adapter")
if QUICK or not (adapter / "adapter_config.json").is_file():
    rows = tool_calling_dataset(n_train=64, n_val=1, n_test=1)["train"]
    adapter = Path(finetune("smollm2-135m", rows, str(OUT / "lora"), steps=1 if QUICK else 30,
                            batch_size=2, lr=1e-3, progress=not QUICK)["output"])
print("adapter:", adapter)

# %% [markdown]
# ## PEFT on top of the base, and the merged model

# %%
peft_model, tok = load("smollm2-135m", adapter=str(adapter))
merged_dir = merge("smollm2-135m", str(adapter), str(OUT / "merged"))
merged, _ = load(merged_dir)
print(type(peft_model).__name__, "vs", type(merged).__name__)


def reply(model, messages, n=16 if QUICK else 64):
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, temperature=None,
                             top_p=None, top_k=None, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


messages = [{"role": "system", "content": tools_system_prompt()},
            {"role": "user", "content": "How many days are there from 2025-03-01 to 2025-12-25?"}]
a, b = reply(peft_model, messages), reply(merged, messages)
print("PEFT:  ", a)
print("merged:", b)
check("adapter on top and merged model answer alike", a == b)

# %% [markdown]
# ## The agent loop
# Parse the calls, run them, feed back the results, let the model finish.

# %%
calls, text = parse_tool_calls(a)
print("calls:", calls, "| other text:", repr(text))
if calls:
    for c in calls:
        result = run_call(c)
        print(f"  ran {c['name']}({c['arguments']}) -> {result}")
        messages += [{"role": "assistant", "content": a}, {"role": "tool", "content": result}]
    print("final answer:", reply(peft_model, messages))
else:
    print("(no tool call this time: the adapter is undertrained; run the docs/hf.md command)")
days = (datetime.date(2025, 12, 25) - datetime.date(2025, 3, 1)).days  # independently
check(f"the tool's result is real: days_between = datetime's count ({days})",
      run_call({"name": "days_between", "arguments": {"start": "2025-03-01",
                                                      "end": "2025-12-25"}}) == str(days))

# %% [markdown]
# ## Exercises
# 1. Why must the adapter on top and the merged model give the same tokens, and when could they
#    differ? (Merging computes W + (alpha/r) B A once; on top, PEFT adds (alpha/r) B (A x) at
#    every call. Equal up to float rounding, which can flip an argmax only when two tokens are
#    nearly tied; in float32 on this model they agree.)
# 2. Ask a question that needs no tool ("Who wrote Hamlet?") with the tools system prompt. What
#    should `parse_tool_calls` return? (No calls and the whole reply as text; the agent loop then
#    stops after one request.)
# 3. Run a tool yourself: `run_call({"name": "days_between", "arguments": {"start":
#    "2024-02-28", "end": "2024-03-01"}})`. Predict the answer first (answer: "2": 2024 is a leap
#    year, so 29 February lies between).
