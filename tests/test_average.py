"""average.py: the mean of the weights; bad input is one line and replaces nothing."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import average
from checkpoint import checkpoint_tokenizer, staged_dir, staged_output
from config import UserError
from data import train_tokenizer
from helpers import ROOT
from test_translate import make_checkpoint


@functools.cache
def tokenizer():
    return train_tokenizer(iter(["der hund sieht die katze", "ein mann liest ein buch"]), "bpe", 40)


def checkpoint(path, config="{}\n", **tensors):
    """A checkpoint directory with these weights, config.json, model_config.json, tokenizer."""
    path.mkdir(parents=True)
    save_file(tensors, path / "model.safetensors")
    (path / "config.json").write_text(config)
    (path / "model_config.json").write_text('{"d_model": 2}\n')
    tokenizer().save_pretrained(path)
    return path


def test_average_is_the_mean_with_the_newest_checkpoints_files(tmp_path):
    run = tmp_path / "run"
    checkpoint(run / "checkpoints" / "step-1", w=torch.tensor([9.0, 9.0]))
    checkpoint(run / "checkpoints" / "step-2", w=torch.tensor([1.0, 2.0]))
    checkpoint(run / "checkpoints" / "step-10", '{"newest": 1}\n', w=torch.tensor([3.0, 6.0]))
    average.main(["--run", str(run), "--last", "2", "--out", str(tmp_path / "avg")])
    got = load_file(tmp_path / "avg" / "model.safetensors")["w"]
    assert torch.equal(got, torch.tensor([2.0, 4.0]))  # steps 2 and 10, not 1
    assert (tmp_path / "avg" / "config.json").read_text() == '{"newest": 1}\n'


def test_an_average_carries_no_training_state_nor_validation_record(tmp_path):
    # trainer_state.json would make it a step to resume; best.json is one checkpoint's record
    dirs = [checkpoint(tmp_path / f"c{i}", w=torch.tensor([float(i), 1.0])) for i in range(2)]
    for d in dirs:
        (d / "trainer_state.json").write_text('{"step": 3, "batch_in_epoch": 5}\n')
        (d / "best.json").write_text('{"step": 3}\n')
    average.main(["--checkpoints", *map(str, dirs), "--out", str(tmp_path / "avg")])
    names = {p.name for p in (tmp_path / "avg").iterdir()}
    assert "config.json" in names and not names & {"trainer_state.json", "best.json"}


def test_a_runs_output_dir_resolves_to_its_best_checkpoint_else_its_last(tmp_path):
    from checkpoint import resolve

    run = tmp_path / "run"
    for d in ("best", "checkpoints/step-2"):
        (run / d).mkdir(parents=True)
        (run / d / "model.safetensors").write_bytes(b"weights")
    (run / "last").symlink_to(Path("checkpoints") / "step-2")
    assert resolve(run) == run / "best"
    shutil.rmtree(run / "best")
    assert resolve(run) == run / "last"


def test_checkpoints_of_two_directions_are_not_averaged(tmp_path):
    # one vocabulary, the same shapes: en->de and de->en would average without complaint
    ende = checkpoint(tmp_path / "ende", '{"src_lang": "en", "tgt_lang": "de"}\n', w=torch.ones(2))
    deen = checkpoint(tmp_path / "deen", '{"src_lang": "de", "tgt_lang": "en"}\n', w=torch.ones(2))
    with pytest.raises(UserError, match=r"deen: trained de->en, .*ende en->de$"):
        average.main(["--checkpoints", str(ende), str(deen), "--out", str(tmp_path / "avg")])
    assert not (tmp_path / "avg").exists()


def test_a_short_run_is_said_once_nothing_refuses_the_average(tmp_path, capsys):
    run = tmp_path / "run"
    checkpoint(run / "checkpoints" / "step-1", w=torch.ones(2))
    checkpoint(run / "checkpoints" / "step-2", w=torch.zeros(2))
    with pytest.raises(UserError, match="is a training run's checkpoint"):  # the error alone
        average.main(["--run", str(run), "--last", "5", "--out", str(run / "best")])
    assert capsys.readouterr().err == ""
    average.main(["--run", str(run), "--last", "5", "--out", str(tmp_path / "avg")])
    assert capsys.readouterr().err == f"warning: only 2 checkpoints in {run}/checkpoints\n"


def test_average_sums_in_float64(tmp_path):
    # 2**24 + 1 + 1 in fp32 is 2**24 (each 1 is lost in rounding): the mean would be off by 0.5
    values = [[2.0**24, 0.0], [1.0, 1.0], [1.0, 2.0]]  # (the second entry: no two alike)
    dirs = [checkpoint(tmp_path / f"c{i}", w=torch.tensor(v)) for i, v in enumerate(values)]
    average.main(["--checkpoints", *map(str, dirs), "--out", str(tmp_path / "avg")])
    assert load_file(tmp_path / "avg" / "model.safetensors")["w"][0].item() == (2**24 + 2) / 3


def test_replacing_a_directory_keeps_the_old_one_until_the_new_is_in_place(tmp_path, monkeypatch):
    from checkpoint import replace_dir

    final, new = tmp_path / "avg", tmp_path / "avg.tmp"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    real_rename = type(final).rename

    def failing(self, target):  # the new directory cannot be moved into place
        if self == new:
            raise OSError("disk gone")
        return real_rename(self, target)

    monkeypatch.setattr(type(final), "rename", failing)
    with pytest.raises(OSError):
        replace_dir(new, final)
    kept = [d for d in (final, tmp_path / "avg.old") if (d / "old.txt").exists()]
    assert kept, "the old directory was deleted before the new one was in place"


def test_bad_input_is_a_user_error_and_replaces_nothing(tmp_path):
    run = tmp_path / "run"
    a = checkpoint(run / "checkpoints" / "step-1", w=torch.zeros(2))
    b = checkpoint(run / "checkpoints" / "step-2", w=torch.ones(2))
    wide = checkpoint(tmp_path / "wide", w=torch.ones(3))  # another vocabulary, say
    renamed = checkpoint(tmp_path / "renamed", v=torch.ones(2))
    again = tmp_path / "best"  # a copy of a, as train.py copies a step to best/
    shutil.copytree(a, again, copy_function=shutil.copy2)
    # other weights of the same size with the same whole-second time (an unpacked archive)
    st = (a / "model.safetensors").stat()
    os.utime(b / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert average.given_twice([a, b]) == []
    assert average.given_twice([a, b, again]) == sorted([str(a), str(again)])
    fresh = tmp_path / "fresh"  # a copy with a new time (cp -r without -p) is a copy too
    shutil.copytree(a, fresh, copy_function=shutil.copy)
    os.utime(fresh / "model.safetensors", ns=(1, 1))
    assert average.given_twice([a, b, fresh]) == sorted([str(a), str(fresh)])
    shutil.rmtree(fresh)
    # --out names a folder that is not one model: replacing it would delete what it holds
    models = tmp_path / "models"  # a model with other models in folders beside it
    shutil.copytree(a, models / "a")
    shutil.copy(a / "model.safetensors", models)
    (models / "notes.txt").write_text("keep me\n")
    notes = tmp_path / "notes"  # no model at all
    shutil.copytree(models, notes, ignore=shutil.ignore_patterns("a", "*.safetensors"))
    other_run = tmp_path / "other_run"
    (other_run / "checkpoints").mkdir(parents=True)
    exported = tmp_path / "exported"  # a model, but not a checkpoint of ours: not replaced
    exported.mkdir()
    (exported / "config.json").write_text('{"model_type": "marian"}\n')
    (exported / "model.safetensors").write_bytes(b"")
    shutil.copytree(a, run / "best")  # what train.py writes and reads back: a run's best/,
    (run / "last").symlink_to(Path("checkpoints") / "step-2")  # last, and step directories
    new = str(tmp_path / "new")
    for argv, match in [
        (["--checkpoints", wide, renamed, "--out", run / "best"], "is a training run's checkpoint"),
        (["--checkpoints", wide, renamed, "--out", run / "last"], "is a training run's checkpoint"),
        (["--checkpoints", a, b, "--out", run / "checkpoints" / "step-3"], "a training run's chec"),
        (["--run", run, "--last", 0, "--out", new], "--last must be >= 1"),
        (["--checkpoints", a, b, "--last", 1, "--out", new], "--last N counts a run's newest"),
        (["--run", run, "--out", run], "would replace .*run/checkpoints/step-1"),
        (["--checkpoints", a, b, "--out", b], "would replace .*step-2"),
        (["--checkpoints", a, b, "--out", other_run], "holds a training run's checkpoints"),
        (["--checkpoints", wide, renamed, "--out", run / "checkpoints"], "holds a training run's"),
        (["--checkpoints", a, b, "--out", models], "models exists and is not a model directory"),
        (["--checkpoints", a, b, "--out", notes], "notes exists and is not a model directory"),
        (["--checkpoints", a, b, "--out", models / "notes.txt"], "is not a model directory"),
        (["--checkpoints", a, b, "--out", exported], "holds a transformers model, which this"),
        (["--checkpoint", a, "--out", new], "one checkpoint, nothing to average .*--run DIR"),
        (["--checkpoints", a, wide, "--out", new], r"w has shape \(3,\), \(2,\) in"),
        (["--checkpoints", a, renamed, "--out", new], "renamed: its weights do not match .*step-1"),
        (["--run", run, "--checkpoints", a, "--out", new], "give either --run .* or --checkpoints"),
        (["--out", new], "give either --run .* or --checkpoints"),
        (["--run", other_run, "--out", new], f"no checkpoints to average in {other_run}/check"),
        (["--checkpoints", a, b, again, "--out", new], "checkpoint given twice: .*best, .*step-1"),
        (
            ["--checkpoints", a, b, a.parent / ".." / "checkpoints" / "step-1", "--out", new],
            "checkpoint given twice",
        ),
    ]:
        with pytest.raises(UserError, match=match):
            average.main([str(x) for x in argv])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best", "exported", "models", "notes", "other_run", "renamed", "run", "wide",
    ]  # fmt: skip
    assert (models / "notes.txt").read_text() == "keep me\n" and (models / "a").is_dir()
    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "model.safetensors"]
    # an earlier output (with a hidden cache folder, as Hugging Face's tools leave), or an empty
    # folder, is replaced
    (models / "a" / ".cache" / "huggingface").mkdir(parents=True)
    average.main(["--checkpoints", str(a), str(b), "--out", str(models / "a")])
    (tmp_path / "empty").mkdir()
    average.main(["--checkpoints", str(a), str(b), "--out", str(tmp_path / "empty")])
    for out in (models / "a", tmp_path / "empty"):
        assert torch.equal(load_file(out / "model.safetensors")["w"], torch.full((2,), 0.5))
    assert torch.equal(load_file(b / "model.safetensors")["w"], torch.ones(2))


def test_staging_beside_out_leaves_the_users_tmp_and_old_folders_alone(tmp_path):
    # out.tmp and out.old are a checkpoints/ folder's own leftovers to clear, not a user's
    a = checkpoint(tmp_path / "a", w=torch.zeros(2))
    b = checkpoint(tmp_path / "b", w=torch.ones(2))
    for name in ("avg.tmp", "avg.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("keep me\n")
    for _ in range(2):  # a new --out, then one replaced
        average.main([str(x) for x in ("--checkpoints", a, b, "--out", tmp_path / "avg")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "avg", "avg.old", "avg.tmp", "b"]
    assert all((tmp_path / n / "notes.txt").exists() for n in ("avg.tmp", "avg.old"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_staging_an_output_leaves_nothing(tmp_path, signum):
    code = (
        "import os, sys; from checkpoint import staged_output\n"
        "with staged_output(sys.argv[1]) as tmp:\n"
        "    (tmp / 'model.safetensors').write_text('half')\n"
        "    os.kill(os.getpid(), int(sys.argv[2]))\n"
    )
    out = tmp_path / "out"
    # its default action, whatever this process inherited (under nohup, SIGHUP is ignored)
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(int(signum))], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))  # fmt: skip
    assert proc.returncode == 128 + signum, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # nothing staged left, no out
    # a signal the process was started to ignore (`nohup`: SIGHUP) stays ignored: it finishes
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(int(signum))], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signum, signal.SIG_IGN))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_write_leaves_the_old_directory_and_no_temporary(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old\n")
    with pytest.raises(OSError):
        with staged_dir(final) as tmp:
            (tmp / "new.txt").write_text("new\n")
            raise OSError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    with staged_dir(final) as tmp:
        (tmp / "new.txt").write_text("new\n")
    assert [p.name for p in final.iterdir()] == ["new.txt"]


@pytest.mark.parametrize(
    ("error", "said"),
    [
        # what a full disk raises from each writer (tmpfs of 100 KB, 2026-12-06)
        (OSError(28, "No space left on device"), "(No space left on device)"),
        (
            SafetensorError("Error while serializing: I/O error: No space left on device"),
            "(SafetensorError: Error while serializing: I/O error: No space left on device)",
        ),
        (
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
            "(torch.save could not write a file, a full disk? (RuntimeError: [enforce fail",
        ),
    ],
)
def test_a_full_disk_while_staging_an_output_is_one_line_and_leaves_nothing(tmp_path, error, said):
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"^cannot write .*out \(") as e:
        with staged_output(out) as tmp:
            (tmp / "model.safetensors").write_text("half")
            raise error
    assert said in str(e.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="^a bug$"):  # not every RuntimeError is a disk's
        with staged_output(out):
            raise RuntimeError("a bug")
    assert list(tmp_path.iterdir()) == []


def test_a_staged_output_is_readable_as_the_umask_allows_and_leaves_nothing_beside_it(tmp_path):
    # mkdtemp's directory is 0700 and safetensors writes 0600: shared with a group, unreadable
    old = os.umask(0o022)
    try:
        with staged_output(tmp_path / "out") as tmp:
            save_file({"w": torch.zeros(2)}, tmp / "model.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    # an --out that is a link, to a model or to nothing: replaced by the new model, with no
    # link nor staged copy left behind
    (tmp_path / "model").mkdir()
    (tmp_path / "link").symlink_to("model")
    (tmp_path / "dangling").symlink_to("gone/x")
    for name in ("link", "dangling"):
        with staged_output(tmp_path / name) as tmp:
            (tmp / "new.txt").write_text("new\n")
        assert (tmp_path / name / "new.txt").is_file() and not (tmp_path / name).is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "link", "model", "out"]


def test_a_failed_rename_into_place_leaves_nothing_staged(tmp_path, monkeypatch):
    import checkpoint

    def fail(*args):
        raise OSError(20, "Not a directory")

    monkeypatch.setattr(checkpoint, "replace_dir", fail)
    with pytest.raises(UserError, match=r"cannot write .*out \(Not a directory\)"):
        with staged_output(tmp_path / "out") as tmp:
            (tmp / "model.safetensors").write_text("whole")
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_of_other_models_are_refused(tmp_path):
    """Equal names and shapes are not enough: other heads, or the same pieces under other ids,
    make an average of meaningless weights."""
    a = make_checkpoint(tmp_path / "a", n_heads=2)
    heads = make_checkpoint(tmp_path / "heads", n_heads=4)  # the same shapes at d_model 16
    ids = tmp_path / "ids"
    shutil.copytree(a, ids)  # the same weights: the vocabulary is checked first
    tok = json.loads((ids / "tokenizer.json").read_text())
    pieces = tok["model"]["vocab"]
    pieces[10], pieces[11] = pieces[11], pieces[10]  # two pieces swap ids
    (ids / "tokenizer.json").write_text(json.dumps(tok))
    out = tmp_path / "avg"
    with pytest.raises(UserError, match=r"model_config.json differs from .*a's in \['n_heads'\]"):
        average.main(["--checkpoints", str(a), str(heads), "--out", str(out)])
    with pytest.raises(UserError, match="tokenizer's vocabulary differs"):
        average.main(["--checkpoints", str(a), str(ids), "--out", str(out)])
    assert not out.exists()
    # dropout rates are training's, not the model's, and max_len only sizes the sinusoidal
    # table: a run resumed with others still averages
    resumed = make_checkpoint(tmp_path / "resumed", tok=checkpoint_tokenizer(a), dropout=0.3,
                              attn_dropout=0.1, max_len=144, eos_scale=2)  # fmt: skip
    average.main(["--checkpoints", str(a), str(resumed), "--out", str(out)])
    shutil.rmtree(out)
    # a run's output_dir stands for its best checkpoint, as in translate.py
    run = tmp_path / "run"
    shutil.copytree(a, run / "best")
    want = load_file(a / "model.safetensors")
    save_file({k: 3 * v for k, v in want.items()}, run / "best" / "model.safetensors")
    (run / "best" / "best.json").write_text('{"step": 7}\n')
    average.main(["--checkpoints", str(a), str(run), "--out", str(out)])
    got = load_file(out / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], 2 * want[k]) for k in want)
    assert not (out / "best.json").exists()  # one checkpoint's record, not the average's


def test_an_unwritable_out_is_one_line_and_leaves_nothing(tmp_path):
    a = checkpoint(tmp_path / "a", w=torch.zeros(2))
    b = checkpoint(tmp_path / "b", w=torch.ones(2))
    (tmp_path / "file").write_text("not a directory\n")
    with pytest.raises(UserError, match=r"cannot write .*file/avg \(Not a directory\)"):
        average.main(["--checkpoints", str(a), str(b), "--out", str(tmp_path / "file" / "avg")])
    with pytest.raises(UserError, match="--out .: give the new directory's name"):
        average.main(["--checkpoints", str(a), str(b), "--output", "."])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "file"]
