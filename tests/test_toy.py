"""tinygpt: exactly 2,453 parameters, learns to sort in seconds."""

import numpy as np

from llm_deeper.config import PRESETS, preset
from llm_deeper.toy import sort_accuracy, sort_batch, train_sorter


def test_preset_sizes():
    assert preset("tinygpt").n_params() == 2453
    assert abs(preset("baby").n_params() - 0.80e6) < 0.01e6  # nanoGPT's 0.80M (wpe aside)
    assert preset("tiny").n_params() == 97_856  # the scaling sweep's smallest (scaling.md)
    assert 0.45e6 < preset("small").n_params() < 0.6e6
    assert 1.8e6 < preset("medium").n_params() < 2.2e6
    assert 7.5e6 < preset("large").n_params() < 8.5e6
    assert set(PRESETS) >= {"tinygpt", "baby", "tiny", "small", "medium", "large"}


def test_sort_batch_targets():
    x, y = sort_batch(np.random.default_rng(0), 4)
    assert x.shape == (4, 17) and y.shape == (4, 17)
    assert (y[:, 8:] == np.sort(x[:, :9], axis=1)).all()
    assert (y[:, :8] == -100).all()


def test_tinygpt_learns_to_sort():
    model, losses = train_sorter(steps=1500, seed=0)
    assert model.n_params() == 2453
    assert losses[-1] < 0.05
    assert sort_accuracy(model, np.random.default_rng(99)) >= 0.95
