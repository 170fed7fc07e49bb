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

from ..chat.tools import TOOLS, format_call, run_call, tools_system_prompt

# Each task: phrasings for training and, disjoint, for testing. Training has several phrasings
# per tool so that the model learns the request, not one sentence; the test phrasings are new.
PHRASES = {
    "calculator": (
        ["What is {a} times {b}?", "Compute {a} * {b}.", "Multiply {a} by {b}.",
         "{a} multiplied by {b} is what?", "What's {a} plus {b}?", "Add {a} and {b}.",
         "What do {a} and {b} add up to?", "Sum {a} and {b}.", "What is {a} minus {b}?",
         "Subtract {b} from {a}.", "Deduct {b} from {a}.", "Find the difference {a} - {b}.",
         "Find the product of {a} and {b}.", "Find the sum of {a} and {b}.",
         "Calculate ({a} + {b}) * {c}.",
         "Add {a} to {b}, then multiply the result by {c}."],
        ["I need the product of {a} and {b}.", "How much is {a} + {b}?",
         "Take {b} away from {a}.", "Work out ({a} + {b}) * {c} for me."]),
    "convert_units": (
        ["Convert {v} {f} to {t}.", "How many {t} is {v} {f}?", "{v} {f} in {t}, please.",
         "What is {v} {f} in {t}?", "Change {v} {f} into {t}.",
         "I have {v} {f}. How much is that in {t}?"],
        ["What does {v} {f} come to in {t}?", "Express {v} {f} as {t}."]),
    "add_days": (
        ["What date is {n} days after {d}?", "Add {n} days to {d}.",
         "Which day comes {n} days after {d}?", "Starting from {d}, what is the date {n} days "
         "later?", "What will the date be {n} days from {d}?", "{d} plus {n} days is which date?",
         "Suppose it is {d}. Give me the date {n} days on."],
        ["If today is {d}, what is the date in {n} days?", "Move {d} forward by {n} days."]),
    "days_between": (
        ["How many days are there from {d} to {e}?", "Count the days between {d} and {e}.",
         "How long is it in days from {d} until {e}?", "From {d} to {e} is how many days?",
         "Days elapsed between {d} and {e}?", "Tell me how many days lie between {d} and {e}."],
        ["What is the number of days separating {d} and {e}?",
         "How far apart, in days, are {d} and {e}?"]),
    "count_word": (
        ["How many times does the word '{w}' appear in {title}?",
         "Count the occurrences of '{w}' in {title}.", "How often does {title} use the word "
         "'{w}'?", "Give me the number of times '{w}' occurs in {title}.",
         "Tally the word '{w}' in {title}."],
        ["In {title}, how often is '{w}' used?", "What is the count of '{w}' in {title}?"]),
    "none": (
        ["Say hello.", "Who wrote Hamlet?", "Thank you!", "What is a sonnet?", "Hi there!",
         "What is a soliloquy?", "Goodbye!"],
        ["Good morning!", "Who wrote Macbeth?", "What is iambic pentameter?"]),
}
# The expression each calculator phrasing asks for.
CALC = {"(": "({a} + {b}) * {c}", "+": "{a} + {b}", "-": "{a} - {b}", "*": "{a} * {b}"}
CALC_KIND = {
    "What is {a} times {b}?": "*", "Compute {a} * {b}.": "*", "Multiply {a} by {b}.": "*",
    "{a} multiplied by {b} is what?": "*", "Find the product of {a} and {b}.": "*",
    "What's {a} plus {b}?": "+", "Add {a} and {b}.": "+", "What do {a} and {b} add up to?": "+",
    "Sum {a} and {b}.": "+", "Find the sum of {a} and {b}.": "+",
    "What is {a} minus {b}?": "-", "Subtract {b} from {a}.": "-", "Deduct {b} from {a}.": "-",
    "Find the difference {a} - {b}.": "-",
    "Calculate ({a} + {b}) * {c}.": "(", "Add {a} to {b}, then multiply the result by {c}.": "(",
    # test phrasings
    "I need the product of {a} and {b}.": "*", "How much is {a} + {b}?": "+",
    "Take {b} away from {a}.": "-", "Work out ({a} + {b}) * {c} for me.": "(",
}
assert set(CALC_KIND) == set(PHRASES["calculator"][0] + PHRASES["calculator"][1])
NO_TOOL_ANSWERS = {
    "Say hello.": "Hello!", "Who wrote Hamlet?": "William Shakespeare wrote Hamlet.",
    "Thank you!": "You're welcome!",
    "What is a sonnet?": "A sonnet is a fourteen-line poem, often in iambic pentameter.",
    "Hi there!": "Hello! How can I help?", "Goodbye!": "Goodbye!",
    "What is a soliloquy?": "A speech in which a character, alone, speaks their thoughts aloud.",
    "Good morning!": "Good morning!", "Who wrote Macbeth?": "William Shakespeare wrote Macbeth.",
    "What is iambic pentameter?": "A line of five iambs: five unstressed-stressed pairs.",
}
# Disjoint value pools.
VALUES = {
    "train": dict(numbers=range(2, 50), lengths=[("m", "cm"), ("km", "mile"), ("inch", "cm"),
                                                 ("kg", "lb"), ("C", "F"), ("oz", "g"),
                                                 ("mm", "inch"), ("K", "C")],
                  years=(2019, 2022), words=["love", "king", "death", "night", "heart"],
                  titles=["hamlet", "macbeth", "othello", "sonnets", "tempest",
                          "antony_and_cleopatra", "merchant_of_venice", "as_you_like_it",
                          "much_ado_about_nothing", "taming_of_the_shrew"]),
    "test": dict(numbers=range(50, 100), lengths=[("ft", "m"), ("mile", "km"), ("lb", "kg"),
                                                  ("F", "C"), ("g", "oz")],
                 years=(2024, 2026), words=["crown", "sword", "blood", "honour"],
                 titles=["lear", "julius_caesar", "romeo_and_juliet", "twelfth_night"]),
}


def display_title(key: str) -> str:
    """romeo_and_juliet -> Romeo and Juliet (the tool accepts titles as people write them)."""
    small = {"and", "of", "the", "about"}
    words = key.split("_")
    return " ".join(w if (i and w in small) else w.capitalize() for i, w in enumerate(words))


def _date(rng, years):
    return f"{rng.randint(*years)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def make_example(rng: random.Random, split: str) -> dict:
    pool = VALUES["test" if split == "test" else "train"]
    which = 1 if split == "test" else 0
    task = rng.choices(list(PHRASES), weights=[2, 1.5, 1.5, 1.5, 1.5, 1.1])[0]
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
        expr = CALC[CALC_KIND[template]].format(a=a, b=b, c=c)
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
        w, title = rng.choice(pool["words"]), display_title(rng.choice(pool["titles"]))
        user = template.format(w=w, title=title)
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
