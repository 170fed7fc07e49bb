# %% [markdown]
# # vLLM on a CUDA GPU: the same API, tools and LoRA adapters
#
# vLLM is the usual way to serve a model on GPUs: PagedAttention over CUDA kernels, continuous
# batching, prefix caching, CUDA graphs. It exposes the OpenAI API too, so every client of the
# earlier lessons works unchanged. `llm-deeper serve --engine vllm` runs `vllm serve` with the
# flags that match our server:
#
# * the model as an HF directory (a registry model is exported once from its GGUF);
# * `--enable-auto-tool-choice --tool-call-parser hermes`: vLLM's hermes parser reads the
#   `<tool_call>{...}</tool_call>` format our tool-calling data uses;
# * `--enable-lora --lora-modules name=path`: adapters served by name, like ours.
#
# The part after the command line needs Linux, a CUDA GPU and `pip install vllm`; elsewhere
# the lesson checks the command line and stops with a message saying so.

# %%
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.pretrained import models

from _common import Server, check

if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")

from llm_deeper.hf.models import hf_dir
from llm_deeper.serve.launch import vllm_argv

adapter = Path("runs/tools-lora/adapter")
lora = {"tools": str(adapter)} if (adapter / "adapter_config.json").is_file() else {}
argv = vllm_argv("smollm2-135m", "127.0.0.1", 8000, None, lora, "smollm2-135m")
print(" ".join(argv))
check("vllm serve gets the HF export, the hermes tool parser and our model name",
      argv[:3] == ["vllm", "serve", hf_dir("smollm2-135m")]
      and argv[argv.index("--tool-call-parser") + 1] == "hermes"
      and argv[argv.index("--served-model-name") + 1] == "smollm2-135m")

try:
    import torch
    has_cuda = torch.cuda.is_available()
except ImportError:
    has_cuda = False
if shutil.which("vllm") is None or not has_cuda:
    print("skip: the rest runs vLLM, which needs a CUDA GPU and 'pip install vllm' "
          f"(vllm found: {shutil.which('vllm') is not None}, CUDA: {has_cuda}).")
    raise SystemExit(0)

# %% [markdown]
# ## The same client code against vLLM

# %%
import json

from openai import OpenAI

tool = {"type": "function", "function": {
    "name": "convert_units", "description": "Convert a value between units.",
    "parameters": {"type": "object", "properties": {
        "value": {"type": "number"}, "from_unit": {"type": "string"},
        "to_unit": {"type": "string"}}, "required": ["value", "from_unit", "to_unit"]}}}
with Server("--engine", "vllm", *(["--lora-modules", f"tools={adapter}"] if lora else [])) \
        as base:
    client = OpenAI(base_url=base + "/v1", api_key="unused")
    print([m.id for m in client.models.list().data])
    r = client.chat.completions.create(model="smollm2-135m", max_tokens=30, temperature=0,
                                       messages=[{"role": "user", "content": "Say hello."}])
    print("chat:", r.choices[0].message.content)
    model = "tools" if lora else "smollm2-135m"
    r = client.chat.completions.create(
        model=model, max_tokens=80, temperature=0, tools=[tool], tool_choice="required",
        messages=[{"role": "user", "content": "Convert 12 km to mile."}])
    call = r.choices[0].message.tool_calls[0]
    print("tool call:", call.function.name, call.function.arguments)
    check("vLLM returns a parsed tool call",
          call.function.name == "convert_units"
          and isinstance(json.loads(call.function.arguments), dict))

# %% [markdown]
# ## Exercises
# (Runnable without a GPU: they are about the command line.)
# 1. Which flags does `vllm_argv` add when an adapter is given? Predict, then print
#    `vllm_argv("smollm2-135m", "127.0.0.1", 8000, None, {"tools": "runs/x"}, "smollm2-135m")`
#    (answer: `--enable-lora --lora-modules tools=runs/x` at the end).
# 2. Why must vLLM get `--served-model-name smollm2-135m`? (Clients send `model:
#    "smollm2-135m"`; without the flag vLLM names the model after its directory path, and the
#    same client code would get a 404 for an unknown model.)
# 3. Our server answered `tool_choice="required"` by constraining the output to a call. What
#    does vLLM need for tool calls to come back parsed? (`--enable-auto-tool-choice` and a
#    parser that knows the model's format, here `hermes` for `<tool_call>{...}</tool_call>`;
#    without a parser the call stays text in `content`.)
