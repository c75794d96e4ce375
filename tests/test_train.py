"""Training you can leave running: schedule, exact resume after SIGKILL, SIGTERM, logging.

Several processes (FSDP, DDP): test_distributed.py, with this file's helpers.
"""

import dataclasses
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import data
import train
from checkpoint import step_dirs
from config import TrainConfig, UserError, config_from_argv
from data import Corpus, SpecialIds, collate
from helpers import ROOT, free_port, subprocess_env, wait_for_checkpoint, write_corpus
from model import ModelConfig, Transformer
from train import inverse_sqrt, make_optimizer

ENV = subprocess_env()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("train"), 3, 400, 16, 150)


def args_for(corpus, out, *extra):
    return [
        "train.py", "--config", "configs/tiny.json",
        "--train_data", f"{corpus}/train.{{lang}}", "--valid_data", f"{corpus}/valid.{{lang}}",
        "--tokenizer", str(corpus / "tok"), "--output_dir", str(out),
        "--max_tokens", "400", "--max_steps", "null", "--log_with", "null",
        "--valid_bleu_samples", "4", *map(str, extra),
    ]  # fmt: skip


def run(args, launch=None, timeout=240):
    cmd = [sys.executable, *args]
    if launch:
        cmd = ["timeout", str(timeout), "accelerate", "launch", "--config_file", launch,
               "--main_process_port", str(free_port()), *args]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout + 30
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(out):
    return load_file(Path(out) / "last" / "model.safetensors")


def train_losses(out):
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["train_loss"] for r in map(json.loads, lines) if "train_loss" in r}


def logged_lrs(out):
    """{step: the LR the next step will use}, as train.py logged it."""
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["lr"] for r in map(json.loads, lines) if "lr" in r}


def test_inverse_sqrt_schedule():
    assert inverse_sqrt(1, 4) == 0.25 and inverse_sqrt(4, 4) == 1.0  # linear warmup to the peak
    assert inverse_sqrt(16, 4) == 0.5  # then sqrt(warmup / step)
    assert inverse_sqrt(0, 4) == 0.25  # step 0 is treated as step 1
    assert math.isclose(inverse_sqrt(100, 0), 0.1)


def test_inverse_sqrt_cooldown_falls_linearly_to_zero_at_the_end():
    # warmup 4, cooldown over the last 8 of 24 steps: unchanged up to step 16 (0.5)
    assert [inverse_sqrt(s, 4, 8, 24) for s in (4, 16)] == [1.0, 0.5]
    assert inverse_sqrt(20, 4, 8, 24) == 0.25 and inverse_sqrt(24, 4, 8, 24) == 0.0
    assert inverse_sqrt(30, 4, 8, 24) == 0.0  # past max_steps it stays at 0


def test_an_epoch_short_of_a_whole_step_counts_the_batches_it_leaves_out():
    offsets = np.arange(0, 251, 5)  # 50 pairs of 5 + 5 tokens
    logged = []
    run = {"train": Corpus(np.ones(250), offsets, np.ones(250), offsets), "log": logged.append}
    one_process = SimpleNamespace(process_index=0, num_processes=1)
    # 4 pairs per 20-token batch: 12 batches of 4 and one of 2
    run["cfg"] = TrainConfig(max_tokens=20, max_seq_length=5, batch_size=4, grad_accum_steps=3)
    batches, weights, _ = train.epoch_batches(run, one_process, 0, False)
    kept = sum(len(b) for b in batches)
    assert len(batches) == 12 and kept in (46, 48)
    assert logged == [
        f"epoch 1: the last 1 of 13 batches ({50 - kept} pairs) left out, to end on a whole "
        "step of grad_accum_steps 3"
    ]
    logged.clear()
    run["cfg"] = TrainConfig(max_tokens=20, max_seq_length=5, batch_size=4, grad_accum_steps=1)
    assert sum(len(b) for b in train.epoch_batches(run, one_process, 0, False)[0]) == 50
    assert logged == []


def test_the_end_of_epochs_counts_the_steps_left_in_this_epoch_by_accumulated_batches():
    # 4 batches into an epoch of 20 steps of 2 batches: 18 steps left in it, not 16
    run = {"cfg": TrainConfig(grad_accum_steps=2, epochs=1), "train": [None] * 40}
    assert train.epochs_end(run, {"step": 10, "batch_in_epoch": 4}, 0, 20) == 28
    run["cfg"] = TrainConfig(grad_accum_steps=2, epochs=2)  # and a whole epoch more: 20 steps
    assert train.epochs_end(run, {"step": 10, "batch_in_epoch": 4}, 0, 20) == 48


def test_an_epoch_shorter_than_one_step_is_refused():
    # 13 batches of up to 4 pairs (as above): accumulating 14 would leave the whole epoch out
    offsets = np.arange(0, 251, 5)
    run = {"train": Corpus(np.ones(250), offsets, np.ones(250), offsets)}
    run["cfg"] = TrainConfig(max_tokens=20, max_seq_length=5, batch_size=4, grad_accum_steps=13)
    train.check_whole_steps(run, 1)
    run["cfg"] = dataclasses.replace(run["cfg"], grad_accum_steps=14)
    with pytest.raises(UserError, match=r"grad_accum_steps 14 is more than the 13 batches of"):
        train.check_whole_steps(run, 1)
    run["cfg"] = dataclasses.replace(run["cfg"], grad_accum_steps=7)  # 7 each on 2 processes
    train.check_whole_steps(run, 2)
    run["cfg"] = dataclasses.replace(run["cfg"], grad_accum_steps=8)
    with pytest.raises(UserError, match=r"the 7 batches of an epoch on each of 2 processes"):
        train.check_whole_steps(run, 2)


def test_a_step_weighs_every_target_token_alike_over_accumulated_batches_and_processes():
    # a 1-pair batch with 2 target tokens and a 3-pair one with 24: the step's gradient must be
    # that of the mean over all 26 tokens, not the mean of the two batches' means
    rng = np.random.default_rng(0)
    t_len = [2, 8, 8, 8]
    tgt = rng.integers(3, 20, sum(t_len))
    corpus = Corpus(rng.integers(3, 20, 20), np.arange(0, 21, 5), tgt, np.cumsum([0, *t_len]))
    every = [np.array([0]), np.array([1, 2, 3])]
    ids, cfg = SpecialIds(pad=0, eos=1, start=2), TrainConfig(label_smoothing=0.1)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(20, 20, pad_id=0, d_model=16, n_heads=2, d_ff=32, n_layers=1,
                                    dropout=0.0))  # fmt: skip

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    def loss(index):
        return train.train_loss(model, collate(corpus, index, ids), cfg, ids.pad)

    whole = grads(loss(np.arange(4)))  # one batch of all 4 pairs
    w = train.step_weights(train.shard_tokens(every, corpus, 1, 2), 0, 2)  # 1 process, accum 2
    assert w == pytest.approx([2 * 2 / 26, 24 * 2 / 26])
    # accelerate divides each accumulated batch's loss by accum
    accumulated = grads((loss(every[0]) * w[0] + loss(every[1]) * w[1]) / 2)
    torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-6)
    # 2 processes, accum 1: each weighs its own batch, DDP averages the two gradients
    two = train.shard_tokens(every, corpus, 2, 1)  # (2 processes, 1 batch each)
    w0, w1 = (train.step_weights(two, r, 1) for r in (0, 1))
    averaged = (grads(loss(every[0]) * w0[0]) + grads(loss(every[1]) * w1[0])) / 2
    torch.testing.assert_close(averaged, whole, rtol=1e-4, atol=1e-6)
    # one process, one batch per step: exactly 1, so a plain run's loss is not touched
    assert train.step_weights(train.shard_tokens(every, corpus, 1, 2), 0, 1) == [1.0, 1.0]


def test_each_batch_counts_the_target_tokens_of_every_process():
    rng = np.random.default_rng(0)
    tgt_len = rng.integers(1, 9, 80)  # sentences of 1-8 target tokens: shards differ
    offsets = np.concatenate([[0], np.cumsum(tgt_len)])
    corpus = Corpus(np.ones(offsets[-1]), offsets, np.ones(offsets[-1]), offsets)
    cfg = TrainConfig(max_tokens=24, max_seq_length=8, batch_size=6)
    ranks = [train.epoch_batches({"cfg": cfg, "train": corpus, "log": print},
                                 SimpleNamespace(process_index=r, num_processes=2), 0, False)
             for r in (0, 1)]  # fmt: skip
    (b0, _, totals), (b1, _, totals1) = ranks
    by_hand = [int(tgt_len[x].sum() + tgt_len[y].sum()) for x, y in zip(b0, b1, strict=True)]
    assert totals == totals1 == by_hand
    assert any(2 * tgt_len[x].sum() != t for x, t in zip(b0, totals))  # not one's count × 2
    one = train.epoch_batches(
        {"cfg": cfg, "train": corpus, "log": print},
        SimpleNamespace(process_index=0, num_processes=1),
        0,
        False,
    )
    assert one[2] == [int(tgt_len[b].sum()) for b in one[0]]
    assert sum(one[2]) == sum(totals) == tgt_len.sum()  # the whole epoch, counted once


class SummingProcesses(SimpleNamespace):
    """accelerator.reduce over `n` processes that all hold the same tensors as this one."""

    def reduce(self, t, how):
        return t * self.n if how == "sum" else t.clone()

    @property
    def num_processes(self):
        return self.n


def test_the_logged_tokens_per_second_count_every_processs_batches(monkeypatch):
    acc = SummingProcesses(device="cpu", n=2)
    meter = train.Meter(acc)
    meter.t0 = 100.0
    meter.add(torch.tensor(2.0), 10, all_tokens=25)  # this process 10, the other 15
    meter.commit()
    monkeypatch.setattr(train.time, "time", lambda: 105.0)
    logged = []
    bar = SimpleNamespace(set_postfix=lambda **k: logged.append(k), disable=False)
    scheduler = SimpleNamespace(get_last_lr=lambda: [1e-3])
    run = {"cfg": TrainConfig(log_with=None, output_dir="/nonexistent"), "log": print}
    monkeypatch.setattr(train, "write_metrics", lambda acc, record, run: logged.append(record))
    train.log_train(acc, bar, meter, scheduler, {"step": 1}, 0, run)
    assert logged[-1]["tok_s"] == 25 / 5  # not this process's 10 x 2 processes


