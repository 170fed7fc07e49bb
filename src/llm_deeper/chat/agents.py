"""Agents: typed Python functions as tools, and the loop that lets a model use them.

`ToolRegistry` turns a function's signature and docstring into the JSON schema the OpenAI API
expects (`int` -> integer, `float` -> number, `str`, `bool`, `list[T]` -> array, `Literal[...]`
-> enum; parameters without defaults are required). `run_agent` talks to any OpenAI-compatible
endpoint (ours, vLLM, a hosted one) with the official `openai` client:

    ask -> the model answers or calls tools -> run the calls (in parallel) -> give back the
    results (errors too, as text the model can react to) -> ask again ... at most
    `max_iterations` times.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

_SIMPLE = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object"}


def type_schema(t) -> dict:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t in _SIMPLE:
        return {"type": _SIMPLE[t]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, set):
        return {"type": "array", "items": type_schema(args[0]) if args else {}}
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return type_schema(rest[0])
        return {"anyOf": [type_schema(a) for a in rest]}
    raise TypeError(f"no JSON schema for the type {t!r}")


def function_schema(fn: Callable) -> dict:
    hints = typing.get_type_hints(fn)
    doc = inspect.getdoc(fn) or ""
    summary, _, rest = doc.partition("\n\n")
    arg_docs = {}
    for line in rest.splitlines():  # "name: what it is" lines describe the parameters
        name, sep, text = line.strip().partition(":")
        if sep and name.strip().isidentifier():
            arg_docs[name.strip()] = text.strip()
    props, required = {}, []
    for name, p in inspect.signature(fn).parameters.items():
        if name not in hints:
            raise TypeError(f"{fn.__name__}: parameter '{name}' needs a type annotation")
        props[name] = type_schema(hints[name])
        if name in arg_docs:
            props[name]["description"] = arg_docs[name]
        if p.default is inspect.Parameter.empty:
            required.append(name)
    return {"type": "function", "function": {
        "name": fn.__name__, "description": " ".join(summary.split()),
        "parameters": {"type": "object", "properties": props, "required": required}}}


class ToolRegistry:
    def __init__(self, fns: list[Callable] = ()):
        self.fns: dict[str, Callable] = {}
        for f in fns:
            self.register(f)

    def register(self, fn: Callable) -> Callable:
        function_schema(fn)  # refuse untyped functions now, not at the first call
        self.fns[fn.__name__] = fn
        return fn

    def schemas(self) -> list[dict]:
        return [function_schema(f) for f in self.fns.values()]

    def call(self, name: str, arguments: str) -> str:
        """The result as text; a failure is text too, so the model can correct itself."""
        fn = self.fns.get(name)
        if fn is None:
            return f"error: unknown tool '{name}' (tools: {', '.join(self.fns)})"
        try:
            args = json.loads(arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
            out = fn(**args)
        except Exception as exc:  # the model sees the error and may retry
            return f"error: {type(exc).__name__}: {exc}"
        return out if isinstance(out, str) else json.dumps(out)


@dataclass
class AgentResult:
    answer: str | None
    messages: list[dict]
    iterations: int
    tool_calls: list[dict] = field(default_factory=list)
    stopped: str = "answer"  # "answer" or "max_iterations"


def run_agent(client, model: str, messages: list[dict], registry: ToolRegistry,
              max_iterations: int = 5, tool_choice: Any = "auto", parallel: bool = True,
              **create_kwargs) -> AgentResult:
    """tool_choice applies to the first request; later ones use "auto" (a forced call at every
    turn would never let the model answer)."""
    messages = list(messages)
    calls_made: list[dict] = []
    for it in range(1, max_iterations + 1):
        r = client.chat.completions.create(model=model, messages=messages,
                                           tools=registry.schemas(),
                                           tool_choice=tool_choice if it == 1 else "auto",
                                           **create_kwargs)
        msg = r.choices[0].message
        calls = msg.tool_calls or []
        messages.append(msg.model_dump(exclude_none=True))
        if not calls:
            return AgentResult(msg.content, messages, it, calls_made)
        run = lambda c: registry.call(c.function.name, c.function.arguments)
        if parallel and len(calls) > 1:
            with ThreadPoolExecutor(max_workers=min(8, len(calls))) as pool:
                results = list(pool.map(run, calls))
        else:
            results = [run(c) for c in calls]
        for c, res in zip(calls, results):
            calls_made.append({"name": c.function.name, "arguments": c.function.arguments,
                               "result": res})
            messages.append({"role": "tool", "tool_call_id": c.id, "content": res})
    return AgentResult(None, messages, max_iterations, calls_made, "max_iterations")
