"""Scaling: the tiny preset, `train --data-size` (forms, refusals, resume), the sweep (results,
idempotence, resume of an unrecorded run) and, behind `slow`, a real sweep's ordering claims."""

import json

import pytest

from llm_deeper import scaling, sizing
from llm_deeper.checkpoint import read_config
from llm_deeper.commands.scaling import sweep
from llm_deeper.config import preset
from llm_deeper.errors import UserError
from llm_deeper.scaling import SweepSettings, parse_data_size, resolve_data_size

from conftest import shakespeare_or_skip

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 7}.\n"
               for i in range(400))


def test_tiny_preset_is_100k_llama_style_and_its_count_is_the_calculators():
    cfg = preset("tiny")
    n = cfg.n_params()
    assert n == 97_856 == sizing.params(sizing.from_config(cfg))["total"]
    assert (cfg.norm, cfg.activation, cfg.position) == ("rmsnorm", "swiglu", "rope")
    ladder = [preset(s).n_params() for s in ("tiny", "small", "medium", "large")]
    assert all(3 < b / a < 6 for a, b in zip(ladder, ladder[1:]))


@pytest.mark.parametrize("spec,value", [
    ("50000", 50_000), ("200k", 200_000), ("200K", 200_000), ("1M", 1_000_000),
    ("1.5M", 1_500_000), ("2_000", 2_000), (123, 123), ("25%", 0.25), ("all", None),
    ("100%", None), (None, None)])
def test_data_size_forms(spec, value):
    assert parse_data_size(spec) == value


@pytest.mark.parametrize("spec", ["0", "-5", "0k", "1.5", "0.0001k", "abc", "1G", "0%",
                                  "150%", "", True])
def test_data_size_refuses_what_is_not_a_positive_count(spec):
    with pytest.raises(UserError) as e:
        parse_data_size(spec)
    assert str(e.value).startswith("--data-size") and str(e.value).count(".") <= 3


def test_data_size_resolves_against_the_split():
    assert resolve_data_size("25%", 1000) == 250
    assert resolve_data_size("1k", 1000) is None  # the whole split
    assert resolve_data_size("999", 1000) == 999
    with pytest.raises(UserError, match=r"more than the training split of works \(1,000 tokens"):
        resolve_data_size("1001", 1000, "works")


def _main(*args, cwd, monkeypatch, capsys):
    from llm_deeper.cli import main

    monkeypatch.chdir(cwd)
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


TRAIN = ("train", "--preset", "tiny", "--data", "text.txt", "--context-length", "16",
         "--d-model", "16", "--n-layer", "1", "--d-ff", "32", "--batch-size", "2",
         "--eval-interval", "2", "--eval-iters", "1", "--no-progress")


