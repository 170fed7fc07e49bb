"""The built-in fine-tuning task with verifiable answers: tool calling.

Each example is a conversation in the standard `messages` shape:
    system    the tools (tools.tools_system_prompt)
    user      a request
    assistant <tool_call>{...}</tool_call>           (absent when no tool is needed)
    tool      the real result of running the call
    assistant the final answer, built from the result

Generalisation is what is measured, so the test split shares nothing with training but the
tools: its requests use phrasings (templates) and values (numbers, units, dates, words, titles)
that never occur in the training split. About one request in eight needs no tool.
"""

from __future__ import annotations

import random

from ..tools import TOOLS, format_call, run_call, tools_system_prompt

# Each task: phrasings for training and, disjoint, for testing.
PHRASES = {
    "calculator": (
        ["What is {a} times {b}?", "Compute {a} * {b}.", "Multiply {a} by {b}.",
         "What's {a} plus {b}?", "Add {a} and {b}.", "Calculate ({a} + {b}) * {c}."],
        ["I need the product of {a} and {b}.", "How much is {a} + {b}?",
         "Work out ({a} + {b}) * {c} for me."]),
    "convert_units": (
        ["Convert {v} {f} to {t}.", "How many {t} is {v} {f}?", "{v} {f} in {t}, please."],
        ["What does {v} {f} come to in {t}?", "Express {v} {f} as {t}."]),
    "add_days": (
        ["What date is {n} days after {d}?", "Add {n} days to {d}."],
        ["If today is {d}, what is the date in {n} days?"]),
    "days_between": (
        ["How many days are there from {d} to {e}?", "Count the days between {d} and {e}."],
        ["What is the number of days separating {d} and {e}?"]),
    "count_word": (
        ["How many times does the word '{w}' appear in {title}?",
         "Count the occurrences of '{w}' in {title}."],
        ["In {title}, how often is '{w}' used?"]),
    "none": (
        ["Say hello.", "Who wrote Hamlet?", "Thank you!", "What is a sonnet?"],
        ["Good morning!", "Who wrote Macbeth?", "What is iambic pentameter?"]),
}
NO_TOOL_ANSWERS = {
    "Say hello.": "Hello!", "Who wrote Hamlet?": "William Shakespeare wrote Hamlet.",
    "Thank you!": "You're welcome!",
    "What is a sonnet?": "A sonnet is a fourteen-line poem, often in iambic pentameter.",
    "Good morning!": "Good morning!", "Who wrote Macbeth?": "William Shakespeare wrote Macbeth.",
    "What is iambic pentameter?": "A line of five iambs: five unstressed-stressed pairs.",
}
# Disjoint value pools.
VALUES = {
    "train": dict(numbers=range(2, 50), lengths=[("m", "cm"), ("km", "mile"), ("inch", "cm"),
                                                 ("kg", "lb"), ("C", "F")],
                  years=(2019, 2022), words=["love", "king", "death", "night", "heart"],
                  titles=["hamlet", "macbeth", "othello", "sonnets", "tempest"]),
    "test": dict(numbers=range(50, 100), lengths=[("ft", "m"), ("mile", "km"), ("lb", "kg"),
                                                  ("F", "C"), ("g", "oz")],
                 years=(2024, 2026), words=["crown", "sword", "blood", "honour"],
                 titles=["lear", "julius_caesar", "romeo_and_juliet", "twelfth_night"]),
}


def _date(rng, years):
    return f"{rng.randint(*years)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def make_example(rng: random.Random, split: str) -> dict:
    pool = VALUES["test" if split == "test" else "train"]
    which = 1 if split == "test" else 0
    task = rng.choices(list(PHRASES), weights=[3, 2, 1, 1, 1, 1.1])[0]
    template = rng.choice(PHRASES[task][which])
    if task == "none":
        return {"messages": [{"role": "system", "content": tools_system_prompt()},
                             {"role": "user", "content": template},
                             {"role": "assistant", "content": NO_TOOL_ANSWERS[template]}],
                "task": "none", "calls": []}
    n = pool["numbers"]
    if task == "calculator":
        a, b, c = (rng.choice(n) for _ in range(3))
        user = template.format(a=a, b=b, c=c)
        expr = (f"({a} + {b}) * {c}" if "(" in template else
                f"{a} + {b}" if ("plus" in template or "Add" in template or "+" in template)
                else f"{a} * {b}")
        args = {"expression": expr}
    elif task == "convert_units":
        f, t = rng.choice(pool["lengths"])
        v = rng.choice(n)
        user, args = template.format(v=v, f=f, t=t), {"value": v, "from_unit": f, "to_unit": t}
    elif task == "add_days":
        d, k = _date(rng, pool["years"]), rng.choice(n)
        user, args = template.format(n=k, d=d), {"date": d, "days": k}
    elif task == "days_between":
        d, e = sorted([_date(rng, pool["years"]), _date(rng, pool["years"])])
        user, args = template.format(d=d, e=e), {"start": d, "end": e}
    else:
        w, title = rng.choice(pool["words"]), rng.choice(pool["titles"])
        user = template.format(w=w, title=title.replace("_", " ").title())
        args = {"title": title, "word": w}
    call = {"name": task, "arguments": args}
    result = run_call(call)
    answer = _answer(task, args, result)
    return {"messages": [{"role": "system", "content": tools_system_prompt()},
                         {"role": "user", "content": user},
                         {"role": "assistant", "content": format_call(task, args)},
                         {"role": "tool", "content": result},
                         {"role": "assistant", "content": answer}],
            "task": task, "calls": [call]}


def _answer(task, args, result) -> str:
    if task == "calculator":
        return f"{args['expression']} = {result}."
    if task == "convert_units":
        return f"{args['value']} {args['from_unit']} is {result}."
    if task == "add_days":
        return f"{args['days']} days after {args['date']} is {result}."
    if task == "days_between":
        return f"There are {result} days from {args['start']} to {args['end']}."
    return f"'{args['word']}' appears {result} times in {args['title']}."


def tool_calling_dataset(n_train: int = 1200, n_val: int = 50, n_test: int = 200,
                         seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    return {"train": [make_example(rng, "train") for _ in range(n_train)],
            "validation": [make_example(rng, "validation") for _ in range(n_val)],
            "test": [make_example(rng, "test") for _ in range(n_test)]}


assert set(TOOLS) == set(PHRASES) - {"none"}
