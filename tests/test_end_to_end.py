"""End to end, as a user runs it: make data, train a tiny model, resume, translate, evaluate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import quickstart_data

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def run(*args, input=None, check=True):
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env=ENV,
        input=input,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for a few steps on a small quick-start corpus."""
    tmp = tmp_path_factory.mktemp("e2e")
    quickstart_data.write_splits(tmp / "data", seed=7, n_train=600, n_valid=30, n_test=20)
    out = tmp / "run"
    proc = run(
        "train.py",
        "--config",
        "configs/tiny.json",
        "--train_data",
        f"{tmp}/data/train.{{lang}}",
        "--valid_data",
        f"{tmp}/data/valid.{{lang}}",
        "--output_dir",
        out,
        "--max_steps",
        6,
    )
    return tmp, out, proc


def test_train_writes_self_contained_checkpoints(trained):
    tmp, out, proc = trained
    for name in ("best", "last"):
        files = {p.name for p in (out / name).iterdir()}
        assert {"model.safetensors", "config.json", "model_config.json", "tokenizer.json"} <= files
        saved = json.loads((out / name / "config.json").read_text())
        assert saved["max_steps"] == 6 and saved["output_dir"] == str(out)
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 6
    assert json.loads((out / "config.json").read_text())["model_dim"] == 32
    assert "epoch 1" in proc.stderr + proc.stdout  # the progress bar / epoch summary


def test_resume_continues_from_last_step(trained):
    tmp, out, _ = trained
    proc = run("train.py", "--config", out / "config.json", "--max_steps", 9, "--resume")
    assert "resumed from" in proc.stdout + proc.stderr
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 9


def test_translate_keeps_one_line_per_input_line(trained):
    tmp, out, _ = trained
    lines = ["The dog sees the cat.", "", "A man reads a book.", "   ", "We eat an apple."]
    proc = run("translate.py", "--checkpoint", out, input="\n".join(lines) + "\n")
    got = proc.stdout.split("\n")
    assert got[-1] == "" and len(got) - 1 == len(lines)
    assert got[1] == "" and got[3] == ""  # empty input lines stay empty


def test_evaluate_translates_and_scores(trained):
    tmp, out, _ = trained
    report = tmp / "report.json"
    run(
        "evaluate.py",
        "--checkpoint",
        out / "best",
        "--source",
        tmp / "data/test.en",
        "--reference",
        tmp / "data/test.de",
        "--json",
        report,
    )
    r = json.loads(report.read_text())
    assert 0 <= r["bleu"] <= 100 and r["sentences"] == 20
    assert "tok:13a" in r["bleu_signature"] and "nc:6" in r["chrf_signature"]
    # scoring the references against themselves is perfect
    run(
        "evaluate.py",
        "--hypotheses",
        tmp / "data/test.de",
        "--reference",
        tmp / "data/test.de",
        "--json",
        report,
    )
    assert json.loads(report.read_text())["bleu"] == 100.0


def test_default_config_without_hub_says_how_to_run_offline():
    proc = run("train.py", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Hub" in lines[0] and "quickstart.sh" in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_checkpoint_is_one_line_error(tmp_path):
    proc = run("translate.py", "--checkpoint", tmp_path / "nope", input="x\n", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: checkpoint not found")
