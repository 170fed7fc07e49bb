# %% [markdown]
# # Tool calling, basic: a schema, one call, its result, the answer
#
# A model cannot look up a date or do exact arithmetic reliably; it can ask a program to. The
# OpenAI API makes that a protocol:
#
# 1. the client lists its tools as JSON schemas (`tools=[{"type": "function", "function":
#    {"name", "description", "parameters"}}]`);
# 2. the server shows them to the model (SmolLM2's chat template has no tools section, so they go
#    into the system prompt in the format our fine-tuning task taught: `<tool_call>{"name": ...,
#    "arguments": {...}}</tool_call>`);
# 3. the model writes a call; the server parses it into `message.tool_calls` (arguments as a
#    JSON *string*) with `finish_reason: "tool_calls"`;
# 4. the client runs the function and sends the result back as a `tool` message;
# 5. the model answers with the result in front of it.
#
# With `tool_choice="required"` (or a named function) the server enforces step 3 with a
# grammar: the model can only write a well-formed call to one of the tools, with arguments that
# match its schema.

# %%
import json
import sys
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.pretrained import models

from _common import Server, check

if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")

from openai import OpenAI

from llm_deeper.chat.agents import function_schema
from llm_deeper.chat.tools import Tool, tools_system_prompt

# %% [markdown]
# ## A tool is a function and its JSON schema
#
# Written by hand, then derived from the function's type hints and docstring by
# `agents.function_schema` (which the agent loop of the next lesson uses).

# %%


def add_days(date_iso: str, days: int) -> str:
    """Add a number of days to a date.

    date_iso: the date, YYYY-MM-DD
    days: how many days to add (negative to go back)
    """
    return (date.fromisoformat(date_iso) + timedelta(days=days)).isoformat()


by_hand = {"type": "function", "function": {
    "name": "add_days", "description": "Add a number of days to a date.",
    "parameters": {"type": "object", "properties": {
        "date_iso": {"type": "string", "description": "the date, YYYY-MM-DD"},
        "days": {"type": "integer", "description": "how many days to add (negative to go back)"}},
        "required": ["date_iso", "days"]}}}
derived = function_schema(add_days)
print(json.dumps(derived, indent=1))
check("the schema derived from the type hints == the one written by hand", derived == by_hand)

# %% [markdown]
# ## What the model is shown
#
# The server puts this in front of the conversation (chat/tools.py: `tools_system_prompt`):

# %%
f = by_hand["function"]
print(tools_system_prompt([Tool(f["name"], f["description"], f["parameters"], None)]))

# %% [markdown]
# ## One round trip against the server

# %%
with Server() as base:
    client = OpenAI(base_url=base + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "What date is 45 days after 2024-11-20?"}]
    r = client.chat.completions.create(model="smollm2-135m", messages=messages, tools=[by_hand],
                                       tool_choice="required", max_tokens=60, temperature=0)
    choice = r.choices[0]
    call = choice.message.tool_calls[0]
    print("finish_reason:", choice.finish_reason)
    print("tool call:", call.id, call.function.name, call.function.arguments)
    args = json.loads(call.function.arguments)  # a string: the client parses it
    check("a call to add_days whose arguments match the schema",
          call.function.name == "add_days" and isinstance(args.get("date_iso"), str)
          and isinstance(args.get("days"), int))
    try:
        result = add_days(**args)
    except ValueError as exc:  # the model may write a date that does not exist: say so
        result = f"error: {exc}"
    print("result:", result)
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": result}]
    final = client.chat.completions.create(model="smollm2-135m", messages=messages,
                                           tools=[by_hand], max_tokens=40, temperature=0)
    print("answer:", final.choices[0].message.content)
    check("the model answers after seeing the result",
          final.choices[0].finish_reason in ("stop", "length")
          and bool(final.choices[0].message.content))

    # the same call, streamed: tool calls arrive as delta.tool_calls with an index
    stream = client.chat.completions.create(model="smollm2-135m", messages=messages[:1],
                                            tools=[by_hand], tool_choice="required",
                                            max_tokens=60, temperature=0, stream=True)
    parts = [c.choices[0].delta.tool_calls for c in stream if c.choices and
             c.choices[0].delta.tool_calls]
    streamed = parts[0][0]
    print("streamed call:", streamed.index, streamed.function.name, streamed.function.arguments)
    check("the streamed call == the plain one",
          (streamed.function.name, streamed.function.arguments)
          == (call.function.name, call.function.arguments))

# %% [markdown]
# ## Exercises
# 1. Add a parameter `weeks: int = 0` to `add_days` and predict its schema before printing
#    `function_schema(add_days)` (answer: `"weeks": {"type": "integer"}`, with no description
#    until you give it a docstring line, and `required` stays `["date_iso", "days"]`: a
#    parameter with a default is optional).
# 2. What date is 45 days after 2024-11-20? Work it out, then call `add_days` (answer:
#    2025-01-04: 10 days to the end of November, 31 in December, 4 in January).
# 3. Drop `tool_choice="required"` from the first request. What may change? (The model may
#    answer in text instead: `tool_calls` is then None, and the lesson's first check is where
#    you would notice. "required" makes the server constrain the first tokens to a call.)
