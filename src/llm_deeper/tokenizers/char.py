"""Character-level tokenizer: one id per distinct character, in sorted order.

The simplest tokenizer there is, and the one nanoGPT's Shakespeare benchmarks use: the works
corpus has 84 distinct characters, so the vocabulary has 84 ids.
"""

from __future__ import annotations

import json

from ..errors import UserError


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: str | list[str]):
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as exc:
            raise UserError(f"character {exc.args[0]!r} is not in this tokenizer's "
                            f"vocabulary of {self.vocab_size} characters.") from None

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.chars):
                raise UserError(f"token id {i} is outside the vocabulary "
                                f"(0..{len(self.chars) - 1}).")
            out.append(self.chars[i])
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": "".join(self.chars)}, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        return cls(d["chars"])
