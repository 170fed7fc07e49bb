"""Tools a model can call, and the format calls are written in (reply.py reads them back).

The format (used by the built-in fine-tuning task and, later, by the server for models whose
chat template has no tools section): the system message lists the tools as JSON schemas inside
<tools>...</tools>; the assistant calls one or more with

    <tool_call>{"name": "calculator", "arguments": {"expression": "12 * 7"}}</tool_call>

the result comes back in a message with role "tool", and the assistant then answers in words.

The tools are real: a safe arithmetic evaluator (an AST walk, no eval), unit conversion, date
arithmetic, and word counts in Shakespeare's works.

The arguments are whatever a model wrote, and the loops that run them (the terminal chat, the
tool-calling evaluator, the lessons) must survive anything. So every tool answers every call with
a string, quickly: bad input gets "error: ..." (which the model reads and can act on), never an
exception, a hang or a megabyte echoed back. The bounds that make this so: the calculator's
(below); a word or title of at most MAX_TEXT characters (a longer one cannot be right, and a
megabyte-long word took a second to compile as a regex); dates only within the years 1 to 9999
of `datetime`; non-numbers, NaN and infinities refused where a number is wanted; an argument
quoted in an error message cut to 40 characters. Last, `run_call` turns *any* failure of a tool
into an error result.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import math
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


def _cut(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _show(x, n: int = 40) -> str:
    """An argument as an error message quotes it: cut to n characters, a container only named,
    so that an error never echoes megabytes back into the model's context."""
    if isinstance(x, str):
        return repr(_cut(x, n))
    if x is None or isinstance(x, (bool, float)) or (isinstance(x, int) and x.bit_length() < 64):
        return repr(x)
    return f"a {'large int' if isinstance(x, int) else type(x).__name__}"


def _reason(exc: BaseException, n: int = 200) -> str:
    """An exception as one short line: its message cut to n characters, or its type's name."""
    return _cut(str(exc), n) or type(exc).__name__


# --------------------------------------------------------------------------- the tools
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.Pow: operator.pow, ast.USub: operator.neg,
        ast.UAdd: operator.pos, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv}

MAX_EXPRESSION = 500  # characters: plenty for arithmetic, and ast.parse stays shallow and small
MAX_DEPTH = 100  # levels of the parsed expression: the walk recurses once per level
MAX_NODES = 1000  # nodes of the parsed expression (a second guard, should MAX_EXPRESSION grow)
MAX_EXPONENT = 100  # |exponent| of a power
MAX_INT = 10**1000  # every integer, intermediate results included, is smaller than this
_MAX_BITS = MAX_INT.bit_length()
_TOO_LARGE = f"result too large (more than {len(str(MAX_INT)) - 1} digits)"
MAX_TEXT = 100  # characters of a word or a title (the longest title has 27)


def calculator(expression: str) -> str:
    """Evaluate + - * / // % ** and parentheses on numbers; nothing else is allowed.

    Bounded so that no expression can hang or crash the loop that runs it: at most
    MAX_EXPRESSION characters (checked before parsing, since ast.parse itself recurses and
    allocates per character: 2,000 unary minuses overflow the recursion, 50,000 exhaust memory),
    at most MAX_DEPTH levels and MAX_NODES nodes once parsed (checked without recursion, before
    the recursive walk). Every intermediate result is bounded too: integers below MAX_INT (1,000
    digits), floats finite and real. Only ** can grow a number far beyond its operands
    (`(((10**100)**100)**100)**100` has 10^8 digits: over a minute of work), so a power is refused
    *before* it is computed when its size is already too large: |base ** e| >= 2 ** (e *
    (bits(base) - 1)); the exponent itself stays within +-MAX_EXPONENT. A + - * // % of two
    bounded numbers is cheap to compute and is checked after. Every refusal, like division by
    zero, is an "error: ..." result.
    """
    if not isinstance(expression, str):
        return f"error: the expression must be a string, got {_show(expression)}"
    if len(expression) > MAX_EXPRESSION:
        return f"error: expression longer than {MAX_EXPRESSION} characters"
    try:
        tree = ast.parse(expression, mode="eval")
        _check_size(tree)
        return format_number(_evaluate(tree.body))
    except (SyntaxError, ValueError, ArithmeticError, RecursionError, MemoryError) as exc:
        return f"error: {_reason(exc)}"