def test_the_logged_train_loss_is_per_target_token_and_survives_a_mid_log_resume():
    acc = SummingProcesses(device="cpu", n=1)
    meter = train.Meter(acc)
    meter.add(torch.tensor(2.0), 10)
    meter.add(torch.tensor(4.0), 30)  # one step of two batches
    meter.commit()
    meter.add(torch.tensor(float("nan")), 50)  # a step skipped as non-finite: not counted
    meter.drop()
    saved = meter.state(acc)  # a checkpoint between the two halves of one log window
    meter.add(torch.tensor(1.0), 60)
    meter.commit()
    whole = (2 * 10 + 4 * 30 + 1 * 60) / 100  # 2.0; the mean of the three means would be 2.33
    assert meter.mean_loss(acc) == pytest.approx(whole)
    resumed = train.Meter(acc, saved)
    resumed.add(torch.tensor(1.0), 60)
    resumed.commit()
    assert resumed.mean_loss(acc) == pytest.approx(whole)
    # 3 processes with the same history: saved as each one's share, restored on each
    three = SummingProcesses(device="cpu", n=3)
    meter = train.Meter(three)
    meter.add(torch.tensor(2.0), 10)
    meter.add(torch.tensor(4.0), 30)
    meter.commit()
    resumed = train.Meter(three, meter.state(three))
    resumed.add(torch.tensor(1.0), 60)
    resumed.commit()
    assert resumed.mean_loss(three) == pytest.approx(whole)
    assert train.Meter(acc, {"loss": 9.0, "n": 3}).mean_loss(acc) == 0.0  # an older checkpoint
    # saved by 1 process at an epoch's end, resumed by 2 (each then trains 100 tokens at 1.0):
    # the 100 tokens at 4.0 before the checkpoint count once, not once per process
    one, two = SummingProcesses(device="cpu", n=1), SummingProcesses(device="cpu", n=2)
    meter = train.Meter(one)
    meter.add(torch.tensor(4.0), 100)
    meter.commit()
    resumed = train.Meter(two, meter.state(one))
    resumed.add(torch.tensor(1.0), 100)
    resumed.commit()
    assert resumed.mean_loss(two) == pytest.approx((4 * 100 + 1 * 200) / 300)


def test_a_log_window_across_an_epochs_end_loses_no_steps_loss(corpus, tmp_path, monkeypatch):
    """log_every 4 with epochs not a multiple of 4 steps long: each line averages the 4 steps
    before it, the end of one epoch and the start of the next (a meter rebuilt per epoch
    dropped the end)."""
    from accelerate.state import AcceleratorState, GradientState

    committed, logged = [], []

    class Recording(train.Meter):
        def commit(self):
            committed.append(self.pending_counted)
            super().commit()

        def mean_loss(self, accelerator):
            logged.append(self.counted)
            return super().mean_loss(accelerator)

    monkeypatch.setattr(train, "Meter", Recording)
    monkeypatch.chdir(ROOT)

    def main(out, *args):
        AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton
        try:
            train.main(args_for(corpus, out, "--log_every", 4, *args)[1:])
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()

    out = tmp_path / "run"
    main(out, "--epochs", 2)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first_epoch = next(r["step"] for r in records if "valid_loss" in r)
    assert first_epoch % 4, "the epoch ends on a log line: nothing to test"
    assert len(logged) == len(committed) // 4 >= 2
    assert logged == [sum(committed[i : i + 4]) for i in range(0, 4 * len(logged), 4)]
    # best/ says which validation chose it (the first of equals: a later one must beat it)
    chosen = max((r for r in records if "valid_bleu" in r), key=lambda r: r["valid_bleu"])
    assert json.loads((out / "best" / "best.json").read_text()) == chosen
    # stopped at the first epoch's end and resumed: the window spanning it logs the same loss
    main(tmp_path / "resumed", "--epochs", 1)
    main(tmp_path / "resumed", "--epochs", 2, "--resume")
    assert train_losses(tmp_path / "resumed") == train_losses(out)


@pytest.mark.parametrize(
    "metric, best, stops",
    [
        ("loss", [True, True, True, False, False], [False] * 4 + [True]),  # best loss 1.0
        ("bleu", [True, True, False, False], [False] * 3 + [True]),  # best BLEU 12.0
    ],
)
def test_best_and_early_stopping_follow_best_metric(monkeypatch, metric, best, stops):
    # loss and BLEU disagree from the third validation on; patience 2
    results = iter([(3.0, 10.0), (2.0, 12.0), (1.0, 11.0), (4.0, 9.0), (5.0, 13.0)])
    monkeypatch.setattr(
        train, "evaluate", lambda *_: dict(zip(("valid_loss", "valid_bleu"), next(results)))
    )
    monkeypatch.setattr(train, "write_metrics", lambda *_: None)
    saved = []
    monkeypatch.setattr(train, "save", lambda *a, best: saved.append(best is not None))
    cfg = TrainConfig(best_metric=metric, patience=2)
    run = {"cfg": cfg, "valid": object(), "log": lambda _: None}
    state = {"best": None, "bad_evals": 0, "step": 0}
    returned = []
    while not (returned and returned[-1]):
        returned.append(train.end_of_epoch(None, None, run, state, len(returned)))
    assert saved == best and returned == stops
    assert state["best"] == (-1.0 if metric == "loss" else 12.0)


def test_best_needs_a_finite_strictly_better_score(monkeypatch):
    # a NaN validation must not become best (nothing finite would beat it), nor an equal one
    losses = iter([math.nan, 2.0, 2.0, 1.0, 1.0, 1.0])
    monkeypatch.setattr(train, "evaluate", lambda *_: {"valid_loss": next(losses)})
    monkeypatch.setattr(train, "write_metrics", lambda *_: None)
    saved = []
    monkeypatch.setattr(train, "save", lambda *a, best: saved.append(best is not None))
    run = {"cfg": TrainConfig(best_metric="loss", patience=2), "valid": object(),
           "log": lambda _: None}  # fmt: skip
    state = {"best": None, "bad_evals": 0, "step": 0}
    stops = [train.end_of_epoch(None, None, run, state, epoch) for epoch in range(6)]
    assert saved == [False, True, False, True, False, False]
    assert stops == [False] * 5 + [True] and state["best"] == -1.0


def test_the_epoch_ends_validation_counts_in_the_training_time(monkeypatch):
    # saved with the checkpoint, a resume starts its clock from it: max_minutes and the
    # end-to-end speed must see the validation as an uninterrupted run does
    monkeypatch.setattr(train, "evaluate", lambda *_: {"valid_loss": 1.0})
    monkeypatch.setattr(train, "write_metrics", lambda *_: None)
    monkeypatch.setattr(train, "save", lambda *a, best: None)
    clock = iter([1000.0, 1030.0])  # validation took 30 s
    monkeypatch.setattr(train.time, "time", lambda: next(clock))
    state = {"best": None, "bad_evals": 0, "step": 5, "train_seconds": 60.0}
    run = {"cfg": TrainConfig(best_metric="loss"), "valid": object(), "log": lambda _: None}
    train.end_of_epoch(None, None, run, state, 0)
    assert state["train_seconds"] == 90.0


def test_a_resumed_run_that_a_limit_ended_has_nothing_to_do():
    state = {"step": 80, "epoch": 2, "train_seconds": 121.0, "bad_evals": 2}
    assert train.finished(TrainConfig(max_steps=80), state) == "already at max_steps (80)"
    assert train.finished(TrainConfig(epochs=2), state) == (
        "already trained 2 epochs (more with --epochs)"
    )  # it said "resumed ...: epoch 3" of 2, then "done"
    assert train.finished(TrainConfig(max_minutes=2.0, epochs=3), state) == (
        "already trained max_minutes (2.0)"
    )
    assert train.finished(TrainConfig(patience=2, epochs=3), state) == (
        "early stopping ended this run (patience 2)"
    )
    # each limit raised for the resume lets the run go on
    for raised in (dict(max_steps=90), dict(max_minutes=3.0), dict(patience=3), dict(epochs=3)):
        assert train.finished(TrainConfig(**{"epochs": 3, **raised}), state) is None


def test_each_process_decodes_its_share_and_all_take_the_main_processs_bleu(monkeypatch):
    # process 1 of 2 decodes sentences 1 and 3 of 5 and scores all five in their order; should
    # one process decode otherwise (a GPU kernel's nondeterminism), their best/ and patience
    # decisions, taken before collectives, must still agree: all take the main process's
    from contextlib import nullcontext

    import datasets

    src = [f"s{i}" for i in range(5)]
    decoded, scored = [], []

    def translate(model, tok, ids, lines, *args):
        decoded.append(lines)
        return [x.upper() for x in lines]

    monkeypatch.setattr(train, "translate_texts", translate)
    monkeypatch.setattr(train, "gather_object", lambda obj: [["S0", "S2", "S4"], *obj])
    monkeypatch.setattr(
        train.sacrebleu,
        "corpus_bleu",
        lambda h, refs: scored.append((h, refs)) or SimpleNamespace(score=1),
    )
    monkeypatch.setattr(train, "broadcast", lambda t: torch.full_like(t, 42.5))
    rank1 = SimpleNamespace(
        num_processes=2, process_index=1, device="cpu", distributed_type=None,
        autocast=nullcontext, unwrap_model=lambda m: m,
    )  # fmt: skip
    cfg = TrainConfig(valid_bleu_samples=5)
    texts = datasets.Dataset.from_dict({"src": src, "tgt": [f"t{i}" for i in range(5)]})
    run = {"cfg": cfg, "valid": (None, texts), "tokenizer": None, "ids": None}
    assert train.valid_bleu(None, rank1, run) == 42.5  # its own score would be 1
    assert decoded == [["s1", "s3"]]
    assert scored == [(["S0", "S1", "S2", "S3", "S4"], [[f"t{i}" for i in range(5)]])]


def test_validation_loss_is_per_target_token_over_every_batch_and_process(monkeypatch):
    # 7 pairs in 3+ batches, split between 2 processes with one process short of a batch: the
    # result must be the plain mean over all target tokens, each counted once
    rng = np.random.default_rng(1)
    t_len = [3, 9, 4, 12, 6, 5, 8]
    tgt = rng.integers(3, 20, sum(t_len))
    corpus = Corpus(rng.integers(3, 20, 35), np.arange(0, 36, 5), tgt, np.cumsum([0, *t_len]))
    ids = SpecialIds(pad=0, eos=1, start=2)
    cfg = TrainConfig(max_tokens=24, max_seq_length=16, valid_bleu_samples=0)
    torch.manual_seed(0)
    # dropout on, the model in training mode: validation must switch it off (and back on)
    model = Transformer(ModelConfig(20, 20, pad_id=0, d_model=16, n_heads=2, d_ff=32, n_layers=1,
                                    dropout=0.3))  # fmt: skip
    run = {"cfg": cfg, "ids": ids, "valid": (corpus, None)}
    batches = data_batches(corpus, cfg)
    assert len(batches) % 2 == 1  # the second process has one batch fewer, and runs a spare
    with torch.no_grad():
        whole = collate(corpus, np.arange(7), ids)
        model.eval()
        want = train.loss_fn(model(whole["src"], whole["tgt_in"]), whole["labels"], 0).item()
        model.train()

    class TwoProcesses(SimpleNamespace):
        """Each rank's evaluate() runs in turn; reduce() sums what both ranks passed."""

        def reduce(self, t, how):
            return t + other[1 - self.process_index] if how == "sum" else t

    other = [None, None]
    for rank in (0, 1):  # a first pass records each rank's sums for the other to add

        def record(t, how, r=rank):
            other[r] = t
            return t

        train.evaluate(model, SimpleNamespace(device="cpu", process_index=rank, num_processes=2,
                                              reduce=record), run)  # fmt: skip
    for rank in (0, 1):
        acc = TwoProcesses(device="cpu", process_index=rank, num_processes=2)
        assert train.evaluate(model, acc, run)["valid_loss"] == pytest.approx(want, rel=1e-5)
    one = SummingProcesses(device="cpu", n=1, process_index=0, num_processes=1)
    assert train.evaluate(model, one, run)["valid_loss"] == pytest.approx(want, rel=1e-5)
    assert model.training


