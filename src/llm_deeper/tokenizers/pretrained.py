"""Real vocabularies: SmolLM2's from its GGUF (read with the `gguf` package) or any
byte-level BPE `tokenizer.json`.

A GGUF stores the vocabulary as `tokenizer.ggml.tokens` (GPT-2 byte-to-character form),
`tokenizer.ggml.merges` ("a b" strings, in rank order) and `tokenizer.ggml.token_type`
(3 = control tokens such as `<|im_start|>`). `tokenizer.ggml.pre` names the pre-tokenizer;
SmolLM2's ('smollm') isolates every digit and then applies the GPT-2 pattern, exactly as its
`tokenizer.json` (Digits(individual_digits=True) + ByteLevel) does.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .bpe import BPETokenizer
from .bytelevel import token_to_bytes
from .pretokenize import GPT2_PATTERN

# GGUF pre-tokenizer names -> stages (the ones whose rules we know exactly).
GGUF_PRE = {
    "gpt2": [("split", GPT2_PATTERN)],
    "default": [("split", GPT2_PATTERN)],
    "smollm": [("digits", True), ("split", GPT2_PATTERN)],
    "starcoder": [("digits", True), ("split", GPT2_PATTERN)],
}
CONTROL = 3


def open_gguf(path):
    """A `gguf.GGUFReader` for the file, or one sentence saying it is not a GGUF."""
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as exc:  # the gguf reader raises many kinds
        raise UserError(f"{path} is not a readable GGUF file ({exc}).") from None


def gguf_metadata(path, reader=None) -> dict:
    """Read the GGUF key/value metadata (no tensors) into plain Python values."""
    reader = reader if reader is not None else open_gguf(path)
    out = {}
    for key, field in reader.fields.items():
        try:
            out[key] = field.contents()
        except Exception:  # skip fields the reader cannot decode
            continue
    return out


def from_gguf(path, metadata: dict | None = None) -> BPETokenizer:
    meta = metadata if metadata is not None else gguf_metadata(path)
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise UserError(f"GGUF tokenizer model '{model}' is not byte-level BPE (gpt2).")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE:
        raise UserError(f"GGUF pre-tokenizer '{pre}' is not known here; "
                        f"known: {', '.join(GGUF_PRE)}.")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    specials = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == CONTROL}
    vocab = {i: token_to_bytes(t) for i, t in enumerate(tokens) if t not in specials}
    index = {t: i for i, t in enumerate(tokens)}
    merges = []
    for m in meta.get("tokenizer.ggml.merges", []):
        a, b = m.split(" ", 1)
        merges.append((index[a], index[b]))
    return BPETokenizer(vocab, merges, GGUF_PRE[pre], specials)


def from_tokenizer_json(path) -> BPETokenizer:
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"no tokenizer.json at {path}.")
    return BPETokenizer.from_file(path)
