"""The command line end to end, as a user runs it (subprocesses, exit codes, files)."""

import json
import os
import subprocess
import sys

import pytest

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 7}.\n"
               for i in range(400))


def cli(*args, cwd, input=None, check=True):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "llm_deeper", *args], cwd=cwd, input=input,
                       capture_output=True, text=True, env=env, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr[-2000:]}")
    return r


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "text.txt").write_text(TEXT)
    cli("train", "--preset", "small", "--data", "text.txt", "--steps", "30", "--out", "ck",
        "--context-length", "32", "--d-model", "32", "--n-layer", "2", "--eval-interval", "10",
        "--eval-iters", "2", "--no-progress", cwd=d)
    return d


def test_train_writes_a_full_checkpoint(run_dir):
    ck = run_dir / "ck"
    for f in ("config.json", "model.safetensors", "optimizer.safetensors", "tokenizer.json",
              "trainer_state.json", "loss_curve.png"):
        assert (ck / f).is_file(), f
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["step"] == 30 and len(state["history"]["val"]) == 3


def test_generate_and_interactive(run_dir):
    r = cli("generate", "--checkpoint", "ck", "--prompt", "Line 1", "--max-tokens", "20",
            "--temperature", "0", cwd=run_dir)
    assert r.stdout.startswith("Line 1") and len(r.stdout.strip()) >= 20
    again = cli("generate", "--checkpoint", "ck", "--prompt", "Line 1", "--max-tokens", "20",
                "--temperature", "0", "--no-cache", cwd=run_dir)
    assert again.stdout == r.stdout  # the cache changes speed, not text
    r = cli("generate", "--checkpoint", "ck", "--interactive", "--max-tokens", "5", "--seed", "1",
            cwd=run_dir, input="Line\nthe\n\n")
    assert r.stdout.count("> ") >= 2


def test_finetune_lora_and_merge(run_dir):
    (run_dir / "other.txt").write_text(TEXT.upper().replace("LINE", "Line"))
    r = cli("finetune", "--checkpoint", "ck", "--data", "text.txt", "--method", "lora",
            "--steps", "20", "--out", "ft", "--merge", "merged", "--no-progress",
            "--targets", "all-linear", cwd=run_dir)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 < summary["trainable_share"] < 0.5
    assert summary["val_loss_after"] < summary["val_loss_before"]
    assert (run_dir / "ft" / "adapter" / "adapter_model.safetensors").is_file()
    g1 = cli("generate", "--checkpoint", "ck", "--adapter", "ft/adapter", "--prompt", "Line",
             "--temperature", "0", "--max-tokens", "15", cwd=run_dir).stdout
    g2 = cli("generate", "--checkpoint", "merged", "--prompt", "Line", "--temperature", "0",
             "--max-tokens", "15", cwd=run_dir).stdout
    assert g1 == g2  # base + adapter == merged model