def test_accumulated_batches_weigh_by_their_target_tokens(corpus, tmp_path, monkeypatch):
    # a step's loss is the mean over its target tokens: each batch's mean loss, weighed by its
    # share of the step's tokens (accelerate then divides by the 2 batches), goes to backward
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    seen = []  # per batch: [its mean loss, its target tokens, what went to backward]
    real_loss, real_backward = train.train_loss, Accelerator.backward

    def loss(*args):
        value = real_loss(*args)
        seen.append([value.item(), int(args[1]["n_tokens"])])
        return value

    def backward(self, value, **kwargs):
        seen[-1].append(value.item())
        return real_backward(self, value, **kwargs)

    monkeypatch.setattr(train, "train_loss", loss)
    monkeypatch.setattr(Accelerator, "backward", backward)
    monkeypatch.chdir(ROOT)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        train.main(args_for(corpus, tmp_path / "run", "--grad_accum_steps", 2, "--max_steps", 3,
                            "--valid_data", "null")[1:])  # fmt: skip
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert len(seen) == 6 and any(seen[i][1] != seen[i + 1][1] for i in (0, 2, 4))
    for (la, na, ba), (lb, nb, bb) in zip(seen[0::2], seen[1::2], strict=True):
        assert (ba + bb) / 2 == pytest.approx((la * na + lb * nb) / (na + nb), rel=1e-5)


def test_label_smoothed_loss_is_the_mixture_over_non_padding_tokens():
    # paper §5.4 as torch smooths: (1 - eps) NLL + eps mean_v(-log p_v), per non-padding token
    torch.manual_seed(0)
    logits, eps = torch.randn(2, 3, 7), 0.1
    labels = torch.tensor([[4, 2, 0], [1, 5, 6]])  # 0: padding
    logp = logits.log_softmax(-1)
    nll = -logp.gather(-1, labels[..., None]).squeeze(-1)
    want = ((1 - eps) * nll + eps * -logp.mean(-1))[labels != 0].mean()
    torch.testing.assert_close(train.loss_fn(logits, labels, 0, eps), want)
    batch = {"src": None, "tgt_in": None, "labels": labels}
    got = train.train_loss(lambda src, tgt_in: logits, batch, TrainConfig(label_smoothing=eps), 0)
    torch.testing.assert_close(got, want)
    assert train.loss_fn(logits, labels, 0) < want  # smoothing costs a confident model


def test_max_minutes_counts_training_seconds():
    acc = SimpleNamespace(num_processes=2, device="cpu", reduce=lambda t, how: t)
    cfg = TrainConfig(max_minutes=2, log_every=5)
    assert not train.out_of_time(acc, 10, cfg, 119.0)
    assert train.out_of_time(acc, 10, cfg, 121.0)
    assert not train.out_of_time(acc, 11, cfg, 121.0)  # processes decide at log steps only
    assert not train.out_of_time(acc, 10, TrainConfig(log_every=5), 1e9)  # no limit


@pytest.mark.parametrize("clip_norm", [1.0, 0.0])
def test_optimizer_step_clips_the_gradient_norm(clip_norm):
    layer = torch.nn.Linear(4, 4)
    before = [p.detach().clone() for p in layer.parameters()]
    (1000 * sum(p.sum() for p in layer.parameters())).backward()  # a gradient norm of 4,472
    acc = SimpleNamespace(clip_grad_norm_=torch.nn.utils.clip_grad_norm_, scaler=None)
    sgd = torch.optim.SGD(layer.parameters(), lr=1.0)  # the step is the (clipped) gradient
    assert train.optimizer_step(layer, sgd, acc, {"cfg": TrainConfig(clip_norm=clip_norm)})
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, layer.parameters())])
    if clip_norm:
        assert step.norm() == pytest.approx(1.0, rel=1e-5)
    else:  # 0: no clipping
        assert step.norm() == pytest.approx(1000 * 20**0.5, rel=1e-5)


def data_batches(corpus, cfg):
    from data import token_batches

    return token_batches(corpus.lengths(), cfg.max_tokens, cfg.batch_size, cfg.seed, 0, False)


@pytest.mark.parametrize("schedule", ["inverse_sqrt", "linear"])
def test_resume_with_another_learning_rate_goes_on_with_it(schedule):
    # a resumed scheduler restores the rate it was built with: the config's new one must win,
    # for the very next step too (the optimizer's restored group holds the old rate)
    def built(lr):
        opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=lr)
        if schedule == "linear":
            from transformers import get_scheduler

            return opt, get_scheduler("linear", opt, 4, 100)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: inverse_sqrt(s, 4))

    opt, sched = built(0.004)
    for _ in range(6):
        opt.step()
        sched.step()
    factor = [sched.lr_lambdas[0](s) for s in (6, 7)]
    opt2, sched2 = built(0.001)
    opt2.load_state_dict(opt.state_dict())  # as accelerate restores it
    sched2.load_state_dict(sched.state_dict())
    lines = []
    train.new_learning_rate(sched2, 0.001, 6, lines.append)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.001 * factor[0])  # step 7's rate
    assert sched2.get_last_lr() == pytest.approx([0.001 * factor[0]])
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.001 * factor[1])
    assert lines == ["learning_rate 0.001 (0.004 before the resume): the schedule goes on from "
                     "step 6 at the new rate"]  # fmt: skip
    # the same rate: nothing changes, nothing is said
    opt3, sched3 = built(0.004)
    opt3.load_state_dict(opt.state_dict())
    sched3.load_state_dict(sched.state_dict())
    train.new_learning_rate(sched3, 0.004, 6, lines.append)
    assert len(lines) == 1 and opt3.param_groups[0]["lr"] == pytest.approx(0.004 * factor[0])


def test_a_resume_logs_the_settings_it_changes(tmp_path):
    ckpt = tmp_path / "step-00000027"
    ckpt.mkdir()
    TrainConfig(dropout=0.1, label_smoothing=0.1, tokenizer={"train": "unigram"}).save(
        ckpt / "config.json"
    )
    logged = []
    same = TrainConfig(dropout=0.1, label_smoothing=0.1, tokenizer={"train": "unigram"})
    train.log_changed_settings(ckpt, same, logged.append)
    assert logged == []
    changed = dataclasses.replace(same, dropout=0.3, label_smoothing=0.2)
    train.log_changed_settings(ckpt, changed, logged.append)
    assert logged == [
        "resumed with settings other than step-00000027's: dropout 0.1 -> 0.3, "
        "label_smoothing 0.1 -> 0.2"
    ]
    train.log_changed_settings(None, changed, logged.append)  # a fresh start: nothing to say
    assert len(logged) == 1


def test_resume_with_another_max_steps_goes_on_with_its_schedule():
    # linear decay to 0 at step 10, resumed at 10 with max_steps 20: step 11's rate is that of
    # a 20-step schedule at step 10, not the old schedule's 0
    from transformers import get_scheduler

    def built(max_steps):
        opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=0.001)
        return opt, get_scheduler("linear", opt, 2, max_steps)

    opt, sched = built(10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.0
    opt2, sched2 = built(20)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    train.new_learning_rate(sched2, 0.001, 10, pytest.fail)  # the same rate: nothing said
    want = 0.001 * (20 - 10) / (20 - 2)
    assert opt2.param_groups[0]["lr"] == pytest.approx(want)


def test_wandb_gets_one_project_and_the_run_as_its_name(monkeypatch, tmp_path):
    # accelerate's project_name is TensorBoard's folder but wandb's project: not "tensorboard"
    assert train.tracker_names("tensorboard", tmp_path / "run") == (
        "tensorboard", {"tensorboard": {"purge_step": 0}},
    )  # fmt: skip
    # resumed at step 17: TensorBoard purges the interrupted run's points after it
    assert train.tracker_names("tensorboard", tmp_path / "run", 17) == (
        "tensorboard", {"tensorboard": {"purge_step": 18}},
    )  # fmt: skip
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    project, kwargs = train.tracker_names("wandb", tmp_path / "multi30k_bf16")
    assert project == "transformer-mt" and kwargs["wandb"] == {"name": "multi30k_bf16"}
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    monkeypatch.chdir(tmp_path)
    assert train.tracker_names("mlflow", Path(".")) == (
        "mine",
        {"wandb": {"name": tmp_path.name}, "mlflow": {"run_name": tmp_path.name},
         "tensorboard": {"purge_step": 0}},
    )  # fmt: skip
    # "all" holds TensorBoard too: it purges as well (it did not, and logged those steps twice)
    assert train.tracker_names("all", tmp_path, 17)[1]["tensorboard"] == {"purge_step": 18}


def test_fsdp_with_16_bit_compute_reduces_gradients_in_fp32(monkeypatch):
    # accelerate's own policy would average them in the compute dtype (bf16: 8 mantissa bits)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    plugin = train.fsdp_plugin(TrainConfig(mixed_precision="bf16"))
    policy = plugin.mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert train.fsdp_plugin(TrainConfig(mixed_precision="no")) is None  # fp32: nothing to add
    monkeypatch.setenv("FSDP_VERSION", "1")
    assert train.fsdp_plugin(TrainConfig(mixed_precision="bf16")) is None  # refused later
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert train.fsdp_plugin(TrainConfig(mixed_precision="bf16")) is None  # not an FSDP launch


def test_decoder_layers_sets_the_decoder_depth_alone():
    ids = SpecialIds(pad=0, eos=1, start=0)
    for decoder_layers, expected in [(None, 3), (1, 1)]:
        cfg = TrainConfig(num_layers=3, decoder_layers=decoder_layers)
        model = Transformer(train.model_config(cfg, range(40), ids))
        assert (len(model.encoder.layers), len(model.decoder.layers)) == (3, expected)


def test_rdrop_kl_is_the_symmetric_kl_over_real_tokens():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7)  # two passes over a batch of 2 sentences, 5 positions
    labels = torch.tensor([[3, 4, 5, 0, 0], [6, 2, 1, 4, 0]])  # pad 0: 7 real tokens
    p, q = (torch.distributions.Categorical(logits=x) for x in logits.chunk(2))
    kl = torch.distributions.kl_divergence(p, q) + torch.distributions.kl_divergence(q, p)
    # fairseq's scale: halved sum of both directions, over the tokens of both passes (2 x 7)
    expected = kl[labels != 0].sum() / 2 / 14
    assert torch.allclose(train.rdrop_kl(logits, labels, 0), expected)
    moved = logits.clone()
    moved[0, 3:] += 5 * torch.randn(2, 7)  # only padding positions (first sentence, first pass)
    assert torch.allclose(train.rdrop_kl(moved, labels, 0), expected)
    assert train.rdrop_kl(logits[:2].repeat(2, 1, 1), labels, 0) == 0  # identical passes