def _check_size(tree: ast.AST) -> None:
    """Refuse a parsed expression deeper than MAX_DEPTH or bigger than MAX_NODES (no recursion)."""
    stack, count = [(tree, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise ValueError(f"expression nested more than {MAX_DEPTH} levels deep")
        if count > MAX_NODES:
            raise ValueError(f"expression of more than {MAX_NODES} parts")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _evaluate(node: ast.AST):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return _bounded(node.value)  # 1e999 parses as inf
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            if abs(right) > MAX_EXPONENT:
                raise ValueError("exponent too large")
            if isinstance(left, int) and isinstance(right, int) and right > 0 \
                    and right * (abs(left).bit_length() - 1) >= _MAX_BITS:
                raise ValueError(_TOO_LARGE)
        return _bounded(_OPS[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _bounded(_OPS[type(node.op)](_evaluate(node.operand)))
    raise ValueError(f"unsupported expression element: {type(node).__name__}")


def _bounded(x):
    if isinstance(x, complex):  # (-8) ** (1/3)
        raise ValueError("the result is not a real number")
    if isinstance(x, float) and not math.isfinite(x):  # 1e308 * 10
        raise OverflowError("result too large for a float")
    if isinstance(x, int) and abs(x) >= MAX_INT:
        raise ValueError(_TOO_LARGE)
    return x


def format_number(x) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        x = int(x)
    return str(round(x, 6)) if isinstance(x, float) else str(x)


_LENGTH = {"mm": 0.001, "cm": 0.01, "m": 1.0, "km": 1000.0, "inch": 0.0254, "ft": 0.3048,
           "mile": 1609.344}
_MASS = {"g": 0.001, "kg": 1.0, "lb": 0.45359237, "oz": 0.028349523125}
_TEMP = {"C", "F", "K"}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    if not _is_number(value):
        return f"error: value must be a number, got {_show(value)}"
    if not isinstance(from_unit, str) or not isinstance(to_unit, str):
        return f"error: units must be strings, got {_show(from_unit)} and {_show(to_unit)}"
    try:
        value = float(value)
    except OverflowError:
        return "error: value too large"
    if from_unit in _TEMP and to_unit in _TEMP:
        c = {"C": value, "F": (value - 32) * 5 / 9, "K": value - 273.15}[from_unit]
        out = {"C": c, "F": c * 9 / 5 + 32, "K": c + 273.15}[to_unit]
    else:
        for table in (_LENGTH, _MASS):
            if from_unit in table and to_unit in table:
                out = value * table[from_unit] / table[to_unit]
                break
        else:
            return f"error: cannot convert {_cut(from_unit)} to {_cut(to_unit)}"
    if not math.isfinite(out):  # NaN in, or 1e308 miles in mm
        return f"error: {_show(value)} {from_unit} is not a convertible amount"
    return f"{format_number(round(out, 4))} {to_unit}"


def _date(text) -> dt.date:
    if isinstance(text, str):
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            pass
    raise ValueError(f"{_show(text)} is not a YYYY-MM-DD date")


def add_days(date: str, days: int) -> str:
    try:
        d = _date(date)
    except ValueError as exc:
        return f"error: {exc}"
    try:  # int() as before ("3" and 3.0 are 3 days), but no bools, lists or endless digits
        n = int(days) if _is_number(days) or (isinstance(days, str) and len(days) < 20) else None
    except (ValueError, OverflowError):  # "three", NaN, inf
        n = None
    if n is None:
        return f"error: days must be a whole number, got {_show(days)}"
    try:
        return (d + dt.timedelta(days=n)).isoformat()
    except OverflowError:
        return f"error: {_show(n)} days from {date} is outside the years 1 to 9999"


def days_between(start: str, end: str) -> str:
    try:
        return str((_date(end) - _date(start)).days)
    except ValueError as exc:
        return f"error: {exc}"


def title_key(title: str) -> str:
    """'Romeo and Juliet', 'romeo_and_juliet', ' The Tempest ' -> the corpus name."""
    key = re.sub(r"[^a-z0-9]+", "_", title.lower().replace("'", "")).strip("_")
    return key[4:] if key.startswith("the_") else key


def count_word(title: str, word: str) -> str:
    """How often a word occurs (whole word, any case) in one of Shakespeare's works. The title is
    matched loosely (case, spaces, a leading 'The'); only corpus titles are read, never a path.
    The word is matched literally (regex characters escaped) and is at most MAX_TEXT long."""
    from ..data import shakespeare

    if not isinstance(title, str) or len(title) > MAX_TEXT:
        return f"error: no work titled {_show(title)}"
    word = str(word) if _is_number(word) else word
    if not isinstance(word, str) or not word.strip() or len(word) > MAX_TEXT:
        return f"error: the word must be 1 to {MAX_TEXT} characters, got {_show(word)}"
    key = title_key(title)
    try:
        if key not in shakespeare.titles():
            return f"error: no work titled {_show(title)}"
        text = shakespeare.load_text(key)
    except UserError as exc:
        return f"error: {_reason(exc)}"
    return str(len(re.findall(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE)))


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
    """Run one parsed call {"name", "arguments"} and return its result for the model. Whatever
    the call holds and whatever the tool does, the answer is a string: a malformed call, wrong
    arguments (missing, extra, of the wrong type) and any exception a tool raises, RecursionError
    and MemoryError included, come back as "error: ...". A tool never ends the loop that called
    it (only KeyboardInterrupt and the like, which are not Exceptions, pass through)."""
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return 'error: a call is {"name": "<tool>", "arguments": {...}}'
    tool = TOOLS.get(call["name"])
    if tool is None:
        return f"error: unknown tool {_show(call['name'])}"
    arguments = call.get("arguments", {})
    if not isinstance(arguments, dict):
        return f"error: the arguments of {tool.name} must be a JSON object"
    try:
        return tool.fn(**arguments)
    except (TypeError, ValueError, OverflowError) as exc:
        return f"error: bad arguments ({_reason(exc)})"
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the model gets a result
        return f"error: {tool.name} failed ({type(exc).__name__}: {_reason(exc)})"
