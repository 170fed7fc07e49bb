# %% [markdown]
# # Tool calling, advanced: a registry, parallel calls, errors, an agent loop
#
# An *agent* is a loop around the protocol of the previous lesson: ask; if the model calls
# tools, run them (several at once when it asks for several), send every result back, errors
# included, and ask again; stop when it answers or after `max_iterations` rounds
# (src/llm_deeper/chat/agents.py). It works with any OpenAI-compatible endpoint: ours, vLLM, or a
# hosted API.
#
# Pieces, each checked:
# * `ToolRegistry`: typed Python functions -> JSON schemas, and calls by name with JSON text;
# * failures become text the model can read ("error: ..."), never an exception in the loop;
# * parallel calls: slow tools run at the same time;
# * the loop against the live server, with the tool-calling LoRA adapter when you trained one
#   (`llm-deeper finetune ... --out runs/tools-lora`, docs/hf.md), else the base model.

# %%
import json
import sys
import threading
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.pretrained import models

from _common import Server, check

if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")

from openai import OpenAI

from llm_deeper.chat.agents import ToolRegistry, run_agent

# %% [markdown]
# ## A registry of typed functions

# %%
RATES = {("km", "mile"): 0.621371, ("kg", "pound"): 2.20462, ("litre", "gallon"): 0.264172}


def convert_units(value: float, from_unit: Literal["km", "kg", "litre"],
                  to_unit: Literal["mile", "pound", "gallon"]) -> str:
    """Convert a value between units.

    value: the number to convert
    from_unit: its unit
    to_unit: the unit wanted
    """
    if (from_unit, to_unit) not in RATES:
        raise ValueError(f"cannot convert {from_unit} to {to_unit}")
    return f"{value * RATES[(from_unit, to_unit)]:.3f} {to_unit}"


in_flight = {"now": 0, "most": 0, "lock": threading.Lock()}  # how many lookups run at once


def slow_lookup(city: str) -> str:
    """Look up a city's population (a slow service).

    city: the city's name
    """
    with in_flight["lock"]:
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])
    time.sleep(0.5)
    with in_flight["lock"]:
        in_flight["now"] -= 1
    return {"paris": "2.1 million", "rome": "2.8 million"}.get(city.lower(), "unknown")


registry = ToolRegistry([convert_units, slow_lookup])
for s in registry.schemas():
    print(json.dumps(s["function"]))
params = registry.schemas()[0]["function"]["parameters"]
check("Literal types become enums, every parameter without a default is required",
      params["properties"]["from_unit"] == {"enum": ["km", "kg", "litre"],
                                            "description": "its unit"}
      and params["required"] == ["value", "from_unit", "to_unit"])

# %% [markdown]
# ## Errors are results too
#
# A wrong unit, arguments that are not JSON, a tool that does not exist: each comes back as a
# line of text for the model, which can then correct itself.

# %%
for name, args in [("convert_units", '{"value": 3, "from_unit": "km", "to_unit": "mile"}'),
                   ("convert_units", '{"value": 3, "from_unit": "km", "to_unit": "pound"}'),
                   ("convert_units", "{not json"), ("teleport", "{}")]:
    print(f"{name}({args}) -> {registry.call(name, args)}")
check("a failing call returns 'error: ...' text",
      registry.call("convert_units", '{"value": 1, "from_unit": "kg", "to_unit": "mile"}')
      .startswith("error: ValueError"))

# %% [markdown]
# ## Parallel calls
#
# When the model asks for several calls in one turn they are independent, so the loop runs them
# on a thread pool: two half-second lookups take about half a second, not one.


# %%
class Scripted:
    """A stand-in for the API client that asks for two lookups, then answers."""

    def __init__(self):
        from types import SimpleNamespace as NS
        call = lambda i, city: NS(id=f"call_{i}", type="function", function=NS(
            name="slow_lookup", arguments=json.dumps({"city": city})))
        msg = lambda content, calls: NS(content=content, tool_calls=calls,
                                        model_dump=lambda **kw: {"role": "assistant",
                                                                 "content": content})
        self.replies = [msg(None, [call(0, "Paris"), call(1, "Rome")]),
                        msg("Paris has 2.1 million people, Rome 2.8 million.", None)]
        self.chat = NS(completions=NS(create=self.create))

    def create(self, **kw):
        from types import SimpleNamespace as NS
        return NS(choices=[NS(message=self.replies.pop(0))])


t0 = time.perf_counter()
res = run_agent(Scripted(), "scripted", [{"role": "user", "content": "Populations?"}], registry)
took = time.perf_counter() - t0
print(f"{len(res.tool_calls)} calls in {took:.2f} s, at most {in_flight['most']} at once "
      f"-> {res.answer}")
check("both lookups ran, at the same time", len(res.tool_calls) == 2 and in_flight["most"] == 2)

# %% [markdown]
# ## The loop against the live server
#
# The first request forces a call (`tool_choice="required"`: grammar-constrained, so the call
# parses and its units are among the enum's values); later ones let the model answer. The base
# model was never taught what to do with a tool result and tends to call the same tool again
# and again: that is what `max_iterations` is for. The fine-tuned adapter answers after one
# call ("12 km is 7.456 mile").

# %%
adapter = Path("runs/tools-lora/adapter")
args = ["--lora-modules", f"tools={adapter}"] if (adapter / "adapter_config.json").is_file() \
    else []
model = "tools" if args else "smollm2-135m"
print("model:", model)
with Server(*args) as base:
    client = OpenAI(base_url=base + "/v1", api_key="unused")
    res = run_agent(client, model, [{"role": "user", "content": "Convert 12 km to miles."}],
                    registry, max_iterations=3, tool_choice="required", max_tokens=60,
                    temperature=0)
for m in res.messages:
    print(f"  {m['role']:>9}: {m.get('content') or m.get('tool_calls')}")
print(f"stopped by {res.stopped} after {res.iterations} requests")
first = json.loads(res.tool_calls[0]["arguments"])
check("the forced first call is a valid call of a registered tool",
      res.tool_calls[0]["name"] in registry.fns and isinstance(first, dict))
check("every result went back to the model as a tool message",
      sum(m["role"] == "tool" for m in res.messages) == len(res.tool_calls))
tool_messages = [m["content"] for m in res.messages if m["role"] == "tool"]
check("each result sent back = the tool run again here on the same arguments",
      tool_messages == [registry.call(c["name"], c["arguments"]) for c in res.tool_calls])
print(f"{res.iterations} request(s) of at most 3 (max_iterations bounds the loop)")

# %% [markdown]
# ## Exercises
# 1. Call `registry.call("convert_units", '{"value": 3, "from_unit": "km", "to_unit": "mile"}')`
#    and predict the text (answer: "1.864 mile", 3 x 0.621371 rounded to three places).
# 2. Make `slow_lookup` take 1 s and ask for three cities in `Scripted`. How long should the
#    parallel loop take, and what should `in_flight["most"]` be? (About 1 s, not 3, and 3:
#    the calls of one turn run together on the thread pool.)
# 3. Give `run_agent` `max_iterations=1` against the live server. Why does it stop without an
#    answer? (The first request, forced to call, returns a call; the loop runs it but has no
#    request left to send the result back: `res.stopped == "max_iterations"`, `res.answer` is
#    None.)