def test_rdrop_loss_is_cross_entropy_plus_alpha_kl_over_two_dropout_draws():
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(30, 30, pad_id=0, d_model=16, n_heads=2, d_ff=32, n_layers=2, dropout=0.3)
    )
    batch = {
        "src": torch.randint(1, 30, (3, 6)),
        "tgt_in": torch.randint(1, 30, (3, 5)),
        "labels": torch.randint(1, 30, (3, 5)),
    }
    cfg = TrainConfig(rdrop_alpha=5.0, label_smoothing=0.1)
    model.eval()  # no dropout: the two passes agree, so only the cross-entropy is left
    plain = train.loss_fn(model(batch["src"], batch["tgt_in"]), batch["labels"], 0, 0.1)
    assert torch.allclose(train.train_loss(model, batch, cfg, 0), plain, atol=1e-6)
    model.train()  # the two copies of each sentence get different dropout masks
    torch.manual_seed(1)
    got = train.train_loss(model, batch, cfg, 0)
    torch.manual_seed(1)
    logits = model(batch["src"].repeat(2, 1), batch["tgt_in"].repeat(2, 1))
    kl = train.rdrop_kl(logits, batch["labels"], 0)
    ce = train.loss_fn(logits, batch["labels"].repeat(2, 1), 0, 0.1)
    assert kl > 1e-3 and torch.allclose(got, ce + 5.0 * kl)


def test_rdrop_is_used_by_the_training_loop(corpus, tmp_path):
    out = tmp_path / "rdrop"
    run(args_for(corpus, out, "--max_steps", 4, "--log_every", 2, "--rdrop_alpha", 5))
    plain = tmp_path / "plain"
    run(args_for(corpus, plain, "--max_steps", 4, "--log_every", 2))
    losses, reference = train_losses(out), train_losses(plain)
    assert losses.keys() == reference.keys() == {2, 4}
    assert all(math.isfinite(v) for v in losses.values())
    assert losses != reference  # the KL term and the second dropout draw change the loss


def test_bf16_autocast_trains_with_fp32_weights(corpus, tmp_path):
    out, plain = tmp_path / "bf16", tmp_path / "fp32"
    proc = run(
        args_for(corpus, out, "--max_steps", 4, "--log_every", 2, "--mixed_precision", "bf16")
    )
    run(args_for(corpus, plain, "--max_steps", 4, "--log_every", 2, "--mixed_precision", "no"))
    assert "bf16 on cpu, 1 process" in proc.stdout + proc.stderr
    losses, reference = train_losses(out), train_losses(plain)
    assert losses.keys() == reference.keys() == {2, 4}
    assert losses != reference  # autocast really ran: bf16 rounding moves the loss ...
    for step, loss in losses.items():  # ... but only by bf16's precision
        assert math.isclose(loss, reference[step], rel_tol=0.02), (losses, reference)
    assert {t.dtype for t in weights(out).values()} == {torch.float32}


def test_linear_schedule_warms_up_then_reaches_zero_at_max_steps(corpus, tmp_path):
    out = tmp_path / "lin"
    extra = ("--lr_schedule", "linear", "--max_steps", 6, "--warmup_steps", 2, "--log_every", 1)
    run(args_for(corpus, out, "--learning_rate", 0.004, *extra))
    lrs = logged_lrs(out)
    # the LR the next step will use: 2 warmup steps to the peak, then 4 steps down to 0
    expected = {1: 0.002, 2: 0.004, 3: 0.003, 4: 0.002, 5: 0.001, 6: 0.0}
    assert lrs.keys() == expected.keys()
    for step, lr in expected.items():
        assert math.isclose(lrs[step], lr, abs_tol=1e-12), (step, lrs)


def test_cooldown_keeps_inverse_sqrt_then_falls_to_zero_at_max_steps(corpus, tmp_path):
    out = tmp_path / "cool"
    extra = ("--cooldown_steps", 2, "--max_steps", 6, "--warmup_steps", 2, "--log_every", 1)
    run(args_for(corpus, out, "--learning_rate", 0.004, *extra))
    lrs = logged_lrs(out)
    # warmup to 0.004 at step 2, 0.004 * sqrt(2 / step) up to step 4, then halves to 0 at 6
    at4 = 0.004 * math.sqrt(2 / 4)
    expected = {1: 0.002, 2: 0.004, 3: 0.004 * math.sqrt(2 / 3), 4: at4, 5: at4 / 2, 6: 0.0}
    assert lrs.keys() == expected.keys()
    for step, lr in expected.items():
        assert math.isclose(lrs[step], lr, abs_tol=1e-12), (step, lrs)


def pace_run(cfg):
    """The parts of train.py's run dict that check_pace reads, logging to a list."""
    lines = []
    return {"cfg": cfg, "log": lines.append, "lines": lines}


def warned(cfg, step, seconds, run_=None):
    """All check_pace has logged in run_ (a fresh one if None) after this call, the training
    state carried from call to call in run_ (a fresh run_: a run without earlier checks)."""
    run_ = run_ or pace_run(cfg)
    state = run_.setdefault("state", {})
    state.update(step=step, train_seconds=seconds)
    train.check_pace(run_, state)
    return run_["lines"]


def test_warns_at_most_three_times_when_max_minutes_would_cut_the_decay():
    cfg = TrainConfig(max_minutes=10, max_steps=5000, cooldown_steps=1000)
    run_ = pace_run(cfg)
    assert warned(cfg, 2, 29.0, run_) == []  # under 1/20 of 10 min
    logged = warned(cfg, 100, 60.0, run_)  # 100 steps/min
    assert len(logged) == 1
    # 1,000 steps fit in 10 minutes; 900 with the margin (950, rounded down to hundreds), and
    # the cooldown keeps its fifth
    assert "near step 1,000" in logged[0] and "--max_steps 900 --cooldown_steps 180" in logged[0]
    assert len(warned(cfg, 110, 119.0, run_)) == 1  # nothing new before 1/5
    # at 1/5 the pace since the first check (200 steps/min) counts: 300 + 8 * 200 = 1,900
    second = warned(cfg, 300, 120.0, run_)[1:]
    assert len(second) == 1 and "near step 1,900" in second[0] and "--max_steps 1800" in second[0]
    # at 1/2, 700 steps in 180 s since: 1,000 + 5 * 233 = 2,166
    third = warned(cfg, 1000, 300.0, run_)[2:]
    assert len(third) == 1 and "near step 2,166" in third[0] and "--max_steps 2000" in third[0]
    assert len(warned(cfg, 1500, 450.0, run_)) == 3  # three times at most
    # the second check finds the run fits at the faster pace since the first: quiet
    run_ = pace_run(cfg)
    assert len(warned(cfg, 100, 60.0, run_)) == 1  # 100 steps/min: 1,000 by 10 min
    assert len(warned(cfg, 800, 120.0, run_)) == 1  # 800 + 8 * 700 = 6,400 >= 5,000
    # resumed at step 850 with the same pace: the cooldown (from 720) can no longer fit
    run_ = pace_run(cfg)
    (late,) = warned(cfg, 850, 510.0, run_)
    assert late.endswith("too late to fit the decay by lowering max_steps")
    assert len(warned(cfg, 860, 516.0, run_)) == 1  # past all points: one check, not three
    # the second check takes the pace since the first only over a tenth of max_minutes or more
    run_ = pace_run(cfg)
    assert len(warned(cfg, 150, 90.0, run_)) == 1  # resumed between the two points
    # 30 s since: the run's 125 steps/min (200 since), 250 + 8 * 125
    assert "near step 1,250" in warned(cfg, 250, 120.0, run_)[1]
    run_ = pace_run(cfg)
    assert len(warned(cfg, 50, 30.0, run_)) == 1
    # 90 s since: 200 steps/min (the run's 175), 350 + 8 * 200
    assert "near step 1,950" in warned(cfg, 350, 120.0, run_)[1]
    # resumed past max_minutes: it stops at the next check anyway
    assert warned(cfg, 1000, 601.0) == []
    for fits in (
        TrainConfig(max_minutes=10, max_steps=900, cooldown_steps=100),  # 900 < 1,000: fits
        TrainConfig(max_minutes=10, max_steps=5000),  # inverse sqrt: max_steps sets no decay
        TrainConfig(max_steps=5000, cooldown_steps=1000),  # no time limit
    ):
        assert warned(fits, 100, 60.0) == [], fits
    (linear,) = warned(TrainConfig(max_minutes=10, max_steps=5000, lr_schedule="linear"), 100, 60.0)
    assert linear.endswith("--resume --max_steps 900")


def test_fit_steps_to_time_moves_max_steps_either_way_until_the_cooldown_begins():
    cfg = TrainConfig(max_minutes=10, max_steps=5000, cooldown_steps=1000, fit_steps_to_time=True)
    run_, state = pace_run(cfg), {"step": 100, "train_seconds": 60.0}
    train.check_pace(run_, state)  # 100 steps/min: 1,000 by 10 min, 900 with the margin
    assert (run_["cfg"].max_steps, run_["cfg"].cooldown_steps) == (900, 180)
    # saved for --resume, with the config's values it was fitted from
    assert state["plan"] == {"max_steps": 900, "cooldown_steps": 180, "config": [5000, 1000]}
    assert "max_steps 5,000 -> 900, cooldown_steps 1,000 -> 180" in run_["lines"][0]
    # at 1/5 the faster pace since the first check (200 steps/min): 300 + 8 * 200 = 1,900
    state.update(step=300, train_seconds=120.0)
    train.check_pace(run_, state)
    assert (run_["cfg"].max_steps, run_["cfg"].cooldown_steps) == (1800, 360)
    # resumed from a checkpoint written here (the state through its JSON, a new run dict): the
    # 1/5 check is not made again, and at 1/2 the pace since it counts, as without the stop
    resumed = pace_run(run_["cfg"])
    state = json.loads(json.dumps(state))
    state.update(step=310, train_seconds=123.0)
    train.check_pace(resumed, state)
    assert resumed["cfg"] is run_["cfg"] and resumed["lines"] == []
    run_["lines"].clear()
    run_ = resumed
    # at 1/2, 700 steps in 180 s since: 1,000 + 5 * 233 = 2,166, the cooldown still a fifth
    state.update(step=1000, train_seconds=300.0)
    train.check_pace(run_, state)
    assert (run_["cfg"].max_steps, run_["cfg"].cooldown_steps) == (2000, 400)
    state.update(step=1500, train_seconds=450.0)
    train.check_pace(run_, state)  # no check after 1/2
    assert run_["cfg"].max_steps == 2000 and len(run_["lines"]) == 1
    assert not any(line.startswith("warning") for line in run_["lines"])
    # a faster machine: above the config's max_steps (200 steps/min: 100 + 9.5 * 200 = 2,000)
    fast = dataclasses.replace(cfg, max_steps=500, cooldown_steps=100)
    (line,) = warned(fast, 100, 30.0)
    assert "max_steps 500 -> 1,900, cooldown_steps 100 -> 380" in line
    # resumed inside the cooldown (from step 800 of 1,000): 1,600 would fit, but the LR would
    # jump back up; nothing moves and nothing is said, since the run ends in time
    late = dataclasses.replace(cfg, max_steps=1000, cooldown_steps=200)
    run_, state = pace_run(late), {"step": 850, "train_seconds": 300.0}
    train.check_pace(run_, state)
    assert run_["cfg"] is late and "plan" not in state and run_["lines"] == []
    # too slow to fit a cooldown that begins after this step: the warning, max_steps kept
    run_ = pace_run(late)
    train.check_pace(run_, {"step": 700, "train_seconds": 480.0})  # 800 - 160 would be behind
    assert run_["cfg"] is late and run_["lines"][0].endswith("too late to fit the decay by "
                                                             "lowering max_steps")  # fmt: skip
    # no cooldown to fit (--cooldown_steps 0 on a recipe): nothing to check, as without it
    none = dataclasses.replace(cfg, cooldown_steps=0)
    run_ = pace_run(none)
    train.check_pace(run_, {"step": 100, "train_seconds": 60.0})
    assert run_["cfg"] is none and run_["lines"] == []
    # a fast machine whose epochs (1,234 steps in all) end before max_minutes: fitted to them
    run_ = pace_run(fast)
    train.check_pace(run_, {"step": 100, "train_seconds": 30.0}, 1234)
    assert (run_["cfg"].max_steps, run_["cfg"].cooldown_steps) == (1234, 246)
    assert "fit max_minutes (10) and epochs: max_steps 500 -> 1,234" in run_["lines"][0]


