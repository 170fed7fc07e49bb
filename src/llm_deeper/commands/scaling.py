"""`llm-deeper scaling`: being written (issue 13)."""

from __future__ import annotations

from ..errors import UserError

HELP = "(being written)"


def add_arguments(p) -> None:
    pass


def run(args) -> None:
    raise UserError("llm-deeper scaling is being written.")
