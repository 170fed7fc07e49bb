"""Evaluate a model (with or without an adapter) on conversations, the way it will be used.

For the built-in tool-calling task every test conversation is played as an agent would play it:
the model sees the system prompt and the request, its reply is parsed for tool calls, the calls
are run with the real tools, the results go back as `tool` messages and the model writes its
final answer. Scored:

* tool-name accuracy: the called tools (in order) are the reference's (none for no-tool requests);
* exact match: names and arguments equal the reference (JSON-equal);
* answer correctness: the final answer contains the reference tool result as a whole word (for a
  no-tool request: the model called no tool);
* ROUGE-1/2/L and BERTScore of the final answer against the reference answer.

For any other dataset (`conversation_metrics`) the model answers the last assistant turn of each
conversation from what precedes it, scored with ROUGE and BERTScore.

Generation is greedy and batched (left padding), with transformers' `generate`.
"""

from __future__ import annotations

import json
import re

from ..chat.reply import parse_tool_calls
from ..chat.tools import run_call


def first_turn(example: dict) -> list[dict]:
    """The conversation up to the assistant's first reply (system + user)."""
    msgs = example["messages"]
    first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:first]


def generate_batch(model, tok, conversations: list[list[dict]], max_new_tokens: int = 96,
                   batch_size: int = 8, progress: bool = False,
                   desc: str = "generate") -> list[str]:
    """Greedy replies to each conversation (chat template + generation prompt)."""
    import torch

    from ..util.progress import progress_bar

    side, tok.padding_side = tok.padding_side, "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[str] = []
    try:
        for i in progress_bar(range(0, len(conversations), batch_size), desc=desc,
                              enabled=progress):
            texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                     for c in conversations[i:i + batch_size]]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            kw = dict(max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                      top_p=None, top_k=None, pad_token_id=pad)
            with torch.inference_mode():
                if _prompt_tuned(model):
                    gen, n = _generate_prompt_tuned(model, enc, **kw), 0
                else:
                    gen, n = model.generate(**enc, **kw), enc["input_ids"].shape[1]
            out += [tok.decode(g[n:], skip_special_tokens=True).strip() for g in gen]
    finally:
        tok.padding_side = side
    return out


def _prompt_tuned(model) -> bool:
    return getattr(getattr(model, "active_peft_config", None), "peft_type", None) == \
        "PROMPT_TUNING"


def _generate_prompt_tuned(model, enc, **kw):
    """Generation with a PEFT prompt-tuning adapter, the virtual tokens placed after each row's
    left padding. PEFT puts them before it and ignores position ids, which shifts the real
    tokens of a padded row away from the virtual ones (batched replies then differ from
    one-by-one replies); here each row sees the positions it had in training. Returns only the
    new tokens (generate from embeddings does)."""
    import torch

    ids, mask = enc["input_ids"], enc["attention_mask"]
    virtual = model.get_prompt(batch_size=len(ids))
    embeds = model.word_embeddings(ids)
    ones = torch.ones(virtual.shape[1], dtype=mask.dtype)
    rows, masks = [], []
    for i, pad in enumerate(int(p) for p in (mask == 0).sum(1)):
        rows.append(torch.cat([embeds[i, :pad], virtual[i].to(embeds.dtype), embeds[i, pad:]]))
        masks.append(torch.cat([mask[i, :pad], ones, mask[i, pad:]]))
    return model.get_base_model().generate(inputs_embeds=torch.stack(rows),
                                           attention_mask=torch.stack(masks), **kw)


def play(model, tok, examples: list[dict], batch_size: int = 8,
         progress: bool = False) -> list[dict]:
    """Each example played to its final answer: first reply, calls, tool results, answer."""
    firsts = generate_batch(model, tok, [first_turn(ex) for ex in examples], 96, batch_size,
                            progress, "tool calls")
    records, follow = [], []
    for ex, reply in zip(examples, firsts):
        calls, _ = parse_tool_calls(reply)
        rec = {"request": first_turn(ex)[-1]["content"], "reply": reply, "calls": calls,
               "answer": reply}
        if calls:
            conv = first_turn(ex) + [{"role": "assistant", "content": reply}] + \
                [{"role": "tool", "content": run_call(c)} for c in calls]
            rec["results"] = [m["content"] for m in conv[len(first_turn(ex)) + 1:]]
            follow.append((rec, conv))
        records.append(rec)
    answers = generate_batch(model, tok, [c for _, c in follow], 64, batch_size, progress,
                             "answers")
    for (rec, _), ans in zip(follow, answers):
        rec["answer"] = ans
    return records


def _same_args(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def score(examples: list[dict], records: list[dict], text_metrics: bool = True) -> dict:
    n = len(examples)
    name_ok = args_ok = answer_ok = 0
    for ex, rec in zip(examples, records):
        want, got = ex["calls"], rec["calls"]
        if [c["name"] for c in got] == [c["name"] for c in want]:
            name_ok += 1
            args_ok += all(_same_args(a["arguments"], b["arguments"]) for a, b in zip(got, want))
        if want:
            result = ex["messages"][3]["content"]
            answer_ok += bool(re.search(rf"(?<![\w.-]){re.escape(result)}(?![\w]|\.\d)",
                                        rec["answer"]))
        else:
            answer_ok += not got and bool(rec["answer"])
    out = {"examples": n, "tool_name_accuracy": name_ok / n, "exact_match": args_ok / n,
           "answer_correct": answer_ok / n}
    if text_metrics:
        out.update(text_scores([r["answer"] for r in records],
                               [ex["messages"][-1]["content"] for ex in examples]))
    return out


def text_scores(predictions: list[str], references: list[str]) -> dict:
    from ..evaluation.text_metrics import bertscore, rouge

    return {**rouge(predictions, references), **bertscore(predictions, references)}


def conversation_metrics(model, tok, rows: list[dict], batch_size: int = 8,
                         max_new_tokens: int = 128, progress: bool = False) -> tuple[dict, list]:
    """ROUGE and BERTScore of the model's last assistant turn against the reference."""
    from ..data.sft import as_messages

    prompts, refs = [], []
    for r in rows:
        msgs = as_messages(r)
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        prompts.append(msgs[:last])
        refs.append(msgs[last]["content"])
    preds = generate_batch(model, tok, prompts, max_new_tokens, batch_size, progress)
    records = [{"reference": r, "answer": p} for r, p in zip(refs, preds)]
    return {"examples": len(rows), **text_scores(preds, refs)}, records
