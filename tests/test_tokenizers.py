"""Tokenizers: char and byte-level BPE, trained here and loaded from SmolLM2's GGUF, against
HF `tokenizers` (exact ids) on every line of the works corpus and on hypothesis strings."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_deeper.errors import UserError
from llm_deeper.tokenizers import BPETokenizer, CharTokenizer, from_gguf, load_tokenizer
from llm_deeper.tokenizers.pretokenize import GPT2_PATTERN, GPT4_PATTERN, PreTokenizer

from conftest import shakespeare_or_skip, smollm2_or_skip

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
        "You are all resolved rather to die than to famish? 1234 +- 3.14159 — naïve café 😀\n"
        "It's what we'll do, I've said; they're here.   Trailing spaces   \n\t tabs\r\n") * 20


def test_char_roundtrip_and_unknown():
    tok = CharTokenizer.train("hello world")
    assert tok.decode(tok.encode("hello")) == "hello"
    assert tok.vocab_size == len(set("hello world"))
    with pytest.raises(UserError, match="not in this tokenizer"):
        tok.encode("z")
    with pytest.raises(UserError, match="outside the vocabulary"):
        tok.decode([99])


def test_pretokenizer_patterns():
    gpt2 = PreTokenizer([("split", GPT2_PATTERN)])
    assert gpt2("Hello world's  12345!!") == ["Hello", " world", "'s", " ", " 12345", "!!"]
    gpt4 = PreTokenizer([("split", GPT4_PATTERN)])
    assert gpt4("Hello WORLD'S 12345\n\n x") == ["Hello", " WORLD", "'S", " ", "123", "45", "\n\n",
                                                  " x"]
    digits = PreTokenizer([("digits", True), ("split", GPT2_PATTERN)])
    assert digits("a 2024") == ["a", " ", "2", "0", "2", "4"]


@pytest.fixture(scope="module")
def trained():
    return BPETokenizer.train(TEXT, 300, "gpt4", ["<|endoftext|>"])


def test_training_is_deterministic_and_sized(trained):
    again = BPETokenizer.train(TEXT, 300, "gpt4", ["<|endoftext|>"])
    assert again.merges == trained.merges
    assert trained.vocab_size == 300
    assert trained.special_tokens == {"<|endoftext|>": 299}
    # the first merge is the most frequent byte pair (ties: smallest pair), counted directly
    from collections import Counter

    pairs = Counter()
    for piece in PreTokenizer([("split", GPT4_PATTERN)])(TEXT):
        b = piece.encode()
        pairs.update(zip(b, b[1:]))
    best = min(pairs, key=lambda p: (-pairs[p], p))
    assert trained.merges[0] == best


def test_trained_tokenizer_matches_hf_tokenizers(trained):
    """Our tokenizer.json loads in HF tokenizers, which then gives our ids exactly."""
    from tokenizers import Tokenizer

    hf = Tokenizer.from_str(trained.to_json())
    for line in TEXT.splitlines()[:40] + ["x<|endoftext|>y", "unseen wörds ∑ 99999"]:
        assert trained.encode(line) == hf.encode(line, add_special_tokens=False).ids
        assert trained.decode(trained.encode(line)) == line


def test_save_load_roundtrip(trained, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(trained.to_json())
    loaded = load_tokenizer(path)
    assert loaded.encode(TEXT[:500]) == trained.encode(TEXT[:500])
    assert json.loads(path.read_text())["model"]["type"] == "BPE"


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_roundtrip_any_string(trained, s):
    assert trained.decode(trained.encode(s)) == s
    assert trained.decode(trained.encode(s, allow_special=False)) == s


def test_special_tokens(trained):
    ids = trained.encode("a<|endoftext|>b")
    assert ids[1] == 299 and trained.decode(ids) == "a<|endoftext|>b"
    assert 299 not in trained.encode("a<|endoftext|>b", allow_special=False)
    with pytest.raises(UserError, match="not in this tokenizer"):
        trained.decode([10_000])


# ----------------------------------------------------------------------------- SmolLM2 vocab
@pytest.fixture(scope="module")
def smol():
    path = smollm2_or_skip()
    return from_gguf(path)


@pytest.fixture(scope="module")
def smol_hf():
    """HF tokenizers built independently from the GGUF's vocabulary and merges, with the
    pre-tokenizer of SmolLM2's published tokenizer.json (Digits + ByteLevel)."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = GGUFReader(str(smollm2_or_skip()))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    return tok


def test_smollm2_matches_hf_on_every_line_of_works(smol, smol_hf):
    shakespeare_or_skip()
    from llm_deeper.data import works

    lines = works().splitlines()
    ours = [smol.encode(line) for line in lines]
    theirs = [e.ids for e in smol_hf.encode_batch(lines, add_special_tokens=False)]
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not bad, f"{len(bad)} of {len(lines)} lines differ, first: {lines[bad[0]]!r}"
    assert len(lines) > 100_000


def test_smollm2_matches_transformers_gguf_loader(smol):
    """transformers reads the same GGUF on its own: same ids on a sample of works and chat.

    transformers' GGUF converter builds a plain ByteLevel pre-tokenizer and drops the digit
    isolation that SmolLM2's tokenizer.json (and llama.cpp's 'smollm' rule) apply first, so the
    two differ where a digit follows whitespace ('   1.' -> '  ', ' 1' instead of '   ', '1').
    We follow the real tokenizer (checked above); here only digit-free lines are compared."""
    shakespeare_or_skip()
    from transformers import AutoTokenizer

    from llm_deeper.data import works

    path = smollm2_or_skip()
    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    lines = [line for line in works().splitlines()[::20] if not any(c.isdigit() for c in line)]
    lines.append("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n")
    for line in lines:
        assert smol.encode(line) == hf.encode(line, add_special_tokens=False), line


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_smollm2_matches_hf_on_hypothesis_strings(smol, smol_hf, s):
    assert smol.encode(s) == smol_hf.encode(s, add_special_tokens=False).ids


def test_smollm2_loads_from_tokenizer_json(smol, smol_hf, tmp_path):
    smol_hf.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    text = "Hello, SmolLM2! 2024-11-23 <|im_start|>user\nhi<|im_end|>"
    assert loaded.encode(text) == smol.encode(text) == smol_hf.encode(
        text, add_special_tokens=False).ids
    assert loaded.decode(loaded.encode(text)) == text
    assert smol.vocab_size == 49152


def test_unsupported_tokenizer_json_is_one_sentence(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram"}}))
    with pytest.raises(UserError, match="not byte-level BPE"):
        load_tokenizer(tmp_path)
