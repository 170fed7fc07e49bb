"""The byte <-> printable-character table of byte-level BPE (GPT-2).

Byte-level BPE works on UTF-8 bytes, so any string can be encoded with no unknown token. Vocab
files store each token as text, so GPT-2 maps every byte to a printable Unicode character:
printable Latin-1 bytes map to themselves and the rest (control bytes, space, ...) to
characters from U+0100 upward. That is why a space shows as 'Ġ' (U+0120) in vocab files.
"""

from __future__ import annotations


def bytes_to_unicode() -> dict[int, str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def token_to_bytes(token: str) -> bytes:
    return bytes(CHAR_TO_BYTE[c] for c in token)


def bytes_to_token(b: bytes) -> str:
    return "".join(BYTE_TO_CHAR[x] for x in b)
