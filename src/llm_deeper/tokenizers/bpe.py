"""Byte-level BPE: train, encode, decode, save and load (the `tokenizer.json` format).

Byte-pair encoding starts from the 256 byte values and repeatedly merges the most frequent
adjacent pair into a new token. Encoding replays the merges: inside each pre-tokenized piece,
merge the pair with the lowest rank (the earliest learned merge) until no pair has a rank.

Training, tie-breaking (documented because it decides the vocabulary): at each step the pair with
the highest count wins; among pairs with equal counts, the smallest `(left_id, right_id)` wins.
Ids are byte values (0-255) or the order in which merges were learned, so the result depends only
on the text, never on dictionary order or hashing.

Special tokens (`<|endoftext|>`, `<|im_start|>`, ...) are cut out of the text before
pre-tokenization and map to their own ids, as HF `tokenizers` does for added tokens.

Save/load speak the subset of HF's `tokenizer.json` that byte-level BPE needs, so a vocabulary
trained here loads in HF `tokenizers`, and real vocabularies (GPT-2, SmolLM2, ...) load here.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict

import regex

from ..errors import UserError
from ..util.progress import progress_bar
from .bytelevel import bytes_to_token, token_to_bytes
from .pretokenize import GPT2_PATTERN, PATTERNS, PreTokenizer


class BPETokenizer:
    kind = "bpe"

    def __init__(self, vocab: dict[int, bytes], merges: list[tuple[int, int]],
                 stages: list[tuple[str, object]], special_tokens: dict[str, int] | None = None):
        self.vocab = dict(vocab)  # id -> bytes
        self.special_tokens = dict(special_tokens or {})  # text -> id
        self.stages = list(stages)
        self.pre = PreTokenizer(self.stages)
        by_bytes = {b: i for i, b in self.vocab.items()}
        # A trained vocabulary has all 256 bytes. Real ones may lack a few that never occur
        # (SmolLM2 has no token for 0xC0, 0xC1, 0xF5-0xFF and some control bytes); like HF
        # `tokenizers` without an unknown token, such bytes are dropped when encoding.
        self.byte_ids = [by_bytes.get(bytes([b])) for b in range(256)]
        self.complete = None not in self.byte_ids
        self.merges = list(merges)
        # (left, right) -> (rank, merged id): what encode() replays.
        self.ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self.merges):
            merged = by_bytes.get(self.vocab[a] + self.vocab[b])
            if merged is None:
                raise UserError(f"merge {rank} makes a token that is not in the vocabulary.")
            self.ranks.setdefault((a, b), (rank, merged))
        self.id_to_special = {i: s for s, i in self.special_tokens.items()}
        self._special_rx = (regex.compile("(" + "|".join(
            regex.escape(s) for s in sorted(self.special_tokens, key=len, reverse=True)) + ")")
            if self.special_tokens else None)
        self._cache: dict[str, list[int]] = {}

    # ---------------------------------------------------------------------------- training
    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = "gpt4",
              special_tokens: list[str] | None = None, progress: bool = False) -> BPETokenizer:
        special_tokens = list(special_tokens or [])
        if vocab_size < 256 + len(special_tokens):
            raise UserError(f"vocab_size must be at least 256 + {len(special_tokens)} special "
                            f"tokens, got {vocab_size}.")
        stages = [("split", PATTERNS.get(pattern, pattern))]
        pre = PreTokenizer(stages)
        counts = Counter(pre(text))
        words = [list(w.encode("utf-8")) for w in counts]
        freq = list(counts.values())

        vocab = {i: bytes([i]) for i in range(256)}
        by_bytes = {b: i for i, b in vocab.items()}
        pair_count: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words holding it
        for wi, w in enumerate(words):
            for p in zip(w, w[1:]):
                pair_count[p] += freq[wi]
                where[p].add(wi)
        # Max-heap on count, then smallest pair: entries go stale when counts change and are
        # skipped when popped (lazy deletion).
        heap = [(-c, p) for p, c in pair_count.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        n_target = vocab_size - len(special_tokens)
        bar = progress_bar(total=n_target - 256, desc="BPE merges", unit="merge",
                           enabled=progress)
        while len(vocab) < n_target and heap:
            neg, pair = heapq.heappop(heap)
            if pair_count.get(pair, 0) != -neg or -neg <= 0:
                continue
            new_bytes = vocab[pair[0]] + vocab[pair[1]]
            new_id = by_bytes.get(new_bytes)
            if new_id is None:
                new_id = len(vocab)
                vocab[new_id] = new_bytes
                by_bytes[new_bytes] = new_id
                bar.update(1)
            merges.append(pair)
            touched = set()
            for wi in list(where[pair]):
                w, f = words[wi], freq[wi]
                for p in zip(w, w[1:]):
                    pair_count[p] -= f
                    touched.add(p)
                    where[p].discard(wi)
                w = _merge(w, pair, new_id)
                words[wi] = w
                for p in zip(w, w[1:]):
                    pair_count[p] += f
                    touched.add(p)
                    where[p].add(wi)
            for p in touched:
                if pair_count[p] > 0:
                    heapq.heappush(heap, (-pair_count[p], p))
                else:
                    pair_count.pop(p, None)
        bar.close()
        specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
        return cls(vocab, merges, stages, specials)

    # ---------------------------------------------------------------------------- encoding
    @property
    def vocab_size(self) -> int:
        ids = list(self.vocab) + list(self.special_tokens.values())
        return max(ids) + 1

    def _bpe(self, piece: str) -> list[int]:
        ids = self._cache.get(piece)
        if ids is not None:
            return ids
        ids = [self.byte_ids[b] for b in piece.encode("utf-8")]
        if not self.complete:
            ids = [i for i in ids if i is not None]
        ranks = self.ranks
        while len(ids) >= 2:
            best = None
            for pair in zip(ids, ids[1:]):
                r = ranks.get(pair)
                if r is not None and (best is None or r[0] < best[0]):
                    best, best_pair = r, pair
            if best is None:
                break
            ids = _merge(ids, best_pair, best[1])
        if len(self._cache) < 500_000:
            self._cache[piece] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode with special-token strings treated as plain text."""
        out: list[int] = []
        for piece in self.pre(text):
            out.extend(self._bpe(piece))
        return out

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        if not allow_special or self._special_rx is None:
            return self.encode_ordinary(text)
        out: list[int] = []
        for k, part in enumerate(self._special_rx.split(text)):
            if k % 2:  # the captured separators are the special tokens
                out.append(self.special_tokens[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    def decode_bytes(self, ids) -> bytes:
        parts = []
        for i in ids:
            i = int(i)
            if i in self.vocab and i not in self.id_to_special:
                parts.append(self.vocab[i])
            elif i in self.id_to_special:
                parts.append(self.id_to_special[i].encode("utf-8"))
            else:
                raise UserError(f"token id {i} is not in this tokenizer's vocabulary "
                                f"(size {self.vocab_size}).")
        return b"".join(parts)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------- tokenizer.json I/O
    def to_hf_dict(self) -> dict:
        pre = []
        for kind, arg in self.stages:
            if kind == "digits":
                pre.append({"type": "Digits", "individual_digits": bool(arg)})
            else:
                pre.append({"type": "Split", "pattern": {"Regex": arg}, "behavior": "Isolated",
                            "invert": False})
        pre.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                    "use_regex": False})
        specials = set(self.special_tokens.values())
        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [
                {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True}
                for s, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1])],
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None,
                "continuing_subword_prefix": None, "end_of_word_suffix": None,
                "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                # special tokens appear in the vocabulary too, as in HF's own files
                "vocab": {**{bytes_to_token(b): i for i, b in sorted(self.vocab.items())
                             if i not in specials}, **self.special_tokens},
                "merges": [[bytes_to_token(self.vocab[a]), bytes_to_token(self.vocab[b])]
                           for a, b in self.merges],
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_hf_dict(), ensure_ascii=False)

    @classmethod
    def from_hf_dict(cls, d: dict) -> BPETokenizer:
        model = d.get("model") or {}
        if model.get("type") != "BPE":
            raise UserError(f"tokenizer model '{model.get('type')}' is not byte-level BPE.")
        if d.get("normalizer"):
            raise UserError(f"tokenizer normalizer '{d['normalizer'].get('type')}' is not "
                            "supported by this byte-level BPE.")
        if model.get("byte_fallback") or model.get("continuing_subword_prefix") \
                or model.get("end_of_word_suffix"):
            raise UserError("this tokenizer.json uses BPE options (byte_fallback or subword "
                            "affixes) that byte-level BPE does not need; it is not supported.")
        specials = {t["content"]: int(t["id"]) for t in d.get("added_tokens", [])}
        vocab = {int(i): token_to_bytes(t) for t, i in model["vocab"].items()
                 if t not in specials}
        by_token = model["vocab"]
        merges = []
        for m in model.get("merges", []):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            merges.append((int(by_token[a]), int(by_token[b])))
        return cls(vocab, merges, _parse_pre(d.get("pre_tokenizer")), specials)

    @classmethod
    def from_file(cls, path) -> BPETokenizer:
        with open(path, encoding="utf-8") as f:
            return cls.from_hf_dict(json.load(f))


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair`, left to right, by `new_id`."""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _parse_pre(p: dict | None) -> list[tuple[str, object]]:
    if p is None:
        raise UserError("this tokenizer.json has no pre_tokenizer; byte-level BPE needs one.")
    kind = p.get("type")
    if kind == "Sequence":
        return [s for sub in p["pretokenizers"] for s in _parse_pre(sub)]
    if kind == "ByteLevel":
        if p.get("add_prefix_space"):
            raise UserError("ByteLevel add_prefix_space=true is not supported.")
        return [("split", GPT2_PATTERN)] if p.get("use_regex", True) else []
    if kind == "Digits":
        return [("digits", bool(p.get("individual_digits", False)))]
    if kind == "Split":
        pat = p["pattern"]
        rx = pat["Regex"] if "Regex" in pat else regex.escape(pat["String"])
        if p.get("behavior", "Isolated") != "Isolated" or p.get("invert"):
            raise UserError(f"Split behaviour '{p.get('behavior')}' is not supported "
                            "(only Isolated).")
        return [("split", rx)]
    raise UserError(f"pre-tokenizer '{kind}' is not supported.")
