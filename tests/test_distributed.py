"""Several processes: FSDP and DDP on CPU match one process, shard, resume; and what a resume
may change.

Multi-process tests launch `accelerate launch` on loopback with a timeout, so a hang fails.
"""

import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

import train
from config import TrainConfig, UserError
from helpers import ROOT, write_corpus
from test_train import DDP, ENV, FSDP, SIX_STEPS, args_for, run, train_losses, weights


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("train"), 3, 400, 16, 150)  # as test_train.py's


def probe(launch, tmp_path):
    run(["tests/scripts/fsdp_probe.py", str(tmp_path / "probe")], launch=launch, timeout=120)
    return [json.loads((tmp_path / f"probe.rank{r}.json").read_text()) for r in (0, 1)]


def test_fsdp_on_cpu_really_shards(tmp_path):
    ranks = probe(FSDP, tmp_path)
    for r in ranks:
        assert r["world"] == 2 and r["distributed_type"] == "DistributedType.FSDP"
        assert r["type"].startswith("FSDP")  # fully_shard swaps in an FSDP subclass
        assert abs(r["local"] - r["total"] / 2) <= 0.01 * r["total"], r
    assert sum(r["local"] for r in ranks) == ranks[0]["total"]


@pytest.fixture(scope="module")
def single_process_run(corpus, tmp_path_factory):
    """The reference: 1 process accumulating 2 batches per step = 2 processes x 1 batch."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run(args_for(corpus, out, *SIX_STEPS, "--grad_accum_steps", 2))
    return out


@pytest.fixture(scope="module")
def fsdp_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "run"
    run(args_for(corpus, out, *SIX_STEPS), launch=FSDP)
    return out


def assert_same_losses(got_run, ref_run):
    ref, got = train_losses(ref_run), train_losses(got_run)
    assert sorted(got) == sorted(ref) == list(range(1, 7))
    for step in ref:
        assert abs(got[step] - ref[step]) <= 1e-4 * abs(ref[step]), (step, got[step], ref[step])
    # the same batches trained: the same target tokens counted (exact over processes, not this
    # process's count times the processes)
    count = [json.loads((r / "last" / "trainer_state.json").read_text())["target_tokens"]
             for r in (got_run, ref_run)]  # fmt: skip
    assert count[0] == count[1] > 0


def test_fsdp_matches_one_process(single_process_run, fsdp_run):
    assert_same_losses(fsdp_run, single_process_run)
    # validation too, where each of the 2 processes decoded half the BLEU sample (with no
    # collective between its decoding steps: a hang would fail the run)
    got, ref = ([r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                 if "valid_bleu" in r] for run in (fsdp_run, single_process_run))  # fmt: skip
    assert len(got) == len(ref) == 1 and got[0]["valid_bleu"] == ref[0]["valid_bleu"]
    assert got[0]["valid_loss"] == pytest.approx(ref[0]["valid_loss"], rel=1e-4)
    # and the same weights: LayerNorm gains and biases not decayed in the shards either (the key
    # biases get no gradient, softmax being shift-invariant: Adam steps them by rounding noise)
    ws, wf = weights(single_process_run), weights(fsdp_run)
    for k in ws:
        atol = 1e-3 if k.endswith("k_proj.bias") else 1e-6
        torch.testing.assert_close(wf[k], ws[k], rtol=1e-5, atol=atol, msg=k)


def test_fsdp_validates_a_sample_smaller_than_the_processes(corpus, tmp_path):
    # process 1 decodes no sentence: its weights are gathered all the same, or process 0's
    # first decoding step would wait for it forever
    out = tmp_path / "run"
    run(
        args_for(corpus, out, "--max_steps", 2, "--valid_bleu_samples", 1), launch=FSDP, timeout=120
    )
    assert "valid_bleu" in (out / "metrics.jsonl").read_text()


def test_the_first_process_of_each_machine_prepares_the_data_before_the_others_there(
    monkeypatch,
):
    """2 machines of 2 processes, as threads going first as accelerate's PartialState makes
    processes go first (the barrier is the four threads'): the main process prepares the data
    alone (the others reuse its tokenizer), then on the other machine, whose cache is its own,
    its first process fills it before the other process there reads it."""
    from accelerate.state import PartialState

    barrier, here, events = threading.Barrier(4, timeout=10), threading.local(), []

    class Process:
        main_process_first = PartialState.main_process_first
        local_main_process_first = PartialState.local_main_process_first
        _goes_first = PartialState._goes_first

        def __init__(self, rank):
            self.is_main_process, self.is_local_main_process = rank == 0, rank % 2 == 0
            self.wait_for_everyone, self.print = barrier.wait, lambda *_: None

    def load_text(*_):  # setup()'s first data step
        events.append((here.rank, "starts"))

    def tokenize(*_, **kwargs):  # and its last: a process alongside would start meanwhile
        time.sleep(0.05)
        events.append((here.rank, "ends"))

    tok = SimpleNamespace(pad_token_id=0, eos_token_id=1, bos_token_id=None)
    monkeypatch.setattr(train, "load_text", load_text)
    monkeypatch.setattr(train, "load_tokenizer", lambda *_, **kwargs: tok)
    monkeypatch.setattr(train, "check_targets_hold_eos", lambda *_: None)
    monkeypatch.setattr(train, "tokenize", tokenize)
    monkeypatch.setattr(train, "model_config", lambda *_: None)

    def process(rank):
        here.rank = rank
        train.setup(TrainConfig(valid_data=None), Process(rank))

    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(process, rank) for rank in range(4)]:
            done.result()  # a thread's error, e.g. a barrier that timed out
    at = {event: i for i, event in enumerate(events)}
    assert len(at) == 8
    assert all(at[(0, "ends")] < at[(rank, "starts")] for rank in (1, 2, 3))  # the main first
    assert at[(2, "ends")] < at[(3, "starts")]  # machine 2: ranks 2 and 3, 2 first


def test_resume_refuses_weight_decay_switched_off(corpus, tmp_path, single_process_run):
    # checked before loading the state, the same on every backend (FSDP's loader fails earlier
    # than AdamW's own check, with a traceback)
    out = tmp_path / "run"
    shutil.copytree(single_process_run, out)
    args = [*args_for(corpus, out, *SIX_STEPS, "--grad_accum_steps", 2), "--weight_decay", "0"]
    proc = subprocess.run(
        [sys.executable, *args, "--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "saved with weight_decay 20, this run has 0" in proc.stderr.strip().splitlines()[-1]


def test_resume_names_the_model_settings_it_cannot_change(corpus, tmp_path, single_process_run):
    # load_state_dict's own error names tensors, cut to its first line, and the advice to
    # delete the checkpoint as unreadable was wrong: it was fine
    out = tmp_path / "run"
    shutil.copytree(single_process_run, out)
    before = (out / "config.json").read_text()
    args = [*args_for(corpus, out, *SIX_STEPS, "--grad_accum_steps", 2), "--hidden_dims", "48",
            "--num_layers", "2", "--resume"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "with hidden_dims 64 -> 48, num_layers 1 -> 2, decoder_layers 1 -> 2: a resume" in last
    assert "tokeniz" not in proc.stdout + proc.stderr  # said before the data is prepared
    assert (out / "config.json").read_text() == before
    # decoder_layers null is num_layers: the same model, said either way
    ckpt = out / "last"
    same = {"num_layers": 2, "decoder_layers": None}
    (ckpt / "config.json").write_text(json.dumps(same))
    train.check_same_model(ckpt, TrainConfig(num_layers=2, decoder_layers=2))
    (ckpt / "config.json").write_text(json.dumps({**same, "decoder_layers": 2}))
    train.check_same_model(ckpt, TrainConfig(num_layers=2))


def test_resume_refuses_another_tokenizer(corpus, tmp_path, single_process_run):
    # the embeddings' rows are the checkpoint tokenizer's ids: another tokenizer of the same
    # size would load, and the run would go on training on ids that stand for other pieces
    out = tmp_path / "run"
    shutil.copytree(single_process_run, out)
    other = write_corpus(tmp_path / "other", 5, 400, 16, 150) / "tok"
    args = [*args_for(corpus, out, *SIX_STEPS, "--grad_accum_steps", 2), "--max_steps", "9",
            "--tokenizer", str(other), "--resume"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f'resumed with tokenizer "{corpus / "tok"}" -> "{other}": a resume' in proc.stderr
    assert "tokeniz" not in proc.stdout  # said before the data is prepared


def test_a_resume_with_another_best_metric_starts_the_best_again(
    corpus, tmp_path, single_process_run
):
    # the saved best was a BLEU; compared with -loss it would never be beaten again, and
    # patience would stop the run at its next validation
    out = tmp_path / "run"
    shutil.copytree(single_process_run, out, symlinks=True)
    # one validation without improvement already: patience 1 would end the run at once
    state_file = out / "last" / "trainer_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "bad_evals": 1}))
    args = args_for(corpus, out, *SIX_STEPS, "--grad_accum_steps", 2, "--max_steps", 9,
                    "--best_metric", "loss", "--patience", 1, "--resume")  # fmt: skip
    proc = run(args)
    assert "best_metric bleu -> loss: the best so far and the patience count start" in proc.stdout
    assert "early stopping" not in proc.stdout
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 9


def test_resuming_a_finished_run_changes_nothing(corpus, tmp_path, single_process_run):
    out = tmp_path / "run"
    shutil.copytree(single_process_run, out, symlinks=True)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = run([*args_for(corpus, out, *SIX_STEPS, "--grad_accum_steps", 2),
                "--log_with", "tensorboard", "--resume"])  # fmt: skip
    assert "already at max_steps (6); nothing to do" in proc.stdout + proc.stderr
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    changed = [p for p in after if before.get(p) != after[p]]
    # only the run's config.json is written again; no step trained, no checkpoint or metric, no
    # TensorBoard log
    assert changed == [out / "config.json"]
    assert (out / "last").resolve() == out / "checkpoints" / "step-00000006"


def test_a_checkpoint_with_non_finite_weights_is_not_kept(tmp_path, monkeypatch):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    logged = []
    acc = SimpleNamespace(
        is_main_process=True, num_processes=1, wait_for_everyone=lambda: None,
        get_state_dict=lambda model: {"w": torch.tensor([1.0, float("nan")])},
    )  # fmt: skip
    train.save(acc, None, {"cfg": TrainConfig(output_dir=str(out)), "log": logged.append},
               {"step": 7}, best={"step": 7})  # fmt: skip
    assert logged == ["step 7: weights are not finite, checkpoint not kept"]
    assert list(out.rglob("*")) == [out / "checkpoints"]  # no step, no last, no best
    # another process, which holds no gathered weights, takes the main process's word for it
    # (it raised "cannot write checkpoint" and the launcher killed the run)
    monkeypatch.setattr(train, "broadcast", lambda flag: torch.zeros_like(flag))
    rank1 = SimpleNamespace(
        is_main_process=False, num_processes=2, device="cpu", wait_for_everyone=lambda: None,
        get_state_dict=lambda model: {}, reduce=lambda t, how: t + 1.0,  # the other failed too
    )  # fmt: skip
    train.save(rank1, None, {"cfg": TrainConfig(output_dir=str(out)), "log": logged.append},
               {"step": 7})  # fmt: skip
    assert logged[-1] == "step 7: weights are not finite, checkpoint not kept"


@pytest.mark.parametrize("validated", [True, False, None])
def test_a_resume_keeps_the_validation_its_checkpoint_holds(tmp_path, monkeypatch, validated):
    # step 15 ends an epoch; killed while saving its validated checkpoint, the run resumes from
    # save_every's step-15 checkpoint, saved before that validation, which runs again
    ckpt = tmp_path / "checkpoints" / "step-00000015"
    ckpt.mkdir(parents=True)
    TrainConfig().save(ckpt / "config.json")
    state = {"step": 15, "epoch": 0 if not validated else 1, "batch_in_epoch": 0}
    state["validated_step"] = {True: 15, False: 10, None: None}[validated]  # None: no epoch end yet
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    records = [{"step": 10, "train_loss": 2.0}, {"step": 10, "valid_loss": 3.0},
               {"step": 15, "train_loss": 1.5}, {"step": 15, "valid_loss": 2.5},
               {"step": 16, "train_loss": 1.4}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setattr(train, "latest_checkpoint", lambda out: ckpt)
    monkeypatch.setattr(train, "safe_load", lambda path: None)
    acc = SimpleNamespace(process_index=0, is_main_process=True, load_state=lambda path: None,
                          distributed_type="NO", num_processes=1)  # fmt: skip
    train.restore(acc, tmp_path, TrainConfig(), True, lambda _: None)
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == (records[:4] if validated else records[:3])


@pytest.mark.parametrize("batch_in_epoch", [0, 5])
def test_more_processes_resume_from_an_epochs_end(tmp_path, monkeypatch, batch_in_epoch):
    # saved by one process: rank 1 has no RNG file. At an epoch's end (where a resume may
    # change the number of processes) it starts from the seed; inside an epoch it cannot
    ckpt = tmp_path / "checkpoints" / "step-00000023"
    (ckpt / "state").mkdir(parents=True)
    TrainConfig().save(ckpt / "config.json")
    state = {"step": 23, "epoch": 1, "batch_in_epoch": batch_in_epoch, "validated_step": 23,
             "batching": {"processes": 1}}  # fmt: skip
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    monkeypatch.setattr(train, "latest_checkpoint", lambda out: ckpt)
    rank1 = SimpleNamespace(process_index=1, is_main_process=False, step=23, num_processes=2,
                            distributed_type="NO", load_state=lambda path: None)  # fmt: skip
    logged = []
    if batch_in_epoch:  # refused as a change of batching, before rank 1 misses its RNG file
        with pytest.raises(UserError, match="inside epoch 2 with processes 1 -> 2"):
            train.restore(rank1, tmp_path, TrainConfig(), True, logged.append)
        del state["batching"]  # older checkpoints did not record it: their RNG files say
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
        (ckpt / "state" / "random_states_0.pkl").write_bytes(b"")
        with pytest.raises(UserError, match="inside epoch 2 with processes 1 -> 2"):
            train.restore(rank1, tmp_path, TrainConfig(), True, logged.append)
        (ckpt / "state" / "random_states_0.pkl").unlink()  # none at all: missed, one line
        with pytest.raises(UserError, match="random_states_1.pkl"):
            train.restore(rank1, tmp_path, TrainConfig(), True, logged.append)
        return
    assert train.restore(rank1, tmp_path, TrainConfig(), True, logged.append)["step"] == 23
    assert logged[0] == "saved by 1 process(es): process 1 starts from the seed's random state"
    assert rank1.step == 0  # accumulation groups start anew (grad_accum_steps may change)


def test_a_failed_distributed_load_names_the_ranks_error(tmp_path, monkeypatch):
    # torch.distributed.checkpoint raises a CheckpointException (a BaseException) whose str() is
    # every rank's traceback: the one-line error must carry the first rank's own message
    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    ckpt = tmp_path / "checkpoints" / "step-00000003"
    ckpt.mkdir(parents=True)
    TrainConfig().save(ckpt / "config.json")
    state = {"step": 3, "epoch": 0, "batch_in_epoch": 3, "batching": {"processes": 2}}
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    cause = _wrap_exception(RuntimeError("Missing key in checkpoint state_dict: x.\nmore"))

    def load_state(path):
        raise CheckpointException("load failed", {0: cause, 1: cause})

    accelerator = SimpleNamespace(process_index=0, load_state=load_state, num_processes=2,
                                  distributed_type="NO")  # fmt: skip
    monkeypatch.setattr(train, "latest_checkpoint", lambda out: ckpt)
    monkeypatch.setattr(train, "safe_load", lambda path: None)
    with pytest.raises(UserError) as e:
        train.restore(accelerator, tmp_path, TrainConfig(), True, print)
    assert str(e.value) == (
        f"{ckpt}: cannot load the training state (RuntimeError: Missing key in checkpoint "
        "state_dict: x.); remove this checkpoint to resume from an older one"
    )


def test_ddp_matches_one_process(corpus, tmp_path, single_process_run):
    proc = run(args_for(corpus, tmp_path / "run", *SIX_STEPS), launch=DDP)
    assert "fp32 on cpu, DDP (MULTI_CPU) over 2 processes" in proc.stdout  # what really ran
    # each process takes its own batches of max_tokens 400 (tiny.json: at most 32 pairs)
    assert (
        "step size: batches of up to 400 padded tokens and 32 pairs, 1 a step (grad_accum_steps) "
        "in each of 2 processes: up to 800 padded tokens a step" in proc.stdout
    )
    assert_same_losses(tmp_path / "run", single_process_run)


def test_a_resume_inside_an_epoch_with_accumulation_continues_exactly(
    corpus, tmp_path, single_process_run
):
    # steps of 2 batches, each weighed by its target tokens: the weights follow the batches
    # from the resumed position
    part, accum = tmp_path / "part", ("--grad_accum_steps", 2)
    run(args_for(corpus, part, *[a if a != 6 else 3 for a in SIX_STEPS], *accum))
    assert json.loads((part / "last" / "trainer_state.json").read_text())["batch_in_epoch"] > 0
    run([*args_for(corpus, part, *SIX_STEPS, *accum), "--resume"])
    assert train_losses(part) == train_losses(single_process_run)
    # and the tokens counted from the resumed batch on, not from the epoch's first
    count = [json.loads((r / "last" / "trainer_state.json").read_text())["target_tokens"]
             for r in (part, single_process_run)]  # fmt: skip
    assert count[0] == count[1]


def test_fsdp_resume_continues_exactly(corpus, tmp_path, fsdp_run):
    part = tmp_path / "part"
    three = [a if a != 6 else 3 for a in SIX_STEPS]
    run(args_for(corpus, part, *three), launch=FSDP)
    proc = run([*args_for(corpus, part, *SIX_STEPS), "--resume"], launch=FSDP)
    assert "resumed from" in proc.stdout + proc.stderr
    assert "FSDP over 2 processes" in proc.stdout  # the log says FSDP, not a silent fallback
    assert_same_losses(part, fsdp_run)
    wf, wp = weights(fsdp_run), weights(part)
    for k in wf:
        torch.testing.assert_close(wp[k], wf[k], rtol=1e-5, atol=1e-6)
    # the consolidated checkpoint of an FSDP run loads like any other
    from checkpoint import load_model

    model, _, _, cfg = load_model(part / "last")
    loaded, saved = model.state_dict(), weights(part)
    assert cfg.max_steps == 6 and saved and all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_a_stop_request_any_process_saw_stops_them_all_at_any_step():
    # a vote every log_every steps could outlast torchrun's 30 s between forwarding a signal and
    # SIGKILL: every step, a request that only another process saw stops this one too
    stop = train.StopSignal.__new__(train.StopSignal)  # no handlers on the test process
    stop.requested, votes = False, []
    other_saw_it = SimpleNamespace(num_processes=2, device="cpu",
                                   reduce=lambda t, how: votes.append(how) or t + 1.0)  # fmt: skip
    nobody = SimpleNamespace(num_processes=2, device="cpu", reduce=lambda t, how: t)
    assert [stop.agreed(nobody) for _ in range(3)] == [False] * 3
    assert stop.agreed(other_saw_it) and votes == ["sum"]
    alone = SimpleNamespace(num_processes=1)  # one process: no collective, its own flag
    assert not stop.agreed(alone)
    stop.requested = True
    assert stop.agreed(alone)


def test_a_step_between_log_lines_stops_on_a_request_only_another_process_saw(monkeypatch):
    # after_step votes after every step, not at log_every's: step 7 of log_every 50 stops, saved
    saved, logged = [], []
    monkeypatch.setattr(train, "save", lambda acc, model, run, state: saved.append(state["step"]))
    monkeypatch.setattr(train, "out_of_time", lambda *args: False)
    stop = train.StopSignal.__new__(train.StopSignal)  # no handlers on the test process
    stop.requested = False  # this process saw nothing
    cfg = TrainConfig(log_every=50, max_steps=1000, save_every=None)
    run = {"cfg": cfg, "stop": stop, "meter": SimpleNamespace(state=lambda acc: {}),
           "log": logged.append, "started": 0.0}  # fmt: skip
    other_saw_it = SimpleNamespace(num_processes=2, device="cpu", reduce=lambda t, how: t + 1.0)
    assert train.after_step(None, other_saw_it, None, run, {"step": 7}, 0, 100, None) == "stopped"
    assert saved == [7] and logged == ["stopped by signal at step 7; continue with --resume"]
    nobody = SimpleNamespace(num_processes=2, device="cpu", reduce=lambda t, how: t)
    assert train.after_step(None, nobody, None, run, {"step": 8}, 0, 100, None) is None
    assert saved == [7]
