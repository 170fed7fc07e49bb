"""Task metrics of the built-in tool-calling task: does the model call the right tool with the
right arguments (or answer directly when no tool is needed)?"""

from __future__ import annotations

import json

from ..tools import parse_tool_calls


def first_turn(example: dict) -> list[dict]:
    """The conversation up to the assistant's first reply (system + user)."""
    return [m for m in example["messages"][:2]]


def score(examples: list[dict], replies: list[str]) -> dict:
    n = len(examples)
    name_ok = args_ok = 0
    for ex, reply in zip(examples, replies):
        calls, _ = parse_tool_calls(reply)
        want = ex["calls"]
        if [c["name"] for c in calls] == [c["name"] for c in want]:
            name_ok += 1
            same = [json.dumps(a["arguments"], sort_keys=True) == json.dumps(b["arguments"],
                                                                              sort_keys=True)
                    for a, b in zip(calls, want)]
            if all(same):
                args_ok += 1
    return {"examples": n, "tool_name_accuracy": name_ok / n, "exact_match": args_ok / n}


def generate_replies(model, tok, examples: list[dict], max_new_tokens: int = 96,
                     progress: bool = False) -> list[str]:
    import torch
    from tqdm.auto import tqdm

    out = []
    for ex in tqdm(examples, desc="generate", disable=not progress):
        ids = tok.apply_chat_template(first_turn(ex), add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.inference_mode():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out