def test_a_fitted_cooldown_never_rounds_to_nothing():
    # a cooldown of 1 step in 100,000 fitted to 900 steps is still 1 step, not 0 (which would
    # silently turn it off)
    cfg = TrainConfig(max_minutes=10, max_steps=100_000, cooldown_steps=1, fit_steps_to_time=True)
    run_ = pace_run(cfg)
    train.check_pace(run_, {"step": 100, "train_seconds": 60.0})
    assert (run_["cfg"].max_steps, run_["cfg"].cooldown_steps) == (900, 1)


def test_fit_steps_to_time_says_when_it_can_fit_nothing():
    fitted = TrainConfig(fit_steps_to_time=True, max_minutes=86, max_steps=100, cooldown_steps=20)
    assert train.fit_steps_inactive(fitted) is None
    assert train.fit_steps_inactive(dataclasses.replace(fitted, fit_steps_to_time=False)) is None
    off = dataclasses.replace(fitted, max_minutes=None, cooldown_steps=0)
    assert train.fit_steps_inactive(off) == "it needs max_minutes and cooldown_steps"
    linear = dataclasses.replace(fitted, lr_schedule="linear", cooldown_steps=0, warmup_steps=9)
    assert "not lr_schedule linear's decay" in train.fit_steps_inactive(linear)


def test_a_resume_with_another_max_minutes_checks_the_pace_again():
    cfg = TrainConfig(max_minutes=10, max_steps=5000, cooldown_steps=1000, fit_steps_to_time=True)
    run_, state = pace_run(cfg), {"step": 100, "train_seconds": 60.0}
    for step, seconds in ((100, 60.0), (300, 120.0), (1000, 300.0)):  # all three checks
        state.update(step=step, train_seconds=seconds)
        train.check_pace(run_, state)
    assert run_["cfg"].max_steps == 2000 and len(run_["lines"]) == 3
    state = json.loads(json.dumps(state))  # through a checkpoint
    # the same budget: nothing more to check
    same = pace_run(run_["cfg"])
    train.check_pace(same, {**state, "step": 1010, "train_seconds": 303.0})
    assert same["lines"] == [] and same["cfg"] is run_["cfg"]
    # resumed with max_minutes 30: the checks made for 10 do not count. The last check is 3 s
    # back, so the whole run's pace counts, 200 steps/min: 1,010 + 200 * 24.95 = 6,000, 5,700
    # with the margin (before the checks were kept in the state, the resume refitted too)
    longer = pace_run(dataclasses.replace(run_["cfg"], max_minutes=30))
    train.check_pace(longer, {**state, "step": 1010, "train_seconds": 303.0})
    assert longer["cfg"].max_steps == 5700 and "max_steps 2,000 -> 5,700" in longer["lines"][0]


def stop_after_steps(monkeypatch, steps: list[int]):
    """A stop request (as Ctrl-C) after each step in `steps`, without touching the test
    process's signal handlers."""

    class Quiet(train.StopSignal):
        def __init__(self):
            self.requested = False

    real = train.after_step

    def after_step(model, accelerator, scheduler, run, state, *args):
        run["stop"].requested = state["step"] in steps
        return real(model, accelerator, scheduler, run, state, *args)

    monkeypatch.setattr(train, "StopSignal", Quiet)
    monkeypatch.setattr(train, "after_step", after_step)


def test_fit_steps_to_time_ends_the_cooldown_at_the_fitted_step_across_a_resume(
    corpus, tmp_path, monkeypatch, capsys
):
    """train.py as run: a clock of 40 steps a minute fits 300 of the config's 1,000 steps into
    max_minutes 10 at the first check, and the LR then reaches 0 at step 300, in one run and
    across a stop inside the cooldown, where the config's 1,000 steps would lift the LR back up
    and no check may move max_steps any more."""
    from accelerate.state import AcceleratorState, GradientState

    real, stop_at = train.check_pace, []

    def paced(run_, state, *args):
        state["train_seconds"] = state["step"] * 1.5  # this machine's clock would vary
        real(run_, state, *args)

    monkeypatch.setattr(train, "check_pace", paced)
    stop_after_steps(monkeypatch, stop_at)
    monkeypatch.setattr(train, "out_of_time", lambda *args: False)  # the real clock is slower
    monkeypatch.chdir(ROOT)
    lr = 0.004
    extra = ("--max_steps", 1000, "--cooldown_steps", 200, "--max_minutes", 10,
             "--log_every", 1, "--warmup_steps", 20, "--learning_rate", lr,
             "--fit_steps_to_time", "true", "--epochs", 1000)  # fmt: skip

    def main(out, *args):
        AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton
        try:
            train.main(args_for(corpus, out, *extra, *args)[1:])
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
        return capsys.readouterr().out

    def assert_schedule_fitted(out):
        lrs = logged_lrs(out)
        assert sorted(lrs) == list(range(1, 301))
        for step, got in lrs.items():  # warmup, inverse sqrt, then linear to 0 over 240-300
            assert math.isclose(got, lr * inverse_sqrt(step, 20, 60, 300), abs_tol=1e-12), step
        assert lrs[300] == 0.0 and lrs[270] > 0
        saved = json.loads((out / "config.json").read_text())
        assert (saved["max_steps"], saved["cooldown_steps"]) == (300, 60)

    one = main(tmp_path / "one")
    assert "max_steps 1,000 -> 300, cooldown_steps 200 -> 60 (fit_steps_to_time)" in one
    assert re.search(r"done: step 300\b", one)
    assert_schedule_fitted(tmp_path / "one")
    stop_at.append(265)  # inside the cooldown (from 240), where the config's plan differs
    assert "stopped by signal at step 265" in main(tmp_path / "two")
    stop_at.clear()
    second = main(tmp_path / "two", "--resume")
    assert "max_steps 300, cooldown_steps 60: as fitted to max_minutes before the resume" in second
    assert re.search(r"done: step 300\b", second)
    assert_schedule_fitted(tmp_path / "two")


