"""`llm-deeper data`: the Shakespeare corpus (pull it once, list its titles)."""

from __future__ import annotations

HELP = "corpora: pull Shakespeare, list titles"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="data_command", required=True, metavar="<subcommand>")
    q = sub.add_parser("pull", help="download a corpus into the cache (once)")
    q.add_argument("name", choices=["shakespeare"], help="the corpus")
    sub.add_parser("list", help="titles of the single plays and poems")


def run(args) -> None:
    from ..data import shakespeare

    if args.data_command == "pull":
        print(f"Shakespeare texts in {shakespeare.pull_shakespeare()}")
    else:
        print("\n".join(["works", "plays", "poems"] + shakespeare.titles()))
