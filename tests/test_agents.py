"""Typed functions become JSON schemas; the agent loop runs parallel calls, feeds errors back and
stops at its bound (against a scripted client; tests/test_serve.py runs it against the server)."""

import json
from types import SimpleNamespace as NS
from typing import Literal

import pytest

from llm_deeper.chat.agents import ToolRegistry, function_schema, run_agent


def convert(value: float, unit: Literal["km", "mile"], precise: bool = False) -> str:
    """Convert a distance.

    value: how far
    unit: the unit of value
    """
    return f"{value * (1.609344 if unit == 'mile' else 1 / 1.609344):.{4 if precise else 1}f}"


def tags(words: list[str], limit: int | None = None) -> list[str]:
    """Upper-case words."""
    return [w.upper() for w in words][:limit]


def test_schema_from_signature_and_docstring():
    s = function_schema(convert)["function"]
    assert s["name"] == "convert" and s["description"] == "Convert a distance."
    assert s["parameters"] == {"type": "object", "required": ["value", "unit"], "properties": {
        "value": {"type": "number", "description": "how far"},
        "unit": {"enum": ["km", "mile"], "description": "the unit of value"},
        "precise": {"type": "boolean"}}}
    assert function_schema(tags)["function"]["parameters"]["properties"] == {
        "words": {"type": "array", "items": {"type": "string"}}, "limit": {"type": "integer"}}
    with pytest.raises(TypeError, match="needs a type annotation"):
        ToolRegistry([lambda x: x])


def _call(i, name, args):
    return NS(id=f"c{i}", type="function",
              function=NS(name=name, arguments=args if isinstance(args, str) else json.dumps(args)))


class Scripted:
    """A stand-in for openai.OpenAI that replays replies and records what it was sent."""

    def __init__(self, replies):
        self.replies, self.sent = list(replies), []
        self.chat = NS(completions=NS(create=self.create))

    def create(self, **kw):
        self.sent.append({**kw, "messages": list(kw["messages"])})
        content, calls = self.replies.pop(0)
        msg = NS(content=content, tool_calls=calls,
                 model_dump=lambda **_: {"role": "assistant", "content": content,
                                         **({"tool_calls": [{"id": c.id, "type": "function",
                                                             "function": vars(c.function)}
                                                            for c in calls]} if calls else {})})
        return NS(choices=[NS(message=msg)])


def test_agent_loop_parallel_calls_errors_and_answer():
    reg = ToolRegistry([convert, tags])
    client = Scripted([
        (None, [_call(1, "convert", {"value": 10, "unit": "mile"}),
                _call(2, "tags", {"words": ["a", "b"]}),
                _call(3, "nope", {}), _call(4, "convert", "{not json")]),
        ("10 miles is 16.1 km.", None)])
    r = run_agent(client, "m", [{"role": "user", "content": "hi"}], reg, tool_choice="required")
    assert r.answer == "10 miles is 16.1 km." and r.iterations == 2 and r.stopped == "answer"
    results = [c["result"] for c in r.tool_calls]
    assert results[0] == "16.1" and results[1] == '["A", "B"]'
    assert results[2].startswith("error: unknown tool") and results[3].startswith("error:")
    tool_msgs = [m for m in r.messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == ["c1", "c2", "c3", "c4"]
    assert [s["tool_choice"] for s in client.sent] == ["required", "auto"]
    assert len(client.sent[1]["messages"]) == 6  # user, assistant, 4 tool results


def test_agent_loop_stops_at_its_bound():
    client = Scripted([(None, [_call(i, "tags", {"words": ["x"]})]) for i in range(3)])
    r = run_agent(client, "m", [{"role": "user", "content": "loop"}], ToolRegistry([tags]),
                  max_iterations=3)
    assert r.answer is None and r.stopped == "max_iterations" and len(r.tool_calls) == 3