def test_a_kill_once_a_best_checkpoint_is_published_leaves_best_up_to_date(
    corpus, tmp_path, monkeypatch
):
    """The step's trainer_state records its score as the best: once `last` names the step, a
    resume never copies it to best/ again, so best/ must hold it by then."""
    from accelerate.state import AcceleratorState, GradientState

    real = train.replace_dir

    def killed_after(tmp, final):
        real(tmp, final)
        if final.parent.name == "checkpoints":
            raise KeyboardInterrupt  # SIGKILL right after the step directory is in place

    monkeypatch.setattr(train, "replace_dir", killed_after)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            train.main(args_for(corpus, out, "--max_steps", 2, "--save_every", 100)[1:])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    (step,) = (out / "checkpoints").glob("step-*")
    state = json.loads((step / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["best"] is not None  # the first validation: the best
    assert (out / "best" / "model.safetensors").read_bytes() == (
        step / "model.safetensors"
    ).read_bytes()


def test_a_resume_inside_an_epoch_with_another_split_of_the_data_is_refused():
    # a Hub dataset's train_split or dataset_config picks other pairs; for files, read whole,
    # they name nothing; a key an older checkpoint did not record is not held against it
    one = SimpleNamespace(num_processes=1)
    for spec, refused in (("wmt/wmt14", True), ("data/train.{lang}", False)):
        cfg = TrainConfig(train_data=spec)
        first = {"batch_in_epoch": 0, "epoch": 0}
        train.check_same_batching({"cfg": cfg, "train_fwd": range(10)}, first, one)
        for change in ({"train_split": "validation"}, {"dataset_config": "fr-en"}):
            run = {"cfg": dataclasses.replace(cfg, **change), "train_fwd": range(10)}
            state = {"batch_in_epoch": 3, "epoch": 0, "batching": first["batching"]}
            if refused:
                with pytest.raises(
                    UserError, match="resumed inside epoch 1 with (train_split|dat)"
                ):
                    train.check_same_batching(run, state, one)
            else:
                train.check_same_batching(run, state, one)
            older = {k: v for k, v in first["batching"].items() if k not in change}
            train.check_same_batching(run, {**state, "batching": older}, one)


def test_a_resume_inside_an_epoch_with_other_batching_is_refused(corpus, tmp_path, monkeypatch):
    """Its batches would be cut anew: the ones left after the stop are not those the interrupted
    run had left, so some pairs would be skipped and others repeated."""
    from accelerate.state import AcceleratorState, GradientState

    stop_at = [3]
    stop_after_steps(monkeypatch, stop_at)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"

    def main(*args):
        AcceleratorState._reset_state(reset_partial_state=True)
        try:
            train.main(args_for(corpus, out, "--max_steps", 5, *args)[1:])
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()

    main()
    saved = json.loads((out / "last" / "trainer_state.json").read_text())
    assert saved["step"] == 3 and saved["batch_in_epoch"] == 3  # inside epoch 1
    stop_at.clear()  # no signal comes
    with pytest.raises(UserError) as e:
        main("--resume", "--max_tokens", 200)
    assert str(e.value).startswith("resumed inside epoch 1 with max_tokens 400 -> 200: ")
    assert json.loads((out / "config.json").read_text())["max_tokens"] == 400  # left as it was
    main("--resume")  # the run's own values: on to step 5
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 5


def test_a_resume_keeps_the_fitted_steps_unless_given_others():
    plan = {"max_steps": 300, "cooldown_steps": 60, "config": [1000, 200]}
    cfg = TrainConfig(max_minutes=10, max_steps=1000, cooldown_steps=200, fit_steps_to_time=True)
    logged, state = [], {"step": 265, "plan": dict(plan)}
    fitted = train.resume_plan(cfg, state, logged.append)
    assert (fitted.max_steps, fitted.cooldown_steps) == (300, 60) and state["plan"] == plan
    # --max_steps 2000 on the command line: the user's values, fitted anew from there
    given, state = dataclasses.replace(cfg, max_steps=2000), {"plan": dict(plan), "pace_checks": 3}
    assert train.resume_plan(given, state, logged.append) is given and "plan" not in state
    assert state["pace_checks"] == 0  # so the next log fits them, though all checks were made
    assert "max_steps 2,000, cooldown_steps 200: as given, not the 300 and 60" in logged[-1]
    # --max_steps null (and no cooldown): no step limit, said as such (it crashed the log line)
    unlimited = dataclasses.replace(cfg, max_steps=None, cooldown_steps=0)
    assert train.resume_plan(unlimited, {"plan": dict(plan)}, logged.append) is unlimited
    assert "max_steps null, cooldown_steps 0: as given" in logged.pop()
    # fitting turned off: the config's values, and the plan is not saved again
    off, state = dataclasses.replace(cfg, fit_steps_to_time=False), {"plan": dict(plan)}
    assert train.resume_plan(off, state, logged.append) is off and "plan" not in state
    assert len(logged) == 2


def test_a_run_that_max_minutes_stops_before_its_cooldown_says_so(corpus, tmp_path):
    out = tmp_path / "short"
    extra = ("--max_steps", 100000, "--cooldown_steps", 20000, "--max_minutes", 0.02)
    proc = run(args_for(corpus, out, "--log_every", 1, "--epochs", 1000, *extra))
    assert "before the learning rate reaches 0 at max_steps (100,000)" in proc.stdout
    done = re.search(r"done: step (\d+)", proc.stdout)
    assert done and int(done.group(1)) < 100000  # stopped by max_minutes, as the warning said


def test_optimizer_state_saved_unfused_resumes_fused_and_identical():
    # checkpoints written before AdamW was fused hold "fused": None in their param groups
    def params():
        torch.manual_seed(0)
        return torch.nn.Linear(4, 3)

    def steps(model, opt, n):
        for i in range(n):
            torch.manual_seed(i)
            model(torch.randn(5, 4)).square().sum().backward()
            opt.step()
            opt.zero_grad()

    cfg = TrainConfig(learning_rate=1e-2)
    old, ref = params(), params()
    old_opt = torch.optim.AdamW(
        old.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0
    )
    ref_opt = make_optimizer(ref, cfg, torch.device("cpu"))
    steps(old, old_opt, 3)
    steps(ref, ref_opt, 3)
    resumed = params()
    resumed.load_state_dict(old.state_dict())
    opt = make_optimizer(resumed, cfg, torch.device("cpu"))
    opt.load_state_dict(old_opt.state_dict())
    assert opt.param_groups[0]["fused"] is True
    steps(resumed, opt, 2)
    steps(ref, ref_opt, 2)
    for a, b in zip(resumed.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)  # same math, fused or not (to rounding)


def test_resume_takes_this_runs_weight_decay_and_refuses_other_groups():
    model = Transformer(ModelConfig(11, 11, pad_id=0, d_model=8, n_heads=2, d_ff=16, n_layers=1))

    def saved(weight_decay):
        opt = make_optimizer(model, TrainConfig(weight_decay=weight_decay), torch.device("cpu"))
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        return opt.state_dict()

    opt = make_optimizer(model, TrainConfig(weight_decay=0.2), torch.device("cpu"))
    opt.load_state_dict(saved(0.1))  # a changed value takes effect, as a changed dropout would
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    # switched on or off: the groups differ, so the saved state cannot map onto this run's
    with pytest.raises(UserError, match="AdamW parameter groups: 1 saved, 2 in this run"):
        opt.load_state_dict(saved(0.0))
    off = make_optimizer(model, TrainConfig(weight_decay=0.0), torch.device("cpu"))
    with pytest.raises(UserError, match="AdamW parameter groups: 2 saved, 1 in this run"):
        off.load_state_dict(saved(0.1))


def test_weight_decay_shrinks_matrices_but_not_layernorm_or_biases():
    # With zero gradients Adam's update is 0, so one step shows the decay alone: each weight
    # matrix and embedding times (1 - lr * wd), LayerNorm gains and all biases untouched.
    model = Transformer(ModelConfig(11, 11, pad_id=0, d_model=8, n_heads=2, d_ff=16, n_layers=1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer(
        model, TrainConfig(learning_rate=0.1, weight_decay=0.5), torch.device("cpu")
    )
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    kinds = set()
    for n, p in model.named_parameters():
        matrix = p.dim() >= 2
        kinds.add((matrix, "norm" in n))
        torch.testing.assert_close(p.detach(), before[n] * (0.95 if matrix else 1.0), msg=n)
    assert kinds == {(True, False), (False, True), (False, False)}  # all three kinds checked


def test_sigkill_then_resume_is_bitwise_identical(corpus, tmp_path):
    # dropout on, several epochs of ~10 steps, saves every 3 steps: resume must restore the
    # weights, optimizer, schedule, RNG, epoch, position in the epoch and the data order.
    # log_every 4 with save_every 3: most checkpoints fall between two log lines, so the loss
    # not yet logged must survive the kill too, and the moving average of the weights (the
    # weights compared are the average's).
    extra = ("--epochs", 3, "--save_every", 3, "--dropout", 0.2, "--log_every", 4)
    # a decaying schedule, restored from trainer_state.json (transformers' cosine scheduler)
    extra += ("--ema_decay", 0.5, "--lr_schedule", "cosine", "--max_steps", 25, "--warmup_steps", 3)
    run(args_for(corpus, tmp_path / "a", *extra))
    # the newest keep_last (5) checkpoints are kept, of more saved
    kept = [d.name for d in step_dirs(tmp_path / "a" / "checkpoints")]
    total = json.loads((tmp_path / "a" / "last" / "trainer_state.json").read_text())["step"]
    assert len(kept) == 5 and kept[-1] == f"step-{total:08d}" and total > 5 * 3

    b = tmp_path / "b"
    proc = subprocess.Popen(
        [sys.executable, *args_for(corpus, b, *extra)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed_after = wait_for_checkpoint(b, 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((b / "last" / "trainer_state.json").read_text())
    # read after the kill: a run that ended before it would leave nothing to resume
    assert killed_after <= state["step"] < total, "the kill came too late to test anything"
    resumed = run([*args_for(corpus, b, *extra), "--resume"])
    assert f"resumed from {b}/checkpoints/step-{state['step']:08d}" in resumed.stdout
    assert f"done: step {total}," in resumed.stdout and "nothing to do" not in resumed.stdout

    wa, wb = weights(tmp_path / "a"), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert train_losses(tmp_path / "a") == train_losses(b)
    assert logged_lrs(tmp_path / "a") == logged_lrs(b) and logged_lrs(b)[24] < logged_lrs(b)[4]


def test_init_from_starts_from_a_checkpoints_weights_and_tokenizer(corpus, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(args_for(corpus, a, "--max_steps", 4))
    # a config meant for another model, with a tokenizer of its own to train: init_from's win
    other = ("--model_dim", 64, "--hidden_dims", 128, "--num_heads", 4, "--dropout", 0.3,
             "--tokenizer", '{"train": "unigram", "vocab_size": 100}',
             "--ema_decay", 0.5)  # the moving average starts from a's weights too  # fmt: skip
    # one step at a learning rate too small to move a weight: the weights stay a's
    proc = run(args_for(corpus, b, *other, "--init_from", a / "last", "--max_steps", 1,
                        "--learning_rate", 1e-12, "--save_every", 1))  # fmt: skip
    assert "init_from" in proc.stdout and "model_dim 64 -> 32" in proc.stdout
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)
    assert (b / "last" / "tokenizer.json").read_bytes() == (
        a / "last" / "tokenizer.json"
    ).read_bytes()
    state = json.loads((b / "last" / "trainer_state.json").read_text())
    assert state["step"] == 1 and state["epoch"] == 0  # a new step count, not a's 4
    saved = json.loads((b / "config.json").read_text())
    assert (saved["model_dim"], saved["dropout"], saved["tokenizer"]) == (
        32,
        0.3,
        str(corpus / "tok"),
    )
    # killed before its first save and resumed without init_from: it starts from a again
    c = tmp_path / "c"
    c.mkdir()
    shutil.copy(b / "config.json", c / "config.json")  # what a run writes before training
    proc = run([*args_for(corpus, c, *other, "--max_steps", 1, "--learning_rate", 1e-12),
                "--resume"])  # fmt: skip
    assert "nothing to resume" in proc.stdout and f"init_from {a / 'last'}" in proc.stdout
    for k, w in weights(c).items():
        torch.testing.assert_close(w, wa[k], rtol=0, atol=1e-6)
    # a resume continues b from its own checkpoint, whose shape and tokenizer it keeps, even
    # with the checkpoint it started from gone, and with init_from left out
    shutil.rmtree(a)
    tokenizer = (b / "last" / "tokenizer.json").read_bytes()
    for step, init in ((2, ("--init_from", a / "last")), (3, ())):
        proc = run([*args_for(corpus, b, *other, *init, "--max_steps", step), "--resume"])
        assert "resumed from" in proc.stdout and "trained on train" not in proc.stdout
        assert json.loads((b / "last" / "trainer_state.json").read_text())["step"] == step
        assert (b / "last" / "tokenizer.json").read_bytes() == tokenizer


def test_init_from_a_run_with_a_tokenizer_trained_there_can_sample_segmentations(
    corpus, tmp_path, monkeypatch
):
    a, b = tmp_path / "a", tmp_path / "b"
    run(args_for(corpus, a, "--tokenizer", '{"train": "unigram", "vocab_size": 100}',
                 "--max_steps", 1))  # fmt: skip
    run(args_for(corpus, b, "--init_from", a, "--subword_alpha", 0.5, "--max_steps", 1))
    assert json.loads((b / "config.json").read_text())["tokenizer"]["train"] == "unigram"
    # data.py prepare fills the caches train.py will read: a's tokenizer, none trained anew
    monkeypatch.chdir(ROOT)
    cfg = config_from_argv(args_for(corpus, b, "--init_from", a, "--tokenizer",
                                    '{"train": "bpe", "vocab_size": 90}')[1:], "")[1]  # fmt: skip
    logged = []
    data.prepare(cfg, log=logged.append)
    assert not [line for line in logged if "bpe" in line] and "train: 400 pairs" in logged[0]
    # a checkpoint whose tokenizer was not trained in its run (here a directory) cannot
    c = tmp_path / "c"
    shutil.copytree(b / "best", c)
    saved = json.loads((c / "config.json").read_text())
    (c / "config.json").write_text(json.dumps({**saved, "tokenizer": str(corpus / "tok")}))
    with pytest.raises(UserError, match=rf"init_from {c}: subword_alpha needs a tokenizer"):
        train.main(args_for(corpus, tmp_path / "d", "--init_from", c, "--subword_alpha", 0.5)[1:])
    assert not (tmp_path / "d").exists()


def test_max_length_ratio_filters_the_training_pairs(corpus, tmp_path, monkeypatch, capsys):
    from accelerate.state import AcceleratorState, GradientState

    monkeypatch.chdir(ROOT)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        args = ("--max_steps", 1, "--valid_bleu_samples", 0, "--best_metric", "loss")
        train.main(args_for(corpus, tmp_path / "run", *args, "--max_length_ratio", 1.05)[1:])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    out = capsys.readouterr().out
    said = re.search(r"train: dropped 0 empty pairs, 0 pairs longer than 64 tokens and (\d+) "
                     r"pairs with one side over 1.05x the other's tokens; (\d+) of (\d+) remain",
                     out)  # fmt: skip
    assert said, out[-2000:]
    dropped, kept, total = map(int, said.groups())
    assert dropped > 0 and dropped + kept == total
    assert f"\n{kept} training pairs" in out  # what trains
    assert "valid: dropped" not in out  # validation pairs are never filtered for their ratio
    assert (
        "step size: batches of up to 400 padded tokens and 32 pairs, 1 a step (grad_accum_steps): "
        "up to 400 padded tokens a step" in out
    )


def test_processes_wait_an_hour_for_the_main_process_to_prepare_the_data(tmp_path):
    # NCCL's default of 10 minutes would end a first WMT14 launch while the main process still
    # tokenizes (the others wait at main_process_first's barrier)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator = train.make_accelerator(TrainConfig(), tmp_path)
        assert accelerator.init_handler.to_kwargs() == {"timeout": timedelta(hours=1)}
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def test_bf16_on_a_device_without_it_is_one_line(monkeypatch, tmp_path):
    def no_bf16(**kwargs):  # accelerate's check on a GPU before Ampere
        raise ValueError("bf16 mixed precision requires a supported device.")

    monkeypatch.setattr(train, "Accelerator", no_bf16)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    with pytest.raises(UserError) as e:  # train.main's argv, up to the Accelerator
        train.main(["--config", "configs/tiny.json", "--output_dir", str(out),
                    "--mixed_precision", "bf16"])  # fmt: skip
    assert not out.exists()  # the run directory it made is gone
    assert str(e.value) == (
        "mixed_precision bf16: bf16 mixed precision requires a supported device (GPUs before "
        "Ampere have no bf16): pass --mixed_precision no"
    )
    monkeypatch.setattr(train, "Accelerator", lambda **k: 1 / 0)  # anything else: as it was
    with pytest.raises(ZeroDivisionError):
        train.make_accelerator(TrainConfig(), tmp_path)
    # a GPU where torch emulates bf16 passes accelerate's check: refused here
    supported = {}

    def bf16_supported(including_emulation=True):
        supported["emulation counted"] = including_emulation
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported)
    gpu = SimpleNamespace(mixed_precision="bf16", device=torch.device("cuda"))
    monkeypatch.setattr(train, "Accelerator", lambda **k: gpu)
    with pytest.raises(UserError, match="this GPU runs bf16 emulated .* --mixed_precision no"):
        train.make_accelerator(TrainConfig(mixed_precision="bf16"), tmp_path)
    assert supported == {"emulation counted": False}
    for ok in (SimpleNamespace(mixed_precision="no", device=torch.device("cuda")),
               SimpleNamespace(mixed_precision="bf16", device=torch.device("cpu"))):  # fmt: skip
        monkeypatch.setattr(train, "Accelerator", lambda ok=ok, **k: ok)
        assert train.make_accelerator(TrainConfig(), tmp_path) is ok


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_validation_decodes_in_the_runs_precision(monkeypatch, precision):
    """encode/decode are not the forward accelerate wraps in autocast: valid_bleu wraps them."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from datasets import Dataset

    seen = []

    def fake_translate(model, tokenizer, ids, src, *args):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return list(src)  # copy the source: BLEU 100 against itself

    monkeypatch.setattr(train, "translate_texts", fake_translate)
    texts = Dataset.from_dict({"src": ["a b c d", "e f g h"], "tgt": ["a b c d", "e f g h"]})
    run = {"cfg": TrainConfig(valid_bleu_samples=2), "valid": (None, texts), "tokenizer": None,
           "ids": None}  # fmt: skip
    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton
    try:
        accelerator = Accelerator(cpu=True, mixed_precision=precision)
        assert train.valid_bleu(torch.nn.Linear(1, 1), accelerator, run) == pytest.approx(100)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert seen == [torch.bfloat16 if precision == "bf16" else False]


def test_a_second_sigterm_does_not_abort_the_save_a_second_ctrl_c_does():
    # a job system and the script that started the run (multi30k_pair.sh) may each send one
    import os
    import signal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = train.StopSignal()
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_sigterm_saves_and_exits_zero(corpus, tmp_path):
    out = tmp_path / "t"
    proc = subprocess.Popen(
        [sys.executable, *args_for(corpus, out, "--epochs", 1000, "--save_every", 2,
                                   "--log_every", 2)],
        cwd=ROOT,
        env={k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"},  # as a user's shell
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    wait_for_checkpoint(out, 2, proc)
    # the log reaches a pipe or file as it is written, line by line, not in blocks of 8 KB
    early = (
        os.read(proc.stdout.fileno(), 1 << 16)
        if select.select([proc.stdout], [], [], 30)[0]
        else b""
    )
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert b"epoch 1: step 2 " in early and early.endswith(b"\n") and len(early) < 8000, early
    assert proc.returncode == 0, stderr[-2000:]
    assert "stopped by signal" in stdout + stderr
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["step"] >= 2 and (out / "last" / "state").is_dir()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_a_finished_run_validates_its_last_step_waits_for_the_save(monkeypatch, sig):
    # resumed from a checkpoint saved at max_steps before the run's end validated it, fit()
    # validates now; a signal then waits for the save, as during training: the validation is
    # saved (a resume has nothing left to do) and fit() returns, for main() to exit 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def unhandled(signum, frame):  # in place of the defaults, which would end pytest
        raise AssertionError(f"{signal.Signals(signum).name} not handled")

    def evaluate(*_):
        os.kill(os.getpid(), sig)
        return {"valid_loss": 1.0}

    monkeypatch.setattr(train, "evaluate", evaluate)
    monkeypatch.setattr(train, "write_metrics", lambda *_: None)
    saved = []
    monkeypatch.setattr(train, "save", lambda acc, model, run, state, best: saved.append(state))
    logged = []
    run = {"cfg": TrainConfig(max_steps=80), "ids": None, "valid": object(), "log": logged.append}
    state = {"epoch": 2, "step": 80, "batch_in_epoch": 7, "best": None, "bad_evals": 0,
             "validated_step": 60}  # fmt: skip
    try:
        for s in handlers:
            signal.signal(s, unhandled)
        train.fit(None, None, None, None, run, state)
        assert run["stop"].requested
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert logged == ["already at max_steps (80); validating the last step",
                      "epoch 3: step 80 valid_loss 1.000 (best)"]  # fmt: skip
    assert [s["validated_step"] for s in saved] == [80]
    assert train.nothing_to_do(run["cfg"], saved[0])


@pytest.mark.parametrize("epochs", [3, 1])
def test_a_signal_during_an_epochs_validation_stops_once_it_is_saved(
    corpus, tmp_path, monkeypatch, capsys, epochs
):
    """SIGTERM while epoch 1 validates: its checkpoint is the stop's, and no step of epoch 2 is
    trained (the next vote would come after a step, with the next epoch's batches made first,
    spending a preemption's grace period); in the last epoch, the run ends as it would have."""
    from accelerate.state import AcceleratorState, GradientState

    validate = train.evaluate

    def evaluate(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return validate(*args)

    monkeypatch.setattr(train, "evaluate", evaluate)
    monkeypatch.chdir(ROOT)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton
    try:  # log_every 1000: no vote inside an epoch
        train.main(args_for(corpus, tmp_path, "--epochs", epochs, "--log_every", 1000)[1:])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    validated = [r["step"] for r in records if "valid_loss" in r]
    state = json.loads((tmp_path / "last" / "trainer_state.json").read_text())
    assert len(validated) == 1 and state["step"] == validated[0]
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 0)  # a resume starts epoch 2
    log = capsys.readouterr().out
    assert ("stopped by signal" in log) == (epochs > 1) and ("done: step" in log) == (epochs == 1)


FSDP = "configs/accelerate/fsdp_cpu.yaml"
DDP = "configs/accelerate/cpu_ddp.yaml"
# Strong weight decay, so that a process that decayed LayerNorm gains (AdamW's no-decay param group
# lost in sharding) would end with other weights. The checkpoints hold a moving average of the
# weights (each rank keeps its shards' under FSDP), compared with one process's and resumed.
SIX_STEPS = (
    "--dropout", 0, "--max_steps", 6, "--log_every", 1, "--save_every", 3, "--weight_decay", 20,
    "--ema_decay", 0.5,
)  # fmt: skip


def test_a_log_file_gets_a_line_per_log_step_and_no_progress_bar(corpus, tmp_path):
    # tqdm's carriage-return redraws made a log file of 52 KB for 392 steps, and the bar is
    # where the loss was shown: without a terminal, lines take its place (fairseq's "simple")
    proc = run(args_for(corpus, tmp_path / "run", "--max_steps", 4, "--log_every", 2))
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr[-2000:]
    logged = re.findall(r"^epoch 1: step (\d+) train_loss [\d.]+ lr \S+ tok_s \d+$",
                        proc.stdout, re.M)  # fmt: skip
    assert logged == ["2", "4"]
    # on a terminal, the bar counts to max_steps when that ends the run first
    acc = SimpleNamespace(is_local_main_process=True)
    cfg = TrainConfig(max_steps=5, epochs=3)
    bar = train.epoch_bar(acc, 0, {"cfg": cfg}, {"step": 3}, steps=100, done=3)
    assert (bar.total, bar.n) == (5, 3)
    bar.close()


SAMPLED = ("--tokenizer", '{"train": "unigram", "vocab_size": 150}', "--subword_alpha", 0.3)


def test_subword_sampling_resume_trains_on_the_same_segmentations(corpus, tmp_path):
    out, extra = tmp_path / "run", (*SAMPLED, "--epochs", 2, "--log_every", 1)
    first = run(args_for(corpus, out, *extra, "--max_steps", 3))  # stops inside epoch 1
    assert "train, epoch 1: segmentations sampled" in first.stdout + first.stderr
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 0 and state["batch_in_epoch"] == 3
    epoch1 = (out / "subword" / "epoch-0001.npz").read_bytes()

    resumed = run([*args_for(corpus, out, *extra), "--resume"])
    log = resumed.stdout + resumed.stderr
    assert "resumed from" in log and "epoch 1: segmentations sampled" not in log  # reused
    assert "train, epoch 2: segmentations sampled" in log
    # epoch 1's file stays while the checkpoint inside epoch 1 is kept (a resume may go back)
    files = sorted(f.name for f in (out / "subword").iterdir())
    assert files == ["epoch-0001.npz", "epoch-0002.npz"]
    assert (out / "subword" / "epoch-0001.npz").read_bytes() == epoch1
    assert (out / "subword" / "epoch-0002.npz").read_bytes() != epoch1  # a new sample

    # a fresh run there (its checkpoints deleted, as train.py asks) samples anew
    shutil.rmtree(out / "checkpoints")
    shutil.rmtree(out / "best")
    fresh = run(args_for(corpus, out, *extra, "--max_steps", 1))
    assert "train, epoch 1: segmentations sampled" in fresh.stdout + fresh.stderr


def test_subword_sampling_two_processes_agree(corpus, tmp_path):
    # Each process sampling for itself would give each its own batches (and a hang at the end
    # of the epoch, when one runs out first); two epochs cross the boundary. With
    # fit_steps_to_time every log step also broadcasts the main process's clock (the run ends by
    # epochs, long before max_minutes).
    out = tmp_path / "run"
    fit = ("--fit_steps_to_time", "true", "--max_minutes", 60, "--max_steps", 1000,
           "--cooldown_steps", 200)  # fmt: skip
    run(args_for(corpus, out, *SAMPLED, *fit, "--epochs", 2, "--log_every", 1), launch=DDP)
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == len(train_losses(out)) > 0


def test_bidirectional_epochs_train_on_both_ways_then_on_the_source_side_only():
    fwd = Corpus(np.arange(60, dtype=np.int32), np.arange(0, 61, 5), -np.arange(60, dtype=np.int32),
                 np.arange(0, 61, 5))  # fmt: skip
    cfg = TrainConfig(tokenizer={"train": "unigram"}, bidirectional_epochs=2, epochs=4,
                      max_tokens=10, max_seq_length=5, batch_size=2)  # fmt: skip
    run = {"cfg": cfg, "train": fwd, "train_fwd": fwd}
    one_process = SimpleNamespace(process_index=0, num_processes=1)
    pairs, sources = [], []
    for epoch in range(4):
        batches = train.epoch_batches(run, one_process, epoch, False)[0]
        pairs.append(sorted(np.concatenate(batches).tolist()))
        sources.append(sorted(int(run["train"].pair(i)[0][0]) for i in pairs[-1]))
        if epoch == 1:
            # where `epochs` ends the run, from this epoch's 12 steps: 12 + 6 + 6 more
            assert train.epochs_end(run, {"step": 12, "batch_in_epoch": 0}, 1, 12) == 36
    assert pairs == [list(range(24))] * 2 + [list(range(12))] * 2
    forward = list(range(0, 60, 5))  # each pair's first source token
    assert sources == [sorted(forward + [-t for t in forward])] * 2 + [forward] * 2
    assert run["train"] is fwd  # the both-ways copy is let go
    # without bidirectional_epochs: this epoch's steps times the epochs left
    run["cfg"] = dataclasses.replace(cfg, bidirectional_epochs=0)
    assert train.epochs_end(run, {"step": 30, "batch_in_epoch": 2}, 1, 6) == 30 + 4 + 2 * 6


def test_bidirectional_epochs_double_the_first_epochs(corpus, tmp_path):
    out = tmp_path / "run"
    trained = ("--tokenizer", '{"train": "unigram", "vocab_size": 150}')
    proc = run(args_for(corpus, out, *trained, "--bidirectional_epochs", 1, "--epochs", 3))
    found = re.search(r"train: ([\d,]+) pairs, both ways \(([\d,]+)\) in the first 1 epoch,",
                      proc.stdout + proc.stderr)  # fmt: skip
    assert found and 2 * int(found[1]) == int(found[2]) > 700
    lines = (out / "metrics.jsonl").read_text().splitlines()
    ends = [r["step"] for r in map(json.loads, lines) if "valid_loss" in r]
    assert len(ends) == 3
    per_epoch = [ends[0], ends[1] - ends[0], ends[2] - ends[1]]
    # both ways: twice the pairs, about twice the steps (token batches vary a little by epoch)
    assert 1.7 < per_epoch[0] / per_epoch[1] < 2.3 and 0.8 < per_epoch[1] / per_epoch[2] < 1.25


class Process:
    """What sampled_train needs of accelerate's Accelerator, as one of several processes."""

    num_processes = 1  # makes any_process local; the two-process test covers the collective

    def __init__(self, main: bool):
        self.is_main_process = main


def test_sampled_train_keeps_what_a_resume_needs(tmp_path, monkeypatch):
    cfg = TrainConfig(tokenizer={"train": "unigram"}, subword_alpha=0.5, output_dir=str(tmp_path),
                      max_length_ratio=1.7)  # fmt: skip
    logged = []
    run = {"cfg": cfg, "log": logged.append, "train_text": None, "tokenizer": None}
    sample = Corpus(*(np.array(a, dtype) for a, dtype in (
        ([5, 2, 6, 7, 2], np.int32), ([0, 2, 5], np.int64),
        ([8, 2, 9, 2], np.int32), ([0, 2, 4], np.int64),
    )))  # fmt: skip
    calls = []
    monkeypatch.setattr(train, "sample_segmentations", lambda *a: calls.append(a) or sample)
    # Another process never samples: it reads the main process's file.
    folder = tmp_path / "subword"
    folder.mkdir()
    sample.save(folder / "epoch-0003.npz")
    assert np.array_equal(train.sampled_train(run, Process(False), 2, True).src, sample.src)
    assert calls == [] and logged == []
    # The main process samples a missing epoch and keeps the files of epochs that a kept
    # checkpoint lies inside (epoch 2 here; a checkpoint at an epoch's start needs none).
    for step, epoch, batch in ((10, 1, 4), (20, 2, 0)):
        ckpt = tmp_path / "checkpoints" / f"step-{step:08d}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text(
            json.dumps({"epoch": epoch, "batch_in_epoch": batch})
        )
    for name in ("epoch-0001.npz", "epoch-0002.npz", "epoch-0004.npz.tmp"):
        shutil.copy(folder / "epoch-0003.npz", folder / name)
    got = train.sampled_train(run, Process(True), 4, False)
    assert len(calls) == 1 and np.array_equal(got.tgt_off, sample.tgt_off)
    assert calls[0][-1] == 1.7  # sampled pairs are filtered as the tokenized ones are
    assert sorted(f.name for f in folder.iterdir()) == ["epoch-0002.npz", "epoch-0005.npz"]
    assert logged == []
    # Resumed inside an epoch whose samples are gone: sampled anew, with a warning.
    train.sampled_train(run, Process(True), 6, True)
    assert len(calls) == 2 and "warning: " in logged[0] and "epoch 7 is sampled anew" in logged[0]

    # A failure is one clear error (on every process: any_process is a collective).
    def fail(*a):
        raise UserError("train, epoch 9: no usable sentence pairs")

    monkeypatch.setattr(train, "sample_segmentations", fail)
    with pytest.raises(UserError, match="epoch 9: no usable sentence pairs"):
        train.sampled_train(run, Process(True), 8, False)


def test_keep_freed_memory_leaves_other_devices_alone():
    """Only CPU memory is glibc's; on GPUs torch's caching allocator keeps it already."""
    import cpu_memory

    assert cpu_memory.keep_freed_memory("meta") is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_keeps_a_freed_buffer_resident():
    """Freeing a 64 MB tensor gives its pages back to the OS by default, not after
    keep_freed_memory(): the next step reuses them without page faults."""
    code = (
        "import os, sys, torch, cpu_memory\n"
        "if sys.argv[1] == 'keep': assert cpu_memory.keep_freed_memory()\n"
        "page = os.sysconf('SC_PAGE_SIZE')\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * page\n"
        "x = torch.ones(16 * 2**20)\n"  # 64 MB, every page touched
        "before = rss(); del x; print(before - rss())\n"
    )
    mine = ("LD_PRELOAD", "GLIBC_TUNABLES")  # glibc's own malloc, with its defaults
    env = {k: v for k, v in ENV.items() if k not in mine and not k.startswith("MALLOC_")}
    freed = {}
    for mode in ("default", "keep"):
        proc = subprocess.run(
            [sys.executable, "-c", code, mode], cwd=ROOT, env=env,
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        freed[mode] = int(proc.stdout.split()[-1])
    assert freed["default"] > 48 * 2**20 and freed["keep"] < 8 * 2**20, freed


def test_ema_checkpoints_hold_the_average_of_the_trained_weights(corpus, tmp_path):
    # every step saved: state/ holds the trained weights of step n (accelerate's file), the
    # checkpoint's model the average, which must follow the recurrence from step n-1 to n
    out = tmp_path / "run"
    decay = 0.2  # the ramp (1 + n) / (10 + n) gives 0.18 at the first update, then 0.2
    run(args_for(corpus, out, *SIX_STEPS, "--save_every", 1, "--keep_last", 10, "--ema_decay",
                 decay))  # fmt: skip
    steps = sorted((out / "checkpoints").iterdir())
    assert len(steps) == 6
    averaged = [load_file(s / "model.safetensors") for s in steps]
    trained = [load_file(s / "state" / "model.safetensors") for s in steps]
    assert averaged[0].keys() <= trained[0].keys()
    for n in range(1, 6):  # update n + 1
        d = min(decay, (2 + n) / (11 + n))
        for k in averaged[n]:
            torch.testing.assert_close(
                averaged[n][k], d * averaged[n - 1][k] + (1 - d) * trained[n][k], msg=k
            )
    k = "encoder.layers.0.ffn.fc1.weight"
    assert not torch.allclose(averaged[5][k], trained[5][k])  # not the trained weights


def test_ema_is_what_validation_sees_and_the_trained_weights_come_back(monkeypatch):
    from ema import EMA

    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.9)
    with torch.no_grad():
        model.weight.add_(1.0)  # trained on: now the average is the older weights
    seen = {}

    def evaluate(m, accelerator, run):
        seen["weight"] = m.weight.detach().clone()
        return {"valid_loss": 1.0}

    monkeypatch.setattr(train, "evaluate", evaluate)
    monkeypatch.setattr(train, "write_metrics", lambda *a: None)
    monkeypatch.setattr(train, "save", lambda *a, **k: None)
    run = {"cfg": TrainConfig(best_metric="loss"), "valid": True, "ema": ema, "log": print}
    trained = model.weight.detach().clone()
    state = {"best": None, "bad_evals": 0, "step": 1}
    train.end_of_epoch(model, None, run, state, 0)
    assert torch.equal(seen["weight"], ema.shadow[0])
    assert torch.equal(model.weight, trained) and not torch.equal(trained, ema.shadow[0])
