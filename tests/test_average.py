"""average.py: the mean of the weights; bad input is one line and replaces nothing."""

import pytest
import torch
from safetensors.torch import load_file, save_file

import average
from checkpoint import staged_dir
from config import UserError


def checkpoint(path, config="{}\n", **tensors):
    path.mkdir(parents=True)
    save_file(tensors, path / "model.safetensors")
    (path / "config.json").write_text(config)
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


def test_bad_input_is_a_user_error_and_replaces_nothing(tmp_path):
    run = tmp_path / "run"
    a = checkpoint(run / "checkpoints" / "step-1", w=torch.zeros(2))
    b = checkpoint(run / "checkpoints" / "step-2", w=torch.ones(2))
    wide = checkpoint(tmp_path / "wide", w=torch.ones(3))  # another vocabulary, say
    other_run = tmp_path / "other_run"
    (other_run / "checkpoints").mkdir(parents=True)
    new = str(tmp_path / "new")
    for argv, match in [
        (["--run", run, "--last", 0, "--out", new], "--last must be >= 1"),
        (["--run", run, "--out", run], "would replace .*run/checkpoints/step-1"),
        (["--checkpoints", a, b, "--out", b], "would replace .*step-2"),
        (["--checkpoints", a, "--out", other_run], "holds a training run's checkpoints"),
        (["--checkpoints", wide, "--out", run / "checkpoints"], "holds a training run's"),
        (["--checkpoints", a, wide, "--out", new], r"w has shape \(3,\), \(2,\) in"),
    ]:
        with pytest.raises(UserError, match=match):
            average.main([str(x) for x in argv])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other_run", "run", "wide"]
    assert torch.equal(load_file(b / "model.safetensors")["w"], torch.ones(2))


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
