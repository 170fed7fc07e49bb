"""Pre-tokenization: cut text into pieces before BPE runs inside each piece.

BPE never merges across a piece boundary, which is why "dog." and "dog!" share the token "dog".
The pieces come from a regular expression:

* GPT-2:  's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
  (contractions, words with their leading space, numbers, punctuation runs, whitespace)
* GPT-4 (cl100k): case-insensitive contractions, numbers in groups of at most three digits,
  newlines kept apart from other whitespace.

Real tokenizers chain stages, e.g. SmolLM2 first isolates every digit and then applies the GPT-2
pattern to what is left. A stage list here mirrors the `pre_tokenizer` of a `tokenizer.json`.
The `regex` package is used (not `re`) because the patterns need Unicode classes (\\p{L}).
"""

from __future__ import annotations

import regex

GPT2_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}"""
                r"""| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

_DIGIT = regex.compile(r"\p{N}")


class PreTokenizer:
    """A chain of stages; each stage cuts every piece of the previous one.

    Stages: ("split", pattern) keeps matches and the gaps between them as pieces;
    ("digits", individual) isolates each numeric character (or runs of them).
    """

    def __init__(self, stages: list[tuple[str, object]]):
        self.stages = stages
        self._compiled = [(k, regex.compile(v) if k == "split" else v) for k, v in stages]

    def __call__(self, text: str) -> list[str]:
        pieces = [text]
        for kind, arg in self._compiled:
            out: list[str] = []
            for p in pieces:
                if kind == "split":
                    out.extend(_split_isolated(arg, p))
                else:  # digits
                    out.extend(_split_digits(p, individual=bool(arg)))
            pieces = out
        return pieces


def _split_isolated(rx, text: str) -> list[str]:
    out, last = [], 0
    for m in rx.finditer(text):
        if m.start() > last:
            out.append(text[last:m.start()])
        if m.end() > m.start():
            out.append(m.group())
        last = m.end()
    if last < len(text):
        out.append(text[last:])
    return out


def _split_digits(text: str, individual: bool) -> list[str]:
    out, start = [], 0
    for m in (_DIGIT.finditer(text) if individual else regex.finditer(r"\p{N}+", text)):
        if m.start() > start:
            out.append(text[start:m.start()])
        out.append(m.group())
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return out
