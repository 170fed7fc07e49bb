"""The in-context learning task (evaluation/icl.py): a disjoint split, prompts built as
documented, an exact-match scorer, and a small run on SmolLM2 whose batched greedy answers equal
the package's one-at-a-time generation."""

import pytest
import torch

from llm_deeper.config import ModelConfig
from llm_deeper.errors import UserError
from llm_deeper.evaluation import icl
from llm_deeper.torch_engine.model import TorchGPT

from conftest import smollm2_or_skip


def test_the_split_is_disjoint_and_large_enough():
    pool, held = icl.DEMO_POOL, icl.HELD_OUT
    assert len(held) >= 50 and len(pool) >= 5
    everything = pool + held
    assert len({x for x, _ in everything}) == len(everything)  # no country twice
    assert len({y for _, y in everything}) == len(everything)  # no capital twice
    words = lambda pairs: {w for pair in pairs for w in pair}
    assert not words(pool) & words(held)


def test_prompts_are_built_as_documented():
    assert icl.build_prompt([], "Germany") == "Germany ->"
    two = [("France", "Paris"), ("Japan", "Tokyo")]
    assert icl.build_prompt(two, "Germany") == "France -> Paris\nJapan -> Tokyo\nGermany ->"
    assert (icl.build_prompt(two[:1], "Peru", instruction="Capitals:\n")
            == "Capitals:\nFrance -> Paris\nPeru ->")


def test_demonstrations_are_seeded_distinct_and_from_the_pool():
    for k in (0, 1, 3, 5, len(icl.DEMO_POOL)):
        demos = icl.draw_demos(k, seed=1)
        assert len(demos) == len(set(demos)) == k and set(demos) <= set(icl.DEMO_POOL)
        assert demos == icl.draw_demos(k, seed=1)
    assert icl.draw_demos(5, seed=0) != icl.draw_demos(5, seed=1)
    for bad in (-1, len(icl.DEMO_POOL) + 1):
        with pytest.raises(UserError):
            icl.draw_demos(bad)


@pytest.mark.parametrize("completion, answer, ok", [
    (" Berlin\nFrance -> Paris", "Berlin", True),  # the first line only
    ("Berlin", "Berlin", True),
    (" Berlin  \n", "Berlin", True),  # surrounding spaces do not count
    (" Buenos Aires\n", "Buenos Aires", True),
    (" berlin\n", "Berlin", False),  # case counts
    (" Berlin, Germany\n", "Berlin", False),  # so does anything after the answer
    (" Berl", "Berlin", False),
    ("\nBerlin", "Berlin", False),  # an empty first line is no answer
    (" Mexico\n", "Mexico City", False),
])
def test_the_scorer_is_exact_match_of_the_first_line(completion, answer, ok):
    assert icl.is_correct(completion, answer) is ok


class _Chars:
    """A stand-in tokenizer for a random model: one token per character."""

    encode = staticmethod(lambda s: [ord(c) % 64 for c in s])
    decode = staticmethod(lambda ids: "".join(chr(65 + i % 26) for i in ids))


def test_a_prompt_that_leaves_no_room_for_the_answer_is_refused():
    cfg = ModelConfig(vocab_size=64, context_length=24, n_layer=1, n_head=2, d_model=16, d_ff=32)
    model = TorchGPT(cfg, seed=0).eval()
    assert len(icl.complete(model, _Chars, ["France ->"], max_tokens=8)[0]) == 8
    with pytest.raises(UserError):
        icl.complete(model, _Chars, ["Czech Republic ->"], max_tokens=8)  # 17 + 8 > 24


@pytest.fixture(scope="module")
def smollm2():
    smollm2_or_skip()
    return icl.load_smollm2()


def test_every_answer_fits_in_the_tokens_generated(smollm2):
    _, tok = smollm2
    assert max(len(tok.encode(f" {y}\n")) for _, y in icl.DEMO_POOL + icl.HELD_OUT) \
        <= icl.MAX_TOKENS


def test_batched_answers_equal_one_at_a_time_generation(smollm2):
    from llm_deeper.generation import run, stream
    from llm_deeper.sampling import SamplingParams
    from llm_deeper.torch_engine.generate import next_logits_fn

    model, tok = smollm2
    demos = icl.draw_demos(3, seed=0)
    prompts = [icl.build_prompt(demos, x) for x, _ in icl.HELD_OUT[:4]]
    batched = icl.complete(model, tok, prompts)
    one_by_one = [run(stream(next_logits_fn(model), tok, tok.encode(p),
                             SamplingParams(temperature=0, max_tokens=icl.MAX_TOKENS))).text
                  for p in prompts]
    assert batched == one_by_one


def test_a_small_run_on_smollm2(smollm2):
    model, tok = smollm2
    with torch.inference_mode():
        out = icl.run(model, tok, shots=(0, 2), seeds=(0, 1), n_queries=5, log=lambda *_: None)
    assert out["queries"] == 5
    assert {k: sorted(v) for k, v in out["accuracy"].items()} == {0: [0], 2: [0, 1]}
    assert [(r.k, r.seed, r.queries, len(r.answers), len(r.demos)) for r in out["results"]] \
        == [(0, 0, 5, 5, 0), (2, 0, 5, 5, 2), (2, 1, 5, 5, 2)]
    for r in out["results"]:
        assert 0 <= r.accuracy <= 1 and r.correct == sum(
            a == y for a, (_, y) in zip(r.answers, icl.HELD_OUT))
