"""The moving average of the weights (ema_decay): its update, the swap, its state for --resume."""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

import train
from config import TrainConfig
from ema import EMA


def decays(decay, n):
    """The documented ramp: min(decay, (1 + k) / (10 + k)) for updates k = 1..n."""
    return [min(decay, (1 + k) / (10 + k)) for k in range(1, n + 1)]


def test_update_follows_the_ramped_recurrence():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, 0.5)
    expected = model.weight.detach().clone()
    for d in decays(0.5, 12):  # (1 + k) / (10 + k) passes 0.5 at k = 8
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        ema.update(model)
        expected = d * expected + (1 - d) * model.weight.detach()
    torch.testing.assert_close(ema.shadow[0], expected)
    torch.testing.assert_close(ema.shadow[1], model.bias.detach())  # never moved: its own value
    assert ema.updates == 12


def test_the_average_starts_from_the_weights_it_is_given():
    model = torch.nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    ema = EMA(model, 0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # the first update weighs the start 2 / 11 (the ramp at k = 1)
    torch.testing.assert_close(ema.shadow[0], 2 / 11 * w0 + 9 / 11 * (w0 + 1.0))


def test_swapped_shows_the_average_then_restores_the_trained_weights_even_on_error():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, 0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    trained = model.weight.detach().clone()
    with pytest.raises(RuntimeError):
        with ema.swapped(model):
            assert torch.equal(model.weight, ema.shadow[0])
            assert not torch.equal(model.weight, trained)
            raise RuntimeError("validation failed")
    assert torch.equal(model.weight, trained)


def saved_average(path):
    """A model, and the average of its weights after one update, saved at `path`."""
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, 0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    ema.save(path)
    return model, ema


def test_save_and_load_round_trip_and_refuse_other_shapes(tmp_path):
    model, ema = saved_average(tmp_path / "ema.pt")
    other = EMA(model, 0.9)  # fresh: the current weights
    other.load(tmp_path / "ema.pt")
    assert other.updates == 1
    for a, b in zip(other.shadow, ema.shadow, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="other shapes"):
        EMA(torch.nn.Linear(4, 2), 0.9).load(tmp_path / "ema.pt")


def test_a_failed_write_is_an_oserror(tmp_path):
    # train.py's save turns an OSError into "cannot write checkpoint ...; the previous one is
    # intact"; torch.save itself would raise a RuntimeError
    with pytest.raises(OSError):
        EMA(torch.nn.Linear(3, 2), 0.9).save(tmp_path / "missing" / "ema.pt")


def test_without_fsdp_every_process_resumes_rank_0s_moving_average(tmp_path):
    # a run saved by one process and resumed by two: the new rank has no file of its own
    (tmp_path / "state").mkdir()
    model, saved = saved_average(tmp_path / "state" / "ema_0.pt")
    rank1 = SimpleNamespace(process_index=1, distributed_type=DistributedType.MULTI_CPU)
    ema = train.start_ema(model, rank1, TrainConfig(ema_decay=0.9), tmp_path, pytest.fail)
    assert ema.updates == 1 and torch.equal(ema.shadow[0], saved.shadow[0])


def test_a_resume_under_fsdp_with_other_process_counts_is_refused(tmp_path):
    # each process holds its own shards of the average: with another count the old processes
    # found shards of other shapes and failed, the new ones found none and started afresh
    import json

    (tmp_path / "trainer_state.json").write_text(json.dumps({"batching": {"processes": 2}}))
    fsdp4 = SimpleNamespace(distributed_type=DistributedType.FSDP, num_processes=4,
                            process_index=0)  # fmt: skip
    with pytest.raises(
        train.UserError, match="sharded over 2 processes; .* resume it with 2, not 4"
    ):
        train.start_ema(torch.nn.Linear(3, 2), fsdp4, TrainConfig(ema_decay=0.9), tmp_path, print)
