"""`llm-deeper bench tokenizer`: our byte-level BPE against HF `tokenizers` (Rust) on the works
corpus, in the same run.

* encode: SmolLM2's vocabulary, the whole corpus as one string, fresh tokenizers (no warm cache);
  the ids must be identical, then MB/s of each.
* train: a 1,024-token vocabulary with the GPT-4 pattern, ours vs HF's BpeTrainer (whose
  tie-breaking differs, so only the times compare).
"""

from __future__ import annotations

from ..errors import UserError
from .common import json_line, timed


def run(data: str = "works", vocab_size: int = 1024, log=print) -> dict:
    try:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        raise UserError("bench tokenizer compares with HF tokenizers; install it with "
                        "'uv sync --extra hf'.") from None
    from .. import models as registry
    from ..data import load_text
    from ..tokenizers import BPETokenizer, from_gguf
    from ..tokenizers.pretokenize import GPT4_PATTERN

    text = load_text(data)
    mb = len(text.encode("utf-8")) / 1e6
    gguf = registry.require("smollm2-135m")
    ours = from_gguf(gguf)
    hf = Tokenizer.from_str(ours.to_json())
    ours_ids, t_ours = timed(lambda: ours.encode(text))
    hf_ids, t_hf = timed(lambda: hf.encode(text, add_special_tokens=False).ids)
    identical = ours_ids == hf_ids
    log(f"encode {data} as one string ({mb:.2f} MB, {len(ours_ids):,} tokens, SmolLM2 "
        f"vocabulary): ours {mb / t_ours:.2f} MB/s, HF tokenizers {mb / t_hf:.2f} MB/s, "
        f"ratio {t_hf / t_ours:.3f}x, identical ids: {identical}")
    # Line by line: HF's encode_batch uses every core (Rust threads); ours is one Python thread.
    lines = text.splitlines()
    fresh = from_gguf(gguf)
    ours_lines, l_ours = timed(lambda: [fresh.encode(line) for line in lines])
    hf_lines, l_hf = timed(lambda: [e.ids for e in hf.encode_batch(lines,
                                                                   add_special_tokens=False)])
    identical_lines = ours_lines == hf_lines
    log(f"encode {data} line by line ({len(lines):,} lines): ours {mb / l_ours:.2f} MB/s, "
        f"HF tokenizers encode_batch {mb / l_hf:.2f} MB/s, ratio {l_hf / l_ours:.3f}x, "
        f"identical ids: {identical_lines}")

    _, tr_ours = timed(lambda: BPETokenizer.train(text, vocab_size, "gpt4"))
    hf_new = Tokenizer(models.BPE())
    hf_new.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(GPT4_PATTERN),
                             behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    _, tr_hf = timed(lambda: hf_new.train_from_iterator([text], trainer))
    log(f"train {vocab_size} tokens on {data}: ours {tr_ours:.2f} s, HF tokenizers {tr_hf:.2f} s "
        f"(ratio {tr_hf / tr_ours:.3f}x)")
    result = {"bench": "tokenizer", "data": data, "megabytes": round(mb, 3),
              "encode_mb_s_ours": round(mb / t_ours, 3), "encode_mb_s_hf": round(mb / t_hf, 3),
              "encode_ratio_ours_over_hf": round(t_hf / t_ours, 4), "identical_ids": identical,
              "lines_mb_s_ours": round(mb / l_ours, 3), "lines_mb_s_hf_batch": round(mb / l_hf, 3),
              "lines_ratio_ours_over_hf": round(l_hf / l_ours, 4),
              "identical_ids_lines": identical_lines,
              "train_vocab_size": vocab_size, "train_s_ours": round(tr_ours, 2),
              "train_s_hf": round(tr_hf, 2)}
    log(json_line(result))
    return result
