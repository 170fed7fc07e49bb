"""Grammar-constrained decoding with llguidance: the model can only produce text the grammar
accepts, so JSON parses and matches its schema, and a required tool call is always a call.

At every step the grammar gives the set of tokens that can continue a valid output (a bit mask
over the vocabulary); the sampler sets every other logit to -inf before it samples. When the
output is complete only the end-of-sequence token remains allowed. llguidance (Microsoft, Rust)
computes the masks through a lexer and an Earley parser over the tokenizer's byte strings.

Three constraints are built here:
* `response_format: json_object`  -> any JSON object;
* `response_format: json_schema`  -> JSON valid under the schema;
* `tool_choice: required | {"function": {"name": ...}}` -> one or more
  `<tool_call>{"name": <a tool>, "arguments": <its parameters schema>}</tool_call>`.
"""

from __future__ import annotations

import json

import numpy as np

from ..errors import UserError


def _llg():
    try:
        import llguidance
    except ImportError:
        raise UserError("structured output needs llguidance: uv sync --extra serve.") from None
    return llguidance


class GrammarFactory:
    """Holds the llguidance view of the tokenizer (built once per model)."""

    def __init__(self, tokenizer, vocab_size: int):
        """tokenizer: a transformers fast tokenizer, or one with .llguidance(n_vocab)."""
        llg = _llg()
        self.llg = llg
        if hasattr(tokenizer, "llguidance"):
            self.tokenizer = tokenizer.llguidance(vocab_size)
        else:
            import llguidance.hf  # imports transformers

            self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.vocab_size = vocab_size

    # ------------------------------------------------------------------ grammars
    def json_schema(self, schema: dict | None) -> str:
        return self.llg.LLMatcher.grammar_from_json_schema(
            schema if schema else {"type": "object"})

    def tool_calls(self, tools: list[dict], only: str | None = None) -> str:
        """tools: [{"name", "parameters"}]; only: the one tool that must be called."""
        options = []
        for t in tools:
            if only is not None and t["name"] != only:
                continue
            params = t.get("parameters") or {"type": "object", "properties": {}}
            options.append({"type": "object", "properties": {
                "name": {"const": t["name"]}, "arguments": params},
                "required": ["name", "arguments"], "additionalProperties": False})
        if not options:
            raise UserError(f"tool_choice names '{only}', which is not among the tools.")
        body = options[0] if len(options) == 1 else {"anyOf": options}
        calls = "call" if only is not None else "call+"
        lark = (f"start: {calls}\n"
                f'call: "<tool_call>" body "</tool_call>"\n'
                f"body: %json {json.dumps(body)}\n")
        return self.llg.LLMatcher.grammar_from_lark(lark)

    def check(self, grammar: str) -> None:
        """Compile the grammar and take its first step: a grammar llguidance rejects, or one
        that cannot produce anything (a schema whose $refs only point at each other), is a
        UserError now instead of an empty answer later."""
        c = self.constraint(grammar)
        first = c([])
        if c.matcher.is_error() or not first.any():
            reason = (c.matcher.get_error() or "no output satisfies it").splitlines()[0]
            raise UserError(f"the schema cannot be enforced ({reason[:200]}).")

    def constraint(self, grammar: str) -> Constraint:
        is_error, msgs = self.llg.LLMatcher.validate_grammar_with_warnings(grammar,
                                                                           self.tokenizer)
        if is_error:
            raise UserError(f"the schema cannot be used for constrained decoding: {msgs[0]}")
        return Constraint(self.llg.LLMatcher(self.tokenizer, grammar, log_level=0),
                          self.vocab_size)


class Constraint:
    """mask(generated tokens) -> bool array over the vocabulary (True: allowed)."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.consumed = 0

    def __call__(self, generated: list[int]) -> np.ndarray:
        m = self.matcher
        new = generated[self.consumed:]
        if new:
            m.consume_tokens(new)
            self.consumed = len(generated)
        if m.is_error():  # cannot happen when every token came through the mask
            raise RuntimeError(f"grammar state lost: {m.get_error()}")
        bits = np.frombuffer(m.compute_bitmask(), dtype=np.uint8)
        mask = np.unpackbits(bits, bitorder="little").astype(bool)
        out = np.zeros(self.vocab_size, dtype=bool)
        n = min(self.vocab_size, mask.size)
        out[:n] = mask[:n]
        return out
