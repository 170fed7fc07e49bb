"""The one parser of replies (chat/reply.py): content, reasoning and tool calls, identical
whether the text arrives at once or token by token (any split), the same calls for the server,
the chat loop and the evaluator; and the server's request validation."""


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_deeper.chat.reply import DeltaParser, parse_call, parse_tool_calls, split_text
from llm_deeper.chat.tools import format_call, run_call

TEXT = ("<think>The user wants a sum.</think>Let me compute. "
        '<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 2"}}</tool_call>'
        '<tool_call>{"name": "add_days", "arguments": {"date": "2024-01-01", "days": 3}}'
        "</tool_call> done <tool_call>not json</tool_call>")


def _streamed(text, cuts, tools=True):
    p, got, seen = DeltaParser(tools), {"content": "", "reasoning": "", "calls": []}, ""
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
    for i, piece in enumerate(pieces):
        seen += piece
        for kind, value in p.feed(seen, final=i == len(pieces) - 1):
            if kind == "tool_call":
                got["calls"].append((value["name"], value["arguments"]))
            else:
                got[kind] += value
    return got


def test_split_text_separates_the_three_fields():
    content, reasoning, calls = split_text(TEXT, tools=True)
    assert reasoning == "The user wants a sum."
    assert [c["name"] for c in calls] == ["calculator", "add_days"]
    assert calls[1]["arguments"] == {"date": "2024-01-01", "days": 3}
    assert all(c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]
    assert content == "Let me compute.  done <tool_call>not json</tool_call>"
    # without tools in the request, tool-call text is plain content
    content, _, calls = split_text(TEXT, tools=False)
    assert not calls and '"calculator"' in content


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, len(TEXT) - 1), max_size=40, unique=True).map(sorted))
def test_streaming_any_split_gives_the_same_fields(cuts):
    whole = _streamed(TEXT, [])
    assert _streamed(TEXT, cuts) == whole
    assert whole["reasoning"] == "The user wants a sum."
    assert [n for n, _ in whole["calls"]] == ["calculator", "add_days"]


def test_an_unfinished_tag_is_returned_as_content():
    content, reasoning, calls = split_text('Sure <tool_call>{"name": "calc', tools=True)
    assert content == 'Sure <tool_call>{"name": "calc' and not calls and reasoning is None
    assert split_text("a < b and <thin", tools=True)[0] == "a < b and <thin"


def test_calls_round_trip_through_the_format():
    text = "Let me check. " + format_call("calculator", {"expression": "2+2"}) + \
        format_call("add_days", {"date": "2020-01-01", "days": 1}) + "<tool_call>{bad</tool_call>"
    calls, rest = parse_tool_calls(text)
    assert [c["name"] for c in calls] == ["calculator", "add_days"]
    assert rest == "Let me check. <tool_call>{bad</tool_call>"  # not a call: it stays text
    assert [run_call(c) for c in calls] == ["4", "2020-01-02"]
    assert run_call({"name": "nope", "arguments": {}}).startswith("error: unknown tool")


@pytest.mark.parametrize("body,expected", [
    ('{"name": "f", "arguments": {"x": 1}}', ("f", {"x": 1})),
    ('  {"name": "f", "arguments": {}}\n', ("f", {})),  # whitespace around the JSON
    ('{"name": "f"}', ("f", {})),  # no arguments: none
    ('{"name": "f", "parameters": {"x": 1}}', ("f", {"x": 1})),  # another spelling
    ('{"name": "f", "arguments": "{\\"x\\": 1}"}', ("f", {"x": 1})),  # arguments as a JSON string
    ('{"name": "f", "arguments": [1]}', None),  # arguments that are not an object
    ('{"name": "f", "arguments": "not json"}', None),
    ('{"arguments": {}}', None), ('{"name": 3}', None), ('[1, 2]', None), ("{bad", None),
    pytest.param('{"name": "f", "arguments": ' + "[" * 100000 + "]" * 100000 + "}", None,
                 id="nested-past-the-json-parser"),
    pytest.param('{"name": "f", "arguments": {"x": ' + "9" * 5000 + "}}", None,
                 id="an-int-of-5000-digits"),
])
def test_one_rule_for_what_a_call_is(body, expected):
    """The cases the evaluator's and the server's parsers used to judge differently."""
    call = parse_call(body)
    assert (call and (call["name"], call["arguments"])) == (expected or None)
    calls, _ = parse_tool_calls(f"<tool_call>{body}</tool_call>")
    _, _, served = split_text(f"<tool_call>{body}</tool_call>", tools=True)
    assert [(c["name"], c["arguments"]) for c in calls] == \
        [(c["name"], c["arguments"]) for c in served] == ([expected] if expected else [])


def test_request_models_ignore_unknown_fields_and_bound_values():
    import pytest
    from pydantic import ValidationError

    from llm_deeper.serve.protocol import ChatRequest

    r = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                    "some_future_field": 1, "stop": "x"})
    assert r.stop_list() == ["x"] and r.temperature == 1.0
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}, {"n": 100},
                {"messages": []}, {"messages": [{"role": "robot", "content": "x"}]}):
        with pytest.raises(ValidationError):
            ChatRequest.model_validate({"model": "m", "messages": [
                {"role": "user", "content": "hi"}], **bad})
