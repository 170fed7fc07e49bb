"""Hostile tool calls: whatever a model writes, a tool answers quickly with a result string.

The loops that run model output through the tools (the terminal chat, the tool-calling evaluator,
the lessons) must never hang or die on a call: every case here must come back as "error: ..."
within a second. Each case runs in a worker process with a timeout, so a regression that hangs
costs a few seconds and a failed test, never a stuck test run (a thread would not do: a huge
integer power holds the GIL, so the waiting thread could not even time out).
"""

import multiprocessing as mp
import time

import pytest

from llm_deeper.chat import tools
from llm_deeper.chat.tools import TOOLS, Tool, calculator, run_call

from conftest import shakespeare_or_skip

HANG_S = 5.0  # a call still running after this long is killed: the test fails, the run goes on
FAST_S = 1.0  # what every hostile call must stay under
LONG = "x" * 1_000_000  # a megabyte of argument
MAX_RESULT = 300  # an error result is a line for the model, not an echo of its input


def _timed(fn_name: str, args: tuple, kwargs: dict):
    """In the worker: (how it ended, the result or the exception, seconds)."""
    fn = getattr(tools, fn_name)
    t0 = time.perf_counter()
    try:
        out = ("returned", fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
        out = ("raised", f"{type(exc).__name__}: {str(exc)[:200]}")
    return (*out, time.perf_counter() - t0)


class Sandbox:
    """One worker process that runs tool calls; one that hangs is killed after HANG_S."""

    def __init__(self):
        self.pool = None

    def __call__(self, fn_name: str, *args, **kwargs) -> str:
        if self.pool is None:
            self.pool = mp.Pool(1)
        job = self.pool.apply_async(_timed, (fn_name, args, kwargs))
        try:
            how, out, seconds = job.get(HANG_S)
        except mp.TimeoutError:
            self.close()
            pytest.fail(f"{fn_name}{_show(args)} still running after {HANG_S:.0f} s")
        assert how == "returned", f"{fn_name}{_show(args)} raised {out}"
        assert isinstance(out, str), f"{fn_name}{_show(args)} returned {type(out).__name__}"
        assert seconds < FAST_S, f"{fn_name}{_show(args)} took {seconds:.2f} s"
        return out

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def _show(args) -> str:
    text = repr(args)
    return text if len(text) < 100 else text[:97] + "..."


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox()
    yield box
    box.close()


def _is_error(result: str) -> bool:
    return result.startswith("error: ") and len(result) <= MAX_RESULT


# --------------------------------------------------------------------------- calculator
HOSTILE_EXPRESSIONS = {
    "power tower (hang)": "(((10**100)**100)**100)**100",
    "power of a power": "((10**100)**100)**100",
    "2,000 unary minus (RecursionError)": "-" * 2000 + "1",
    "sum of 5,000 ones (RecursionError)": "+".join(["1"] * 5000),
    "50,000 unary minus (MemoryError)": "-" * 50000 + "1",
    "product of 20,000 powers": "*".join(["9**99"] * 20000),
    "1,229-digit product": "*".join(["9**99"] * 13),
    "1,000-digit integer times ten": "10**100**1 * " + " * ".join(["10**100"] * 10),
    "99 unary minus (over MAX_DEPTH)": "-" * 99 + "1",
    "exactly 10**1000": "(10**99)**10 * 10**10",
    "float overflow to inf": "1e308 * 10",
    "inf literal": "1e999",
    "inf, then back to finite": "1 / (1e308 * 10)",
    "inf minus inf": "1e308 * 10 - 1e308 * 10",
    "complex root": "(-8) ** (1/3)",
    "a megabyte of digits": "1" * 1_000_000,
    "nested parentheses": "(" * 5000 + "1" + ")" * 5000,
    "division by zero": "1 / 0",
    "modulo by zero": "5 % 0",
    "floor division by zero": "5 // 0",
    "zero to a negative power": "0 ** -1",
    "huge exponent": "2 ** 3 ** 2 ** 2 ** 2",
    "int too large for float division": "(9**99)**10 / 3",
    "names": "__import__('os').system('true')",
}


@pytest.mark.parametrize("expression", HOSTILE_EXPRESSIONS.values(), ids=HOSTILE_EXPRESSIONS)
def test_calculator_answers_hostile_expressions_with_an_error_quickly(sandbox, expression):
    result = sandbox("calculator", expression)
    assert _is_error(result), f"{result[:100]!r} ({len(result)} chars)"
    call = {"name": "calculator", "arguments": {"expression": expression}}
    assert _is_error(sandbox("run_call", call))


@pytest.mark.parametrize("expression", [12, None, ["1 + 1"], {"a": 1}])
def test_calculator_wants_a_string(sandbox, expression):
    assert _is_error(sandbox("calculator", expression))


# what the calculator answered before its bounds: ordinary arithmetic must not change
ORDINARY = {
    "(12 + 30) * 2": "84", "7 / 2": "3.5", "2 ** 100": "1267650600228229401496703205376",
    "10 ** 100": "1" + "0" * 100, "2 ** -2": "0.25", "2 ** 0.5": "1.414214", "-7 // 2": "-4",
    "-7 % 3": "2", "7.5 % 2": "1.5", "1e15": "1000000000000000.0", "1e16": "1e+16",
    "0.1 + 0.2": "0.3", "1 / 3": "0.333333", "-(-3)": "3", "+4": "4", "3 * 1.5": "4.5",
    "123456789 * 987654321": "121932631112635269", "99 ** 100 // 99 ** 99": "99",
    "2 ** 3 ** 2": "512", "1e308 * 1": "1e+308", "---1": "-1",
    "+".join(["1"] * 50): "50", "(" * 50 + "2" + ")" * 50: "2",
    "*".join(["9**99"] * 10): str(9 ** 990),  # 945 digits: under the 1,000-digit bound
    "(10**99)**10 * 10**9 * 9": "9" + "0" * 999,  # the largest integer: 1,000 digits
    "-" * 98 + "1": "1",  # the deepest nesting (MAX_DEPTH levels, counting the number)
}


@pytest.mark.parametrize("expression,expected", ORDINARY.items())
def test_calculator_still_answers_ordinary_arithmetic(expression, expected):
    assert calculator(expression) == expected


def test_calculator_counts_the_nodes_of_what_it_parsed(monkeypatch):
    """MAX_EXPRESSION characters cannot make MAX_NODES nodes; without the length bound the node
    bound still holds. A balanced sum of 1,024 ones is shallow, so only the count refuses it."""
    monkeypatch.setattr(tools, "MAX_EXPRESSION", 10**6)
    expression = "1"
    for _ in range(10):
        expression = f"({expression}+{expression})"
    assert calculator(expression) == f"error: expression of more than {tools.MAX_NODES} parts"


# --------------------------------------------------------------------------- the other tools
HOSTILE_CALLS = {
    "days beyond timedelta": ("add_days", "2024-01-01", 10**9),
    "days past year 9999": ("add_days", "2024-01-01", 3_000_000),
    "days before year 1": ("add_days", "2024-01-01", -800_000),
    "days as words": ("add_days", "2024-01-01", "three"),
    "days infinite": ("add_days", "2024-01-01", float("inf")),
    "days not a number": ("add_days", "2024-01-01", float("nan")),
    "days a list": ("add_days", "2024-01-01", [3]),
    "days a megabyte of digits": ("add_days", "2024-01-01", "9" * 1_000_000),
    "date a number": ("add_days", 20240101, 3),
    "date a megabyte": ("add_days", LONG, 3),
    "start a megabyte": ("days_between", LONG, "2024-01-01"),
    "end None": ("days_between", "2024-01-01", None),
    "value as words": ("convert_units", "three", "C", "F"),
    "value as words (length)": ("convert_units", "three", "m", "km"),
    "value a list": ("convert_units", [1], "kg", "g"),
    "value too large for a float": ("convert_units", 10**400, "m", "km"),
    "result overflows to inf": ("convert_units", 1e308, "mile", "mm"),
    "value NaN": ("convert_units", float("nan"), "C", "F"),
    "unit a megabyte": ("convert_units", 1, LONG, "m"),
    "unit a list": ("convert_units", 1, ["m"], "km"),
    "title a megabyte": ("count_word", LONG, "the"),
    "title a path": ("count_word", "../../../etc/passwd", "root"),
    "title a list": ("count_word", ["Hamlet"], "the"),
}


@pytest.mark.parametrize("call", HOSTILE_CALLS.values(), ids=HOSTILE_CALLS)
def test_other_tools_answer_hostile_arguments_with_an_error_quickly(sandbox, call):
    name, *args = call
    result = sandbox(name, *args)
    assert _is_error(result), f"{result[:100]!r} ({len(result)} chars)"
    params = list(TOOLS[name].parameters["properties"])
    assert _is_error(sandbox("run_call", {"name": name, "arguments": dict(zip(params, args))}))


WORDS = {"a megabyte": LONG, "empty": "", "spaces": "   ", "a list": ["the"]}


@pytest.mark.parametrize("word", WORDS.values(), ids=WORDS)
def test_count_word_answers_hostile_words_with_an_error_quickly(sandbox, word):
    shakespeare_or_skip()
    assert _is_error(sandbox("count_word", "Hamlet", word))


def test_count_word_takes_regex_characters_literally(sandbox):
    shakespeare_or_skip()
    assert sandbox("count_word", "Hamlet", ".*") == "0"
    assert sandbox("count_word", "Hamlet", "(a+)+$") == "0"  # no catastrophic backtracking
    assert int(sandbox("count_word", "Hamlet", "Denmark")) > 0


# --------------------------------------------------------------------------- run_call
BAD_CALLS = {
    "days as words": {"name": "add_days", "arguments": {"date": "2024-01-01", "days": "three"}},
    "missing argument": {"name": "add_days", "arguments": {"date": "2024-01-01"}},
    "extra argument": {"name": "calculator", "arguments": {"expression": "1", "x": 2}},
    "arguments a list": {"name": "calculator", "arguments": ["1 + 1"]},
    "arguments None": {"name": "calculator", "arguments": None},
    "no arguments key": {"name": "calculator"},
    "no name key": {"arguments": {"expression": "1"}},
    "unknown tool": {"name": "rm_rf", "arguments": {}},
    "name a list": {"name": ["calculator"], "arguments": {}},
    "call None": None,
    "call a string": "calculator(1 + 1)",
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS)
def test_run_call_answers_malformed_calls_with_an_error(sandbox, call):
    assert _is_error(sandbox("run_call", call))


@pytest.mark.parametrize("exc", [RuntimeError("boom"), RecursionError("deep"), MemoryError(),
                                 KeyError("k"), ZeroDivisionError("z"), AttributeError("a")])
def test_run_call_turns_any_tool_failure_into_an_error(monkeypatch, exc):
    def broken(**kwargs):
        raise exc

    monkeypatch.setitem(TOOLS, "broken", Tool("broken", "fails", {}, broken))
    result = run_call({"name": "broken", "arguments": {}})
    assert _is_error(result) and type(exc).__name__ in result


def test_other_tools_keep_their_answers():
    assert tools.add_days("2024-01-31", "3") == "2024-02-03"  # a string of digits is a number
    assert tools.add_days("2024-01-31", -31) == "2023-12-31"
    assert tools.add_days("2024-13-01", 1) == "error: '2024-13-01' is not a YYYY-MM-DD date"
    assert tools.convert_units(-40, "C", "F") == "-40 F"
    assert tools.convert_units(2.5, "lb", "oz") == "40 oz"
    assert tools.convert_units(1, "kg", "m") == "error: cannot convert kg to m"
    assert tools.days_between("2024-03-01", "2024-02-01") == "-29"


def test_run_call_keeps_successful_results():
    assert run_call({"name": "calculator", "arguments": {"expression": "(12 + 30) * 2"}}) == "84"
    assert run_call({"name": "add_days", "arguments": {"date": "2024-02-28", "days": 2}}) \
        == "2024-03-01"
    assert run_call({"name": "convert_units", "arguments": {"value": 100, "from_unit": "C",
                                                            "to_unit": "F"}}) == "212 F"
