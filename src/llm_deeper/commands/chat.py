"""`llm-deeper chat`: multi-turn chat with a pretrained model in the terminal."""

from __future__ import annotations

from pathlib import Path

from .common import add_sampling, sampling

HELP = "multi-turn chat with a pretrained model in the terminal"


def add_arguments(p) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="registry name, a GGUF path, or (engine hf) an HF directory or hub id")
    p.add_argument("--engine", choices=["numpy", "torch", "hf"], default=None,
                   help="numpy or torch for GGUF models, hf for HF directories and adapters "
                   "(default: hf with --adapter or an HF directory, else torch)")
    p.add_argument("--adapter", default=None, help="a PEFT adapter directory (engine hf)")
    p.add_argument("--tools", action="store_true",
                   help="offer the built-in tools and run the calls the model makes")
    p.add_argument("--system", default=None, help="a system message (default: none of our own)")
    add_sampling(p)
    p.set_defaults(temperature=0.0, max_tokens=256)


def run(args) -> None:
    from ..chat.terminal import chat_loop

    engine = args.engine or ("hf" if args.adapter or Path(args.model).is_dir() else "torch")
    chat_loop(args.model, engine, sampling(args), system=args.system, adapter=args.adapter,
              tools=args.tools)
