"""Reliability: non-finite losses, a full disk during a save, tampered checkpoints."""

import errno
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import train
from config import UserError
from helpers import ROOT, subprocess_env, write_corpus

ENV = subprocess_env()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("rel"), 5, 300, 8, 120)


def argv(corpus, out, *extra):
    return [
        "--config", "configs/tiny.json", "--train_data", f"{corpus}/train.{{lang}}",
        "--valid_data", f"{corpus}/valid.{{lang}}", "--tokenizer", str(corpus / "tok"),
        "--output_dir", str(out), "--max_tokens", "400", "--log_with", "null",
        "--valid_bleu_samples", "2", *map(str, extra),
    ]  # fmt: skip


@pytest.fixture
def in_process(monkeypatch):
    """Run train.main in this process (so a test can patch it), then reset accelerate."""
    from accelerate.state import AcceleratorState, GradientState

    monkeypatch.chdir(ROOT)
    yield train.main
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def nan_on_calls(monkeypatch, bad_calls):
    real, calls = train.loss_fn, [0]

    def loss_fn(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls[0] in bad_calls else loss

    monkeypatch.setattr(train, "loss_fn", loss_fn)


def test_nan_steps_are_skipped_and_counted(corpus, tmp_path, monkeypatch, in_process, capsys):
    nan_on_calls(monkeypatch, {3, 4})
    in_process(
        argv(corpus, tmp_path / "run", "--max_steps", 6, "--max_bad_steps", 3, "--ema_decay", 0.5,
             "--log_every", 1)
    )  # fmt: skip
    state = json.loads((tmp_path / "run/last/trainer_state.json").read_text())
    assert state["step"] == 6 and state["skipped_steps"] == 2
    # the skipped steps' losses are not logged: every line is a finite number
    logged = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [math.isfinite(r["train_loss"]) for r in logged if "train_loss" in r] == [True] * 6
    # a skipped step does not move the moving average either
    assert torch.load(tmp_path / "run/last/state/ema_0.pt", weights_only=True)["updates"] == 6
    assert "non-finite gradient, step skipped" in capsys.readouterr().out
    for name, w in load_file(tmp_path / "run/last/model.safetensors").items():
        assert torch.isfinite(w).all(), name


def test_non_finite_steps_apart_are_not_in_a_row(corpus, tmp_path, monkeypatch, in_process, capsys):
    # max_bad_steps counts them in a row: a good step between two starts the count again
    nan_on_calls(monkeypatch, {2, 4})
    in_process(argv(corpus, tmp_path / "run", "--max_steps", 6, "--max_bad_steps", 2))
    state = json.loads((tmp_path / "run/last/trainer_state.json").read_text())
    assert state["step"] == 6 and state["skipped_steps"] == 2
    assert "(1 in a row, 2 in total)" in capsys.readouterr().out


def test_a_run_without_validation_keeps_its_last_checkpoint_as_best(
    corpus, tmp_path, in_process, capsys
):
    # nothing to choose by: best/ is the newest checkpoint, so a run's output_dir still decodes
    out = tmp_path / "run"
    in_process([*argv(corpus, out, "--max_steps", 3), "--valid_data", "null"])
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 3
    assert "epoch 1: step 3 (no valid_data)\n" in capsys.readouterr().out  # not "step 3 " alone
    best, last = (load_file(out / d / "model.safetensors") for d in ("best", "last"))
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)


def test_a_stop_request_at_the_last_step_still_validates(corpus, tmp_path, monkeypatch, in_process):
    # SIGTERM during the step that reaches max_steps: the run's end validates and saves, as
    # without it (a resume would find the run complete and never validate it)
    real = train.after_step

    def after_step(model, accelerator, scheduler, run, state, *args):
        run["stop"].requested = state["step"] == 2  # as if SIGTERM came during step 2
        return real(model, accelerator, scheduler, run, state, *args)

    monkeypatch.setattr(train, "after_step", after_step)
    in_process(argv(corpus, tmp_path / "run", "--max_steps", 2))
    logged = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in logged if "valid_loss" in r] == [2]


