"""Tokenizers: character-level and byte-level BPE (trained here or loaded from real
vocabularies)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .bpe import BPETokenizer
from .char import CharTokenizer
from .pretrained import from_gguf, from_tokenizer_json

__all__ = ["BPETokenizer", "CharTokenizer", "from_gguf", "from_tokenizer_json",
           "tokenizer_from_json", "load_tokenizer"]


def tokenizer_from_json(text: str):
    d = json.loads(text)
    if d.get("type") == "char":
        return CharTokenizer.from_dict(d)
    return BPETokenizer.from_hf_dict(d)


def load_tokenizer(path):
    """A `tokenizer.json` (ours or HF's byte-level BPE), a checkpoint dir, or a GGUF file."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.suffix == ".gguf":
        return from_gguf(path)
    if not path.is_file():
        raise UserError(f"no tokenizer at {path}.")
    try:
        return tokenizer_from_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, KeyError) as exc:
        raise UserError(f"{path} is not a valid tokenizer file ({exc}).") from None
