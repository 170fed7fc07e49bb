"""Supervised fine-tuning data in the two standard shapes, from JSONL, JSON or CSV files.

* conversational: {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}
* prompt/completion: {"prompt": ..., "completion": ...}  (strings, or lists of messages)

Rows are checked when loaded; a file in another shape gets one sentence naming the columns it
has and the shapes accepted. Splits: the file's own (a dict of lists in JSON, or a `split`
column), else a seeded shuffle into train/validation/test. A name that is not a file but looks
like a hub dataset id (`owner/name`) is loaded with `datasets.load_dataset` when online.

`as_messages` turns either shape into a conversation, which is what the trainer and the
evaluators consume: a prompt string becomes a user turn and a completion string an assistant
turn.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from ..errors import UserError

SHAPES = "'messages' (a list of {role, content}) or 'prompt' and 'completion'"


def _check_row(row: dict, where: str) -> dict:
    if "messages" in row:
        msgs = row["messages"]
        if isinstance(msgs, str):
            try:
                msgs = json.loads(msgs)
            except json.JSONDecodeError:
                raise UserError(f"{where}: 'messages' is not a JSON list of messages.") from None
        if not (isinstance(msgs, list) and msgs and all(
                isinstance(m, dict) and "role" in m and "content" in m for m in msgs)):
            raise UserError(f"{where}: 'messages' must be a non-empty list of "
                            "{role, content} objects.")
        return {**row, "messages": msgs}
    if "prompt" in row and "completion" in row:
        return row
    cols = ", ".join(sorted(row)) or "none"
    raise UserError(f"{where}: found columns {cols}; expected {SHAPES}.")


def as_messages(row: dict) -> list[dict]:
    if "messages" in row:
        return row["messages"]

    def turns(x, role):
        return x if isinstance(x, list) else [{"role": role, "content": str(x)}]

    return turns(row["prompt"], "user") + turns(row["completion"], "assistant")


def _split(rows: list[dict], splits, seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    rows = rows[:]
    rng.shuffle(rows)
    n = len(rows)
    a, b = int(splits[0] * n), int((splits[0] + splits[1]) * n)
    return {"train": rows[:a], "validation": rows[a:b], "test": rows[b:]}


def _load_hub(name: str, splits, seed: int) -> dict[str, list[dict]]:
    try:
        import datasets
    except ImportError:
        raise UserError(f"'{name}' is not a file; loading hub datasets needs the 'datasets' "
                        "package (uv sync --extra hf).") from None
    try:
        ds = datasets.load_dataset(name)
    except Exception as exc:  # offline, unknown id, gated: one sentence, not a traceback
        raise UserError(f"cannot load the dataset '{name}' ({str(exc).splitlines()[0][:200]}); "
                        "hub datasets need the network, or give a JSONL/JSON/CSV file.") from None
    out = {k: [_check_row(dict(r), f"{name}[{k}][{i}]") for i, r in enumerate(v)]
           for k, v in ds.items()}
    if "validation" not in out and "test" not in out and "train" in out:
        return _split(out["train"], splits, seed)
    return out


def load_sft(path, splits=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, list[dict]]:
    path = Path(path)
    if not path.is_file():
        if str(path).count("/") == 1 and not path.suffix and not path.parent.is_dir():
            return _load_hub(str(path), splits, seed)
        raise UserError(f"no dataset file at {path} (JSONL, JSON or CSV, or a hub dataset id "
                        "like owner/name when online).")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip()]
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
                return {k: [_check_row(r, f"{path}[{k}][{i}]") for i, r in enumerate(v)]
                        for k, v in data.items()}
            rows = data if isinstance(data, list) else [data]
        elif suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            raise UserError(f"{path}: unknown dataset format '{suffix}' (use .jsonl, .json, .csv).")
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}).") from None
    if not rows:
        raise UserError(f"{path} holds no rows.")
    rows = [_check_row(r, f"{path} row {i + 1}") for i, r in enumerate(rows)]
    if all("split" in r for r in rows):
        out: dict[str, list[dict]] = {}
        for r in rows:
            out.setdefault(r["split"], []).append(r)
        return out
    return _split(rows, splits, seed)


def save_jsonl(rows: list[dict], path) -> None:
    from ..util.paths import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