def test_a_run_whose_end_was_not_validated_validates_on_resume(
    corpus, tmp_path, monkeypatch, in_process, capsys
):
    # killed during the final validation after a save at max_steps (as a stop request saves)
    out = tmp_path / "run"
    in_process(argv(corpus, out, "--max_steps", 2))
    state_file = out / "last" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "validated_step": None}))
    metrics = out / "metrics.jsonl"
    metrics.write_text(
        "".join(x + "\n" for x in metrics.read_text().splitlines() if "valid" not in x)
    )
    capsys.readouterr()
    in_process([*argv(corpus, out, "--max_steps", 2), "--resume"])
    assert "already at max_steps (2); validating the last step" in capsys.readouterr().out
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in logged if "valid_loss" in r] == [2]
    in_process([*argv(corpus, out, "--max_steps", 2), "--resume"])  # now there is nothing to do
    assert "already at max_steps (2); nothing to do" in capsys.readouterr().out


def test_too_many_nan_steps_stop_with_a_clear_message(corpus, tmp_path, monkeypatch, in_process):
    nan_on_calls(monkeypatch, set(range(5, 100)))
    with pytest.raises(UserError, match="3 consecutive non-finite losses at step 4.*checkpoint is"):
        in_process(
            argv(
                corpus, tmp_path / "run", "--max_steps", 50, "--max_bad_steps", 3, "--save_every", 2
            )
        )
    state = json.loads((tmp_path / "run/last/trainer_state.json").read_text())
    assert state["step"] == 4  # the last good checkpoint is kept
    nan_on_calls(monkeypatch, set(range(1, 100)))  # from the first step: nothing to keep
    with pytest.raises(UserError, match="losses at step 0: .*; no checkpoint was saved yet$"):
        in_process(argv(corpus, tmp_path / "new", "--max_steps", 50, "--max_bad_steps", 3))


def test_a_refused_run_leaves_no_folder_it_made(corpus, tmp_path, monkeypatch, in_process):
    # output_dir runs/x in a fresh clone: runs/ is made too, and removed with it
    monkeypatch.chdir(tmp_path)
    args = [a if a != "configs/tiny.json" else str(ROOT / a) for a in argv(corpus, "runs/x")]
    with pytest.raises(UserError, match="data file not found"):
        in_process([*args, "--train_data", "missing.{lang}"])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match=r"log_with must be null or one of .* \(got ''\)"):
        in_process([*args, "--log_with", ""])  # "$TRACKER" unset: not a traceback
    monkeypatch.setattr(train, "get_available_trackers", lambda: [])  # as if not installed,
    with pytest.raises(UserError, match=r"^log_with tensorboard: not installed here \(pip"):
        in_process([*args, "--log_with", "tensorboard"])  # where accelerate would only warn
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "full",  # what a full disk raises: Python, safetensors (the weights), torch.save (the state)
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        ),
        RuntimeError("[enforce fail at inline_container.cc:672] . No space left on device"),
    ],
)
def test_disk_full_during_save_keeps_the_previous_checkpoint(
    corpus, tmp_path, monkeypatch, in_process, full
):
    import checkpoint

    real, saves = checkpoint.save_file, [0]

    def save_file(*args, **kwargs):
        saves[0] += 1
        if saves[0] == 2:
            raise full
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint"):
        in_process(argv(corpus, out, "--max_steps", 10, "--save_every", 2))
    assert os.readlink(out / "last") == "checkpoints/step-00000002"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]  # no .tmp left
    load_file(out / "last/model.safetensors")
    umask = os.umask(0)
    os.umask(umask)  # safetensors writes 0600; the checkpoint's weights are as readable as the rest
    weights, config = (out / "last" / name for name in ("model.safetensors", "config.json"))
    assert weights.stat().st_mode & 0o777 == config.stat().st_mode & 0o777 == 0o666 & ~umask


def test_disk_full_writing_the_moving_average_keeps_the_previous_checkpoint(
    corpus, tmp_path, monkeypatch, in_process
):
    real, saves = train.EMA.save, [0]

    def save(self, path):
        saves[0] += 1
        if saves[0] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, path)

    monkeypatch.setattr(train.EMA, "save", save)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint"):
        in_process(argv(corpus, out, "--max_steps", 10, "--save_every", 2, "--ema_decay", 0.5))
    assert os.readlink(out / "last") == "checkpoints/step-00000002"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]  # no .tmp left