def test_train_data_size_is_recorded_and_a_resume_keeps_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "text.txt").write_text(TEXT)
    code, out, _ = _main(*TRAIN, "--steps", "2", "--data-size", "5k", "--out", "ck",
                         cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and "5,000 train" in out
    state = lambda: json.loads((tmp_path / "ck" / "trainer_state.json").read_text())
    assert state()["data_size"] == 5000
    for bad, says in (("6k", "was trained on 5,000 tokens of its training split, not 6,000"),
                      ("all", f"not {int(len(TEXT) * 0.9):,};")):
        before = (tmp_path / "ck" / "model.safetensors").read_bytes()
        code, out, err = _main(*TRAIN, "--resume", "--out", "ck", "--steps", "4", "--data-size",
                               bad, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and says in lines[0] and "--data-size" in lines[0]
        assert (tmp_path / "ck" / "model.safetensors").read_bytes() == before
    code, *_ = _main(*TRAIN, "--resume", "--out", "ck", "--steps", "4", "--data-size", "5000",
                     cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)  # the same: fine
    assert code == 0 and state()["step"] == 4 and state()["data_size"] == 5000
    code, *_ = _main("train", "--resume", "--out", "ck", "--steps", "6", "--no-progress",
                     cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)  # left out: the run's
    assert code == 0 and state()["step"] == 6 and state()["data_size"] == 5000


@pytest.mark.parametrize("spec,says", [("0", "positive whole number"),
                                       ("1M", "more than the training split"),
                                       ("lots", "write a token count")])
def test_train_refuses_a_bad_data_size_in_one_sentence(tmp_path, monkeypatch, capsys, spec,
                                                       says):
    (tmp_path / "text.txt").write_text(TEXT)
    code, out, err = _main(*TRAIN, "--steps", "2", "--data-size", spec, "--out", "ck",
                           cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err
    assert not (tmp_path / "ck").exists()


def test_sweep_writes_its_results_and_does_not_retrain(tmp_path, monkeypatch):
    (tmp_path / "text.txt").write_text(TEXT)
    st = SweepSettings(steps=4, context_length=16, batch_size=2, warmup=1, eval_interval=2,
                       eval_iters=1, data=str(tmp_path / "text.txt"))
    lines = []
    out = tmp_path / "sweep"
    res = sweep(["tiny"], ["2k", "all"], st, out, progress=False, log=lambda *_: None,
                        emit=lines.append)
    n_train = res["corpus"]["train_tokens"]
    assert [(r["size"], r["data_size"], r["data"]) for r in res["runs"]] == [
        ("tiny", 2000, "2k"), ("tiny", n_train, "all")]
    assert len(lines) == 2 and (out / "runs.jsonl").read_text().splitlines() == lines
    assert json.loads((out / "results.json").read_text()) == res
    for r in res["runs"]:
        cfg = read_config(out / f"tiny-{r['data']}")
        assert r["params"] == cfg.n_params() and cfg.context_length == 16
        assert r["tokens"] == 4 * 2 * 16 and r["epochs"] == round(128 / r["data_size"], 3)
        assert r["flops_6nd"] == 6 * r["params"] * 128
        assert r["flops_6nd"] == sizing.training_flops(sizing.from_config(cfg), 128)["rule_6ND"]
        assert [c[0] for c in r["curve"]] == [2, 4]
        state = json.loads((out / f"tiny-{r['data']}" / "trainer_state.json").read_text())
        assert state.get("data_size") == (2000 if r["data"] == "2k" else None)

    def no_training(**_):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr("llm_deeper.commands.scaling.train_run", no_training)
    again = sweep(["tiny"], ["2k", "all"], st, out, progress=False, log=lambda *_: None,
                          emit=lines.append)
    assert again["runs"] == res["runs"] and len(lines) == 2
    # a finished run that results.json lost is read back from its checkpoint, not retrained
    (out / "results.json").write_text(json.dumps({**res, "runs": res["runs"][:1]}))
    again = sweep(["tiny"], ["2k", "all"], st, out, progress=False, log=lambda *_: None,
                          emit=lines.append)
    strip = lambda runs: [{k: v for k, v in r.items() if k != "seconds"} for r in runs]
    assert strip(again["runs"]) == strip(res["runs"])
    with pytest.raises(UserError, match="other settings"):
        sweep(["tiny"], ["2k"], SweepSettings(**{**st.__dict__, "steps": 6}), out)
    assert scaling.findings(res)  # the checks run on any results (their outcome is the slow test's)
    assert "| tiny | " in scaling.table(res)


def test_scaling_command_tables_and_plots_a_sweep(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "text.txt").write_text(TEXT)
    code, out, _ = _main("scaling", "sweep", "--sizes", "tiny", "--data-sizes", "3k,all",
                         "--data", "text.txt", "--steps", "2", "--context-length", "16",
                         "--batch-size", "2", "--eval-interval", "2", "--eval-iters", "1",
                         "--no-progress", "--out", "sw", cwd=tmp_path, monkeypatch=monkeypatch,
                         capsys=capsys)
    assert code == 0 and sum(line.startswith("{") for line in out.splitlines()) == 2
    code, out, _ = _main("scaling", "table", "--results", "sw", cwd=tmp_path,
                         monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and out.count("| tiny |") == 2
    code, out, _ = _main("scaling", "plot", "--results", "sw/results.json", "--out", "f.png",
                         cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and (tmp_path / "f.png").stat().st_size > 1000
    assert (tmp_path / "f_curves.png").stat().st_size > 1000
    code, _, err = _main("scaling", "sweep", "--sizes", "huge", "--out", "sw2", cwd=tmp_path,
                         monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "unknown preset 'huge'" in err


@pytest.mark.slow
def test_a_real_sweep_shows_the_scaling_claims(tmp_path):
    """Two models x two data sizes on the works, 600 steps each (about a minute on one core):
    the bigger model is better on all the data, both are better on all the data than on 10k
    characters, and on 10k characters both overfit (validation ends above its best while the
    training loss ends below the one on all the data)."""
    shakespeare_or_skip()
    st = SweepSettings(steps=600, context_length=64, batch_size=8, lr=3e-3, warmup=30,
                       eval_interval=100, eval_iters=20)
    res = sweep(["tiny", "small"], ["10k", "all"], st, tmp_path, progress=False,
                        log=lambda *_: None, emit=lambda *_: None)
    found = scaling.findings(res)
    assert len(found) == 5 and all(ok for _, ok in found), found
