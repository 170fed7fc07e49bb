"""Tools a model can call, and the format calls are written in (reply.py reads them back).

The format (used by the built-in fine-tuning task and, later, by the server for models whose
chat template has no tools section): the system message lists the tools as JSON schemas inside
<tools>...</tools>; the assistant calls one or more with

    <tool_call>{"name": "calculator", "arguments": {"expression": "12 * 7"}}</tool_call>

the result comes back in a message with role "tool", and the assistant then answers in words.

The tools are real: a safe arithmetic evaluator (an AST walk, no eval), unit conversion, date
arithmetic, and word counts in Shakespeare's works.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments
    fn: Callable

    def schema(self) -> dict:
        return {"type": "function", "function": {"name": self.name,
                                                 "description": self.description,
                                                 "parameters": self.parameters}}


# --------------------------------------------------------------------------- the tools
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.Pow: operator.pow, ast.USub: operator.neg,
        ast.UAdd: operator.pos, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv}


def calculator(expression: str) -> str:
    """Evaluate + - * / // % ** and parentheses on numbers; nothing else is allowed."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponent too large")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"unsupported expression element: {type(node).__name__}")

    try:
        value = ev(ast.parse(expression, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as exc:
        return f"error: {exc}"
    return format_number(value)


def format_number(x) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        x = int(x)
    return str(round(x, 6)) if isinstance(x, float) else str(x)


_LENGTH = {"mm": 0.001, "cm": 0.01, "m": 1.0, "km": 1000.0, "inch": 0.0254, "ft": 0.3048,
           "mile": 1609.344}
_MASS = {"g": 0.001, "kg": 1.0, "lb": 0.45359237, "oz": 0.028349523125}
_TEMP = {"C", "F", "K"}


def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    if from_unit in _TEMP and to_unit in _TEMP:
        c = {"C": value, "F": (value - 32) * 5 / 9, "K": value - 273.15}[from_unit]
        out = {"C": c, "F": c * 9 / 5 + 32, "K": c + 273.15}[to_unit]
    else:
        for table in (_LENGTH, _MASS):
            if from_unit in table and to_unit in table:
                out = value * table[from_unit] / table[to_unit]
                break
        else:
            return f"error: cannot convert {from_unit} to {to_unit}"
    return f"{format_number(round(out, 4))} {to_unit}"


def add_days(date: str, days: int) -> str:
    try:
        d = dt.date.fromisoformat(date)
    except ValueError:
        return f"error: '{date}' is not a YYYY-MM-DD date"
    return (d + dt.timedelta(days=int(days))).isoformat()


def days_between(start: str, end: str) -> str:
    try:
        return str((dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days)
    except ValueError as exc:
        return f"error: {exc}"


def title_key(title: str) -> str:
    """'Romeo and Juliet', 'romeo_and_juliet', ' The Tempest ' -> the corpus name."""
    key = re.sub(r"[^a-z0-9]+", "_", title.lower().replace("'", "")).strip("_")
    return key[4:] if key.startswith("the_") else key


def count_word(title: str, word: str) -> str:
    """How often a word occurs (whole word, any case) in one of Shakespeare's works. The title is
    matched loosely (case, spaces, a leading 'The'); only corpus titles are read, never a path."""
    from ..data import shakespeare

    key = title_key(str(title))
    try:
        if key not in shakespeare.titles():
            return f"error: no work titled '{title}'"
        text = shakespeare.load_text(key)
    except UserError as exc:
        return f"error: {exc}"
    return str(len(re.findall(rf"\b{re.escape(str(word))}\b", text, flags=re.IGNORECASE)))


def _obj(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required}


TOOLS: dict[str, Tool] = {t.name: t for t in [
    Tool("calculator", "Evaluate an arithmetic expression (+, -, *, /, //, %, **, parentheses).",
         _obj({"expression": {"type": "string"}}, ["expression"]), calculator),
    Tool("convert_units", "Convert a value between units of length (mm, cm, m, km, inch, ft, "
         "mile), mass (g, kg, lb, oz) or temperature (C, F, K).",
         _obj({"value": {"type": "number"}, "from_unit": {"type": "string"},
               "to_unit": {"type": "string"}}, ["value", "from_unit", "to_unit"]), convert_units),
    Tool("add_days", "Add a number of days (negative to subtract) to a date in YYYY-MM-DD form.",
         _obj({"date": {"type": "string"}, "days": {"type": "integer"}}, ["date", "days"]),
         add_days),
    Tool("days_between", "Number of days from one YYYY-MM-DD date to another.",
         _obj({"start": {"type": "string"}, "end": {"type": "string"}}, ["start", "end"]),
         days_between),
    Tool("count_word", "Count how often a word occurs in one of Shakespeare's works "
         "(title as written, like 'Hamlet' or 'Romeo and Juliet').",
         _obj({"title": {"type": "string"}, "word": {"type": "string"}}, ["title", "word"]),
         count_word),
]}


# --------------------------------------------------------------------------- format and parse
def signature(tool: Tool) -> str:
    """One line per tool, `name(arg: type, ...): description` — a quarter of the tokens of the
    JSON schema, which matters when every training example repeats it on a CPU."""
    props = tool.parameters.get("properties", {})
    args = ", ".join(f"{k}: {v.get('type', 'any')}" for k, v in props.items())
    return f"{tool.name}({args}): {tool.description}"


def tools_system_prompt(tools=None) -> str:
    tools = list(TOOLS.values()) if tools is None else tools
    listing = "\n".join(signature(t) for t in tools)
    return ("You can call tools. To call one, write <tool_call>{\"name\": ..., \"arguments\": "
            "{...}}</tool_call>; you may call several. Answer directly when no tool is needed.\n"
            f"<tools>\n{listing}\n</tools>")


def format_call(name: str, arguments: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def run_call(call: dict) -> str:
    tool = TOOLS.get(call["name"])
    if tool is None:
        return f"error: unknown tool '{call['name']}'"
    try:
        return tool.fn(**call["arguments"])
    except (TypeError, ValueError, OverflowError) as exc:
        return f"error: bad arguments ({exc})"