def test_an_unreadable_moving_average_is_refused_in_one_line(corpus, tmp_path, in_process, capsys):
    out, run = tmp_path / "run", runs(in_process, capsys)
    run(*argv(corpus, out, "--max_steps", 2, "--ema_decay", 0.5))
    (out / "last/state/ema_0.pt").write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match=r"ema_0.pt: cannot load the moving average.*older one"):
        run(*argv(corpus, out, "--max_steps", 4, "--ema_decay", 0.5), "--resume")


def test_a_checkpoint_without_a_moving_average_starts_one_on_resume(
    corpus, tmp_path, in_process, capsys
):
    out, run = tmp_path / "run", runs(in_process, capsys)
    run(*argv(corpus, out, "--max_steps", 2))
    assert not (out / "last/state/ema_0.pt").exists()
    said = run(*argv(corpus, out, "--max_steps", 4, "--ema_decay", 0.5), "--resume")
    assert "holds no moving average: it starts from the resumed weights" in said
    # two updates since the resume, from the resumed weights (the first, random ones never seen)
    assert torch.load(out / "last/state/ema_0.pt", weights_only=True)["updates"] == 2


class Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    subprocess.run(
        [sys.executable, "train.py", *argv(corpus, out, "--max_steps", 2)],
        cwd=ROOT,
        env=ENV,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


@pytest.mark.parametrize("victim", ["state/optimizer.bin", "state/random_states_0.pkl"])
def test_resume_refuses_a_pickle_that_runs_code(corpus, trained, tmp_path, victim, in_process):
    out = tmp_path / "run"
    subprocess.run(["cp", "-r", str(trained), str(out)], check=True)
    marker = tmp_path / "pwned"
    target = (out / "last").resolve() / victim
    assert target.exists()
    with open(target, "wb") as f:
        torch.save({"state": Exploit(marker)}, f)  # what torch.load would unpickle
    with pytest.raises(UserError, match="cannot load the training state"):  # one line
        in_process([*argv(corpus, out, "--max_steps", 4), "--resume"])
    assert not marker.exists(), "loading the checkpoint ran code"


def test_weights_file_that_is_a_pickle_is_refused(trained, tmp_path):
    from checkpoint import load_model

    ckpt = tmp_path / "ckpt"
    subprocess.run(["cp", "-rL", str(trained / "best"), str(ckpt)], check=True)
    marker = tmp_path / "pwned"
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_model(ckpt)
    assert not marker.exists()


def test_truncated_weights_are_a_clear_error(trained, tmp_path):
    ckpt = tmp_path / "ckpt"
    subprocess.run(["cp", "-rL", str(trained / "best"), str(ckpt)], check=True)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    proc = subprocess.run(
        [sys.executable, "translate.py", "--checkpoint", str(ckpt)],
        input="x\n",
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "corrupt or truncated" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_pruning_keeps_the_newest_and_sweeps_what_a_kill_left(tmp_path):
    from checkpoint import prune_checkpoints, step_dirs

    ckpts = tmp_path / "checkpoints"
    names = ["step-00000001", "step-00000002", "step-00000003", "step-00000004",
             "step-00000009.tmp", "step-00000002.old", "step-00000001.del"]  # fmt: skip
    for name in names:
        (ckpts / name).mkdir(parents=True)
        (ckpts / name / "model.safetensors").write_bytes(b"x")
    prune_checkpoints(ckpts, 2)
    assert sorted(d.name for d in ckpts.iterdir()) == ["step-00000003", "step-00000004"]
    assert [d.name for d in step_dirs(ckpts)] == ["step-00000003", "step-00000004"]
    prune_checkpoints(ckpts, 0)  # keep_last 0 still keeps the newest: the one just saved
    assert [d.name for d in ckpts.iterdir()] == ["step-00000004"]


def test_resume_takes_the_newest_complete_checkpoint(tmp_path):
    from checkpoint import latest_checkpoint

    for n, files in (
        (1, ["trainer_state.json", "state/"]),
        (2, ["trainer_state.json"]),
        (3, ["state/"]),
    ):  # 2 and 3: damaged by hand (each lacks a part)
        d = tmp_path / "checkpoints" / f"step-{n:08d}"
        d.mkdir(parents=True)
        for f in files:
            (d / f.rstrip("/")).mkdir() if f.endswith("/") else (d / f).write_text("{}")
    assert latest_checkpoint(tmp_path).name == "step-00000001"


def test_pruning_deletes_in_place_when_the_rename_fails(tmp_path, monkeypatch):
    from pathlib import Path

    from checkpoint import prune_checkpoints

    ckpts = tmp_path / "checkpoints"
    for n in (1, 2):
        (ckpts / f"step-{n:08d}").mkdir(parents=True)

    def rename(self, target):
        raise OSError(39, "Directory not empty")  # a .del that would not go away

    monkeypatch.setattr(Path, "rename", rename)
    prune_checkpoints(ckpts, 1)  # no traceback after the step was published
    assert [d.name for d in ckpts.iterdir()] == ["step-00000002"]


# ---------------------------------------------------------------------------------------------
# Runs in this process, one after another (a subprocess each would cost seconds of imports)


def runs(in_process, capsys):
    """train.main(argv) -> its stdout, accelerate reset after each run (as in_process does)."""
    from accelerate.state import AcceleratorState, GradientState

    def run(*args) -> str:
        capsys.readouterr()
        try:
            in_process(list(map(str, args)))
        finally:
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
        return capsys.readouterr().out

    return run


def test_a_resume_trains_with_the_checkpoints_tokenizer_and_a_fresh_start_trains_its_own(
    corpus, tmp_path, in_process, capsys
):
    # out/tokenizer is the run's copy, but the checkpoint's is the one its weights were trained
    # with: a resume takes that. With no checkpoint, --resume starts fresh, and so must train the
    # tokenizer its config asks for, not load the one an earlier run left behind. (max_tokens
    # null, batches capped by batch_size alone, once crashed the log's step-size line.)
    run, out = runs(in_process, capsys), tmp_path / "run"
    vocab = lambda log: int(re.search(r"vocabulary (\d+)", log)[1])  # noqa: E731
    base = [*argv(corpus, out, "--max_tokens", "null"), "--tokenizer"]
    first = run(*base, '{"train": "unigram", "vocab_size": 100}', "--max_steps", 2)
    assert "up to 32 pairs, 1 a step (grad_accum_steps): up to 32 pairs a step" in first
    assert "tokenizer: unigram" in first and vocab(first) != 120
    shutil.rmtree(out / "tokenizer")
    shutil.copytree(corpus / "tok", out / "tokenizer")  # 120 pieces
    resumed = run(*base, '{"train": "unigram", "vocab_size": 100}', "--max_steps", 4, "--resume")
    assert "resumed from" in resumed and vocab(resumed) == vocab(first)
    assert "tokenizer: unigram" not in resumed  # taken as it is, not trained again
    shutil.rmtree(out / "checkpoints")
    shutil.rmtree(out / "best")
    fresh = run(*base, '{"train": "unigram", "vocab_size": 80}', "--max_steps", 1, "--resume")
    assert "nothing to resume" in fresh and "tokenizer: unigram 80 trained" in fresh
    assert vocab(fresh) not in (120, vocab(first))
    pieces = json.loads((out / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(pieces) == vocab(fresh)


def test_a_fresh_run_refuses_an_output_dir_holding_an_earlier_best(
    trained, tmp_path, corpus, in_process, capsys
):
    # checkpoints/ deleted as the refusal to start over advises, best/ left: translate.py,
    # evaluate.py and export.py take a run's best/ first, and would serve the old model
    out = tmp_path / "run"
    shutil.copytree(trained, out, symlinks=True)
    shutil.rmtree(out / "checkpoints")
    run = runs(in_process, capsys)
    for extra in ([], ["--resume"]):
        with pytest.raises(UserError, match=f"would be served as {out / 'best'} until its first"):
            run(*argv(corpus, out, "--max_steps", 2, *extra))
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 2  # left as it was


def test_max_minutes_passed_by_an_epochs_end_ends_the_run_there(
    corpus, tmp_path, in_process, capsys
):
    # checked every log_every steps, it let the run start the next epoch, train up to log_every
    # more steps, then validate and save a second time
    out = tmp_path / "run"
    runs(in_process, capsys)(
        *argv(
            corpus,
            out,
            "--max_minutes",
            1e-5,
            "--log_every",
            1000,
            "--epochs",
            3,
            "--max_steps",
            "null",
        )
    )
    records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    validated = [r for r in records if "valid_loss" in r]
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert [r["epoch"] for r in validated] == [1] and state["epoch"] == 1
    assert state["batch_in_epoch"] == 0 and state["step"] == validated[0]["step"]


def test_the_cosine_schedule_warms_up_then_follows_half_a_cosine_to_zero(
    corpus, tmp_path, in_process, capsys
):
    # the rate logged at step n is the one step n + 1 will use: lr · lambda(n)
    out = tmp_path / "run"
    runs(in_process, capsys)(*argv(corpus, out, "--lr_schedule", "cosine", "--warmup_steps", 2,
                                   "--max_steps", 10, "--log_every", 1, "--cooldown_steps", 0,
                                   "--fit_steps_to_time", "false"))  # fmt: skip
    lr = json.loads((out / "config.json").read_text())["learning_rate"]
    logged = {
        r["step"]: r["lr"] for r in map(json.loads, (out / "metrics.jsonl").open()) if "lr" in r
    }
    expected = {n: lr * (n / 2 if n < 2 else 0.5 * (1 + math.cos(math.pi * (n - 2) / 8)))
                for n in range(1, 11)}  # fmt: skip
    assert logged.keys() == expected.keys()
    for n, value in logged.items():
        assert math.isclose(value, expected[n], rel_tol=1e-6, abs_tol=1e-12), (n, value)


def fake_accelerator(fsdp: bool, processes: int = 1):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    kind = DistributedType.FSDP if fsdp else DistributedType.NO
    return SimpleNamespace(distributed_type=kind, num_processes=processes, process_index=0)


def test_a_resume_across_fsdp_or_processes_inside_an_epoch_is_refused_before_loading(
    trained, tmp_path
):
    from config import TrainConfig

    out = tmp_path / "run"
    shutil.copytree(trained, out, symlinks=True)
    ckpt = (out / "last").resolve()
    cfg, said = TrainConfig(), []
    # saved by one plain process: FSDP would look for shards (tracebacks, then a cut message)
    with pytest.raises(UserError, match=r"step-\d+: saved without FSDP and resumed under it: .*"
                       r"resume it as it was launched, or .*--init_from .*step-"):  # fmt: skip
        train.restore(fake_accelerator(fsdp=True), out, cfg, True, said.append)
    (ckpt / "state" / "pytorch_model_fsdp_0").mkdir()  # as FSDP's sharded state is saved
    with pytest.raises(UserError, match=r"saved under FSDP and resumed without it"):
        train.restore(fake_accelerator(fsdp=False), out, cfg, True, said.append)
    (ckpt / "state" / "pytorch_model_fsdp_0").rmdir()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["batching"]["processes"] == 1
    inside = {**state, "batch_in_epoch": 1}
    (ckpt / "trainer_state.json").write_text(json.dumps(inside))
    # inside an epoch: the batching refusal, not a missing random_states_1.pkl
    with pytest.raises(UserError, match=r"epoch \d+ with processes 1 -> 3: .*num_processes 1,"):
        train.restore(fake_accelerator(fsdp=False, processes=3), out, cfg, True, said.append)
    assert said == []
    # at an epoch's end more processes may resume: the new ones start from the seed, as said
    end = {**state, "batch_in_epoch": 0}
    train.check_same_launch(end, fake_accelerator(False, 3), ckpt / "state", said.append)
    assert said == ["saved by 1 process(es): processes 1-2 start from the seed's random state"]
    train.check_same_launch(end, fake_accelerator(False, 2), ckpt / "state", said.append)
    assert said[-1] == "saved by 1 process(es): process 1 starts from the seed's random state"


@pytest.mark.parametrize(
    ("text", "error"),
    [('{"epoch": 0, "st', "JSONDecodeError"), ('{"epoch": 0}', "KeyError: 'step'"),
     ('{"epoch": 0, "step": "7", "batch_in_epoch": 0}', "ValueError: step is '7'"),
     ('{"epoch": 0, "step": 7, "batch_in_epoch": "1"}', "ValueError: batch_in_epoch is '1'")],
)  # fmt: skip
def test_a_damaged_trainer_state_is_one_line(corpus, trained, tmp_path, in_process, text, error):
    out = tmp_path / "run"
    shutil.copytree(trained, out, symlinks=True)
    (out / "last").resolve().joinpath("trainer_state.json").write_text(text)
    with pytest.raises(UserError, match=rf"cannot load trainer_state.json \({error}.*older one$"):
        in_process(argv(corpus, out, "--max_steps", 4, "--resume"))
