"""The works corpus exactly as BENCHMARKS.md defines it, titles, local files, batching, offline."""

import numpy as np
import pytest

from llm_deeper.data import Batcher, load_text, split_train_val
from llm_deeper.errors import UserError

from conftest import shakespeare_or_skip


def test_works_corpus_matches_the_protocol():
    shakespeare_or_skip()
    from llm_deeper.data import titles, works

    text = works()
    assert len(text) == 5_057_279 and len(set(text)) == 84
    train, val = split_train_val(np.arange(len(text)))
    assert len(train) == 4_551_551 and len(val) == 505_728
    assert text.startswith("ALL'S WELL THAT ENDS WELL")
    assert "sonnets" in titles() and len(titles()) == 42
    sonnets = load_text("sonnets")
    assert "Shall I compare thee to a summer's day?" in sonnets
    assert sonnets in load_text("poems") and sonnets not in load_text("plays")
    assert len(load_text("plays")) + len(load_text("poems")) + 2 == len(text)


def test_local_file_and_unknown_names(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("hello there", encoding="utf-8")
    assert load_text(str(f)) == "hello there"
    with pytest.raises(UserError, match="no such text file"):
        load_text(str(tmp_path / "missing.txt"))


def test_offline_without_cache_is_one_sentence(tmp_cache):
    with pytest.raises(UserError, match="llm-deeper data pull shakespeare"):
        load_text("works")
    from llm_deeper.pretrained import models

    with pytest.raises(UserError, match="llm-deeper models pull smollm2-135m"):
        models.require("smollm2-135m")


def test_batches_are_shifted_and_seeded():
    ids = np.arange(1000)
    x, y = Batcher(ids, 4, 16, seed=3).next()
    assert x.shape == (4, 16) and (y == x + 1).all()
    x2, _ = Batcher(ids, 4, 16, seed=3).next()
    assert (x == x2).all()
    with pytest.raises(UserError, match="fewer than context_length"):
        Batcher(np.arange(10), 2, 16)