@pytest.mark.parametrize("args,message", [
    (["train", "--preset", "nope"], "unknown preset"),
    (["train", "--n-head", "5", "--data", "text.txt"], "not divisible by n_head"),
    (["generate", "--checkpoint", "missing"], "no checkpoint at"),
    (["train", "--data", "text.txt", "--context-length", "4000"], "fewer than context_length"),
    (["generate", "--checkpoint", "ck", "--top-p", "2"], "top_p"),
])
def test_bad_input_is_one_sentence_and_exit_2(run_dir, args, message):
    r = cli(*args, "--out", "fresh-out", cwd=run_dir, check=False) if args[0] == "train" else \
        cli(*args, cwd=run_dir, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in r.stderr


def test_existing_run_is_not_overwritten(run_dir):
    before = (run_dir / "ck" / "model.safetensors").read_bytes()
    r = cli("train", "--data", "text.txt", "--out", "ck", cwd=run_dir, check=False)
    assert r.returncode == 2 and "--resume" in r.stderr
    assert (run_dir / "ck" / "model.safetensors").read_bytes() == before


def test_bench_train_ends_with_a_json_line(tmp_path):
    r = cli("bench", "train", "--rounds", "1", "--steps-per-round", "1", "--engines", "numpy,torch",
            cwd=tmp_path)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["bench"] == "train" and result["numpy_tokens_per_s"] > 0
    assert result["ratio_numpy_over_torch"] > 0 and 0 < result["mfu_numpy"] < 1


# --- the command table, its help texts, `llm-deeper presets` ---------------------------------

def _parsers(parser, path=()):
    """(path, parser) for the parser and every sub-parser below it, at any depth."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_command_and_option_has_a_help_text():
    import argparse

    from llm_deeper.cli import COMMANDS, build_parser

    parsers = dict(_parsers(build_parser()))
    assert {p[0] for p in parsers if p} == set(COMMANDS)
    assert len(parsers) > 30  # commands and their sub-commands (models pull, eval perplexity...)
    for path, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                assert set(helps) == set(action.choices), path
                for name, help_ in helps.items():
                    assert help_ and help_.strip(), (*path, name)
            else:
                assert action.help and action.help.strip(), (*path, action.dest)
        text = parser.format_help()
        assert "default: None" not in text and "default: []" not in text, path


@pytest.mark.parametrize("command", [["train"], ["finetune"], ["generate"], ["serve"],
                                     ["bench", "train"], ["eval", "perplexity"]])
def test_help_shows_defaults(command, capsys):
    from llm_deeper.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: " in out
    if command == ["finetune"]:  # the defaults that depend on the path are spelt out
        for words in ("300 with --checkpoint, 48 with --model",
                      "12 with --checkpoint, 4 with --model",
                      "8 with --checkpoint, 16 with --model",
                      "16 with --checkpoint, 32 with --model"):
            assert words in out, words


def test_train_help_states_train_configs_defaults(capsys):
    from llm_deeper.cli import main
    from llm_deeper.commands.train import TRAIN_OPTIONS
    from llm_deeper.train import TrainConfig

    for name, _, _, default in TRAIN_OPTIONS:
        assert getattr(TrainConfig(), name.replace("-", "_")) == default, name
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 1337; with --resume: the run's)" in out
    assert "(default: the preset's)" in out


def test_presets_lists_every_preset_with_its_parameter_count(tmp_path):
    from llm_deeper.config import PRESETS, preset

    lines = cli("presets", cwd=tmp_path).stdout.splitlines()
    for name in PRESETS:
        row = [line for line in lines if line.split()[:1] == [name]]
        assert len(row) == 1, name
        c = preset(name)
        assert f"{c.n_params():,}" in row[0] and c.norm in row[0] and c.position in row[0]
    baby = preset("baby").n_params()
    assert 0.79e6 < baby < 0.82e6 and f"{baby:,}" in "\n".join(lines)


# --- train --resume: the checkpoint's model, tokenizer, data, engine and settings win -------
# In process (cli.main) rather than in subprocesses, to keep these many cases cheap. The module's
# run_dir/ck was trained with --preset small --context-length 32 --d-model 32 --n-layer 2
# (n_head 4, n_kv_head 2, d_ff 288, rmsnorm, swiglu, rope), char tokenizer, text.txt, 30 steps.

def _main(*args, cwd, monkeypatch, capsys) -> tuple[int, str, str]:
    from llm_deeper.cli import main

    monkeypatch.chdir(cwd)
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _files(d) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


RESUME = ("train", "--resume", "--data", "text.txt", "--steps", "32", "--no-progress")


@pytest.mark.parametrize("extra,named", [
    (["--n-layer", "3"], "--n-layer"),
    (["--d-model", "64"], "--d-model"),
    (["--context-length", "16"], "--context-length"),
    (["--n-head", "2"], "--n-head"),
    (["--n-kv-head", "1"], "--n-kv-head"),
    (["--d-ff", "64"], "--d-ff"),
    (["--dropout", "0.1"], "--dropout"),
    (["--norm", "layernorm"], "--norm"),
    (["--activation", "gelu"], "--activation"),
    (["--position", "learned"], "--position"),
    (["--preset", "large"], "--preset"),
    (["--tokenizer", "bpe:300"], "--tokenizer"),
    (["--data", "resume-other.txt"], "--data"),
    (["--engine", "torch"], "--engine"),
    (["--batch-size", "4"], "--batch-size"),
    (["--grad-accum", "2"], "--grad-accum"),
    (["--lr", "0.01"], "--lr"),
    (["--min-lr", "0"], "--min-lr"),
    (["--warmup", "5"], "--warmup"),
    (["--weight-decay", "0"], "--weight-decay"),
    (["--grad-clip", "0.5"], "--grad-clip"),
    (["--seed", "1"], "--seed"),
    (["--steps", "30"], "--steps"),
])
def test_resume_refuses_a_conflicting_option(run_dir, extra, named, monkeypatch, capsys):
    (run_dir / "resume-other.txt").write_text(TEXT.replace("fox", "cat"))
    before = _files(run_dir / "ck")
    code, out, err = _main(*RESUME, "--out", "ck", *extra, cwd=run_dir, monkeypatch=monkeypatch,
                           capsys=capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], err
    assert "the checkpoint in ck" in lines[0] or "the run in ck" in lines[0], err
    assert _files(run_dir / "ck") == before  # nothing written
    assert not out  # refused before any training


def test_resume_refusal_says_what_the_checkpoint_has(run_dir, monkeypatch, capsys):
    _, _, err = _main(*RESUME, "--out", "ck", "--n-layer", "4", cwd=run_dir,
                      monkeypatch=monkeypatch, capsys=capsys)
    assert "the checkpoint in ck has n_layer 2, not 4" in err
    assert "drop --n-layer or start a new --out" in err
    _, _, err = _main(*RESUME, "--out", "ck", "--engine", "torch", cwd=run_dir,
                      monkeypatch=monkeypatch, capsys=capsys)
    assert "trained by the numpy engine" in err


def test_resume_refuses_the_other_engine_of_a_torch_checkpoint(run_dir, monkeypatch, capsys):
    import shutil

    d = run_dir / "ck-torch"
    shutil.copytree(run_dir / "ck", d, dirs_exist_ok=True)
    state = json.loads((d / "trainer_state.json").read_text())
    (d / "trainer_state.json").write_text(json.dumps({**state, "engine": "torch"}))
    before = _files(d)
    code, _, err = _main(*RESUME, "--out", "ck-torch", "--engine", "numpy", cwd=run_dir,
                         monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "trained by the torch engine" in err and "--engine" in err
    assert _files(d) == before


def test_resume_with_matching_or_changeable_options(run_dir, monkeypatch, capsys):
    """The training command line repeated, plus --resume: the same values are fine; --steps
    (the new total), --eval-interval/--eval-iters, --device and --compile may change. A
    checkpoint that does not record its preset, data and tokenizer (written before they were
    recorded) resumes too, and a later resume takes its data from the checkpoint."""
    import shutil

    d = run_dir / "ck-resume"
    shutil.copytree(run_dir / "ck", d, dirs_exist_ok=True)
    state = json.loads((d / "trainer_state.json").read_text())
    old = {k: v for k, v in state.items() if k not in ("preset", "data", "data_sha256",
                                                       "tokenizer")}
    (d / "trainer_state.json").write_text(json.dumps(old))
    code, _, err = _main(*RESUME, "--out", "ck-resume", "--preset", "baby", cwd=run_dir,
                         monkeypatch=monkeypatch, capsys=capsys)  # an old checkpoint, too
    assert code == 2 and "--preset" in err
    code, out, err = _main(
        *RESUME, "--out", "ck-resume", "--preset", "small", "--context-length", "32",
        "--d-model", "32", "--n-layer", "2", "--n-head", "4", "--tokenizer", "char",
        "--engine", "numpy", "--lr", "0.001", "--seed", "1337", "--eval-interval", "1",
        "--eval-iters", "1", "--device", "cpu", cwd=run_dir, monkeypatch=monkeypatch,
        capsys=capsys)
    assert code == 0, err
    assert "resumed from ck-resume at step 30" in out
    state = json.loads((d / "trainer_state.json").read_text())
    assert state["step"] == 32 and state["engine"] == "numpy"
    assert state["train_config"]["eval_interval"] == 1 and state["train_config"]["lr"] == 1e-3
    assert [s for s, _ in state["history"]["val"]][-2:] == [31, 32]
    assert state["data"].endswith("text.txt") and state["tokenizer"] == "char"
    code, out, err = _main("train", "--resume", "--out", "ck-resume", "--steps", "33",
                           "--no-progress", cwd=run_dir, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    assert "text.txt" in out and json.loads((d / "trainer_state.json").read_text())["step"] == 33


def test_train_help_says_what_a_resume_may_change(capsys):
    from llm_deeper.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for words in ("(default: baby;", "(default: char;", "(default: works;", "(default: numpy;"):
        assert words in out, words
    resume = "".join(out.split("--resume ")[1][:700].split())  # argparse breaks at hyphens
    for option in ("--steps", "--eval-interval", "--eval-iters", "--device", "--compile",
                   "--no-progress", "refused"):
        assert option in resume, option


def test_eval_perplexity_with_quantized_weights(run_dir):
    """--quant scores the checkpoint with its weight matrices through a format: int8 per row
    stays close to float32 at a quarter of the bytes; a group that does not divide a row, an
    unknown format or option is one sentence."""
    def ppl(*extra, check=True):
        r = cli("eval", "perplexity", "--checkpoint", "ck", "--data", "text.txt", "--split",
                "all", *extra, cwd=run_dir, check=check)
        return r if not check else json.loads(r.stdout.strip().splitlines()[-1])

    base, q8 = ppl(), ppl("--quant", "int8", "--quant-option", "per_channel=true")
    assert q8["quant"] == "int8" and q8["per_channel"] is True
    assert abs(q8["perplexity"] / base["perplexity"] - 1) < 0.02
    q4 = ppl("--quant", "int4", "--quant-option", "group_size=32")
    assert q4["weight_bytes"] < q8["weight_bytes"] and q4["perplexity"] != base["perplexity"]
    for extra, words in ((["--quant", "int3"], "int3"),
                         (["--quant", "int4", "--quant-option", "group_size=128"], "128"),
                         (["--quant", "int8", "--quant-option", "bogus"], "NAME=VALUE")):
        r = ppl(*extra, check=False)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr
