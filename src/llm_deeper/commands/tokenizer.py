"""`llm-deeper tokenizer`: train byte-level BPE on a corpus; encode a text with a tokenizer."""

from __future__ import annotations

import json

HELP = "train byte-level BPE on a corpus, or encode a text"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="tok_command", required=True, metavar="<subcommand>")
    q = sub.add_parser("train", help="train byte-level BPE on a corpus, write tokenizer.json")
    q.add_argument("--data", default="works", help="works, a title (sonnets) or a text file")
    q.add_argument("--vocab-size", type=int, default=1024,
                   help="ids in all: 256 bytes + merges + <|endoftext|>")
    q.add_argument("--pattern", default="gpt4", help="gpt2, gpt4 or a regular expression")
    q.add_argument("--out", required=True, help="tokenizer.json to write")
    q = sub.add_parser("encode", help="a text's token ids and the piece each one stands for")
    q.add_argument("--tokenizer", required=True, help="tokenizer.json, GGUF, or smollm2-135m")
    q.add_argument("text", help="the text to encode")


def run(args) -> int:
    from ..tokenizers import BPETokenizer, load_tokenizer
    from ..util.paths import atomic_write_text

    if args.tok_command == "train":
        from ..data import load_text

        tok = BPETokenizer.train(load_text(args.data), args.vocab_size, args.pattern,
                                 ["<|endoftext|>"], progress=True)
        atomic_write_text(args.out, tok.to_json())
        print(f"{tok.vocab_size} tokens ({len(tok.merges)} merges) written to {args.out}")
        return 0
    from ..pretrained import models

    name = args.tokenizer  # a registry model's or GGUF's vocabulary, or a tokenizer.json
    tok = load_tokenizer(models.gguf_file(name) if name in models.REGISTRY else name)
    ids = tok.encode(args.text)
    print(json.dumps({"ids": ids, "tokens": [tok.decode([i]) for i in ids]}, ensure_ascii=False))
    return 0
