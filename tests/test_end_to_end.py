"""End to end, as a user runs it: make data, train a tiny model, resume, translate, evaluate."""

import gzip
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

import quickstart_data
from checkpoint import load_model
from config import UserError
from data import read_lines
from helpers import ROOT, subprocess_env, wait_for_checkpoint

ENV = subprocess_env()


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


def test_quickstart_checks_its_arguments_before_deleting_the_last_run(tmp_path):
    # a copy of the script, so that the repository's own runs/quickstart is never at risk
    import shutil

    for name in ("quickstart.sh", "config.py", "configs/quickstart.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "quickstart_data.py").write_text("")  # makes no data: the test needs none
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    (tmp_path / "runs" / "quickstart" / "test.hyp.de").write_text("the last run's\n")
    proc = subprocess.run(["bash", str(tmp_path / "quickstart.sh"), "--epochs", "two"],
                          capture_output=True, text=True, env=subprocess_env())  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: config: epochs must be int (got 'two')"
    assert (tmp_path / "runs" / "quickstart" / "test.hyp.de").read_text() == "the last run's\n"


def test_bad_checkpoint_is_one_line_error(tmp_path):
    proc = run("translate.py", "--checkpoint", tmp_path / "nope", input="x\n", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: checkpoint not found")


def toy_multi30k(tmp_path):
    """A toy corpus laid out as ../shared/data/multi30k is (gzipped train/val/test_2016_flickr)."""
    plain, data = tmp_path / "plain", tmp_path / "multi30k"
    quickstart_data.write_splits(plain, seed=9, n_train=300, n_valid=12, n_test=10)
    data.mkdir()
    for split, name in (("train", "train"), ("valid", "val"), ("test", "test_2016_flickr")):
        for lang in ("en", "de"):
            text = (plain / f"{split}.{lang}").read_bytes()
            (data / f"{name}.{lang}.gz").write_bytes(gzip.compress(text))
    return data


# configs/multi30k.json's overrides at toy scale
TOY = ["--tokenizer", '{"train": "unigram", "vocab_size": 200}', "--max_tokens", "800",
       "--log_with", "null"]  # fmt: skip


def data_args(data):
    """The toy corpus's paths as train.py overrides."""
    return ["--train_data", f"{data}/train.{{lang}}.gz", "--valid_data", f"{data}/val.{{lang}}.gz",
            "--test_data", f"{data}/test_2016_flickr.{{lang}}.gz"]  # fmt: skip


@pytest.mark.parametrize("config", ["configs/multi30k.json", "configs/multi30k_bf16.json"])
def test_multi30k_recipe_smoke(tmp_path, config):
    """The Multi30k recipes at toy scale, as the README runs them (fp32, and bf16 with attention
    dropout and weight decay): their settings train (their own tokenizer, a checkpoint per
    epoch), then scripts/multi30k_select.py averages the last checkpoints, chooses checkpoint and
    decoding on val only, and scores test once; then the same for an ensemble of two. (The
    bf16 recipe, whose decoding in bf16 is slow on CPU, tries a smaller grid and no ensemble.)"""
    data, out = toy_multi30k(tmp_path), tmp_path / "run"
    run("train.py", "--config", config, "--output_dir", out, *data_args(data),
        *TOY, "--epochs", 3)  # fmt: skip
    steps = sorted((out / "checkpoints").glob("step-*[0-9]"))
    assert len(steps) == 3  # one per epoch
    if "bf16" in config:
        run("scripts/multi30k_select.py", "--run", out, "--data", data, "--average", 2,
            "--beams", 2)  # fmt: skip
        report = json.loads((out / "results.json").read_text())
        assert len(report["val"]) == 2 * 6  # {best, avg2} x {greedy, beam 2 x 5 penalties}
        assert_chosen_on_val(report)
        assert len((out / "test_2016_flickr.hyp.de").read_text().splitlines()) == 10
        return
    # an average an earlier selection left (of the checkpoints of a run since started over)
    shutil.copytree(out / "best", out / "avg20")
    run("scripts/multi30k_select.py", "--run", out, "--data", data, "--average", 2, 10)
    assert not (out / "avg20").exists()  # not left for an --ensemble of avg20 to take
    report = json.loads((out / "results.json").read_text())
    # 3 checkpoints: "last 10" averages all 3; "last 2" the two newest
    assert {r["checkpoint"] for r in report["val"]} == {"best", "avg2", "avg3"}
    # {best, avg2, avg3} x {greedy, beams 5 and 10 x 5 length penalties}
    assert len(report["val"]) == 33
    assert {(r["beam"], r.get("alpha")) for r in report["val"]} == {(1, None)} | {
        (k, a) for k in (5, 10) for a in (0.6, 1.0, 1.4, 1.8, 2.2)
    }
    assert_chosen_on_val(report)
    averaged = safe_open(out / "avg2" / "model.safetensors", "pt").metadata()["averaged"]
    assert averaged.split() == [str(d) for d in steps[1:]]
    assert len((out / "test_2016_flickr.hyp.de").read_text().splitlines()) == 10
    assert "case:lc" in report["test_lowercased"]["bleu_signature"]
    assert "case:mixed" in report["test_cased"]["bleu_signature"]
    # and the published figures' form: Moses-tokenized, lowercased
    assert report["test_lowercased"]["bleu_moses_form"].endswith(", de, case lc")
    # --ensemble: the same grid and test, for checkpoints decoding as one
    ens = tmp_path / "ens"
    run("scripts/multi30k_select.py", "--run", ens, "--data", data, "--beams", 4,
        "--ensemble", out / "best", out / "avg2")  # fmt: skip
    report = json.loads((ens / "results.json").read_text())
    assert report["ensemble"] == [str(out / "best"), str(out / "avg2")]
    assert {r["checkpoint"] for r in report["val"]} == {"ensemble"} and len(report["val"]) == 6
    assert len((ens / "test_2016_flickr.hyp.de").read_text().splitlines()) == 10
    assert not (ens / "avg2").exists()  # nothing averaged


def assert_chosen_on_val(report):
    # on the unrounded BLEU: a near-tie after rounding may go either way
    assert report["chosen_on_val"] in report["val"]
    assert report["chosen_on_val"]["val_bleu"] == max(r["val_bleu"] for r in report["val"])


def start_pair(tmp_path, *args, **popen):
    """scripts/multi30k_pair.sh on the toy corpus in tmp_path/multi30k, into tmp_path/pair*,
    in a process group of its own."""
    env = {**ENV, "PYTHON": sys.executable, "OUT": str(tmp_path / "pair")}
    env["DATA"] = str(tmp_path / "multi30k")
    cmd = ["bash", "scripts/multi30k_pair.sh", *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)  # fmt: skip


def finish(proc, timeout=300):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the members too, not only bash
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_pair(tmp_path, *args):
    return finish(start_pair(tmp_path, *args))


def test_multi30k_pair_smoke(tmp_path):
    """scripts/multi30k_pair.sh at toy scale: two members differing only in their seed train at
    once, each chooses its checkpoint on val, and their ensemble chooses its decoding on val."""
    data = toy_multi30k(tmp_path)
    toy = [*TOY, "--epochs", 2, "--mixed_precision", "no"]  # the paths come from DATA
    proc = run_pair(tmp_path, *toy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    members = [tmp_path / "pair_a", tmp_path / "pair_b"]
    configs = [json.loads((m / "config.json").read_text()) for m in members]
    assert [c.pop("seed") for c in configs] == [1234, 2]
    assert [c.pop("output_dir") for c in configs] == [str(m) for m in members]
    assert configs[0] == configs[1]  # nothing else differs
    assert configs[0]["train_data"] == f"{data}/train.{{lang}}.gz"  # DATA
    assert (configs[0]["max_steps"], configs[0]["keep_last"], configs[0]["epochs"]) == (
        31000,
        20,
        2,
    )
    chosen = [json.loads((m / "results.json").read_text())["chosen_on_val"] for m in members]
    report = json.loads((tmp_path / "pair" / "results.json").read_text())
    assert report["ensemble"] == [str(m / c["checkpoint"]) for m, c in zip(members, chosen)]
    assert len(report["val"]) == 11  # greedy, beams 5 and 10 x 5 length penalties
    assert len((tmp_path / "pair" / "test_2016_flickr.hyp.de").read_text().splitlines()) == 10
    # run again without --resume: refused, nothing overwritten
    proc = run_pair(tmp_path, *toy)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {tmp_path}/pair_a exists: pass --resume to continue it, or OUT=DIR for a new pair"
    )


def ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def pid_of(*words):
    """The process whose command line holds all these words."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode().split("\0")
        except OSError:  # ended meanwhile
            continue
        if all(w in args for w in words):
            return int(cmdline.parent.name)
    raise AssertionError(f"no process with {words}")


@pytest.mark.parametrize("target", ["group", "member a"])
def test_multi30k_pair_stopped_by_a_signal_chooses_nothing(tmp_path, target):
    """A member stopped by a signal saves and exits 0: the script must stop its other member
    and stop there, not choose checkpoints from half-trained members. "group": SIGINT to all,
    the script started as `cmd &` in a script is, ignoring it; "member a": to one member only."""
    toy_multi30k(tmp_path)
    toy = [*TOY, "--epochs", 1000, "--save_every", 2, "--mixed_precision", "no"]
    proc = start_pair(tmp_path, *toy, preexec_fn=ignore_sigint)
    members = [tmp_path / "pair_a", tmp_path / "pair_b"]
    try:
        for m in members:
            wait_for_checkpoint(m, 1, proc)
    except AssertionError:
        os.killpg(proc.pid, signal.SIGKILL)  # the members too
        raise
    if target == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(pid_of("train.py", "--output_dir", str(members[0])), signal.SIGINT)
    done = finish(proc, timeout=120)
    assert done.returncode == 130, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    named = re.escape(str(tmp_path)) + ("/pair_a" if target == "member a" else "/pair_[ab]")
    expected = f"stopped: {named} was stopped by a signal; to continue, run again with --resume"
    assert re.fullmatch(expected, last), last
    for m in members:
        last_line = (tmp_path / f"{m.name}.log").read_text().splitlines()[-1]
        assert last_line.startswith("stopped by signal")  # each saved and said so
        assert (m / "last" / "trainer_state.json").is_file()
        assert not (m / "results.json").exists()  # nothing chosen
    assert not (tmp_path / "pair").exists()  # no ensemble


def test_multi30k_pair_bad_input_is_exit_2(tmp_path):
    proc = run_pair(tmp_path, "--no_such_key", 1)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown config key: no_such_key (from --no_such_key)"
    proc = run_pair(tmp_path, "--seed", 7)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --seed: this script sets")
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written
    # OUT, where the ensemble's results go, a training run: found before both members train
    (tmp_path / "pair" / "checkpoints").mkdir(parents=True)
    proc = run_pair(tmp_path)
    assert proc.returncode == 2 and proc.stderr == (
        f"error: {tmp_path}/pair holds a training run: OUT=DIR must name a folder of its own\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair"]


def script(name: str):
    """scripts/NAME.py imported, to call its functions in this process."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def select_module(monkeypatch):
    """scripts/multi30k_select.py imported, to call its main() in this process."""
    select = script("multi30k_select")
    monkeypatch.setattr(select, "keep_freed_memory", lambda: None)  # glibc's, process-wide
    return select


def test_multi30k_select_chooses_on_the_unrounded_val_bleu_the_first_of_a_tie(
    tmp_path, monkeypatch
):
    select, data = select_module(monkeypatch), toy_multi30k(tmp_path)
    # val BLEU of greedy and beam 2's length penalties: all print as 30.00; beam 2 with 1.0 is
    # the best unrounded, and 1.4 ties with it exactly
    bleu = {"1 None": 30.004, "2 0.6": 29.996, "2 1.0": 30.0049, "2 1.4": 30.0049,
            "2 1.8": 29.9951, "2 2.2": 30.0}  # fmt: skip
    decoded = []

    def translate_texts(model, tok, ids, src, batch_size, max_len, beam, alpha=None):
        decoded.append((len(src), beam, alpha))
        return [f"{beam} {alpha}"] * len(src)  # the setting, for corpus_score to look up

    def corpus_score(hyps, refs):
        return SimpleNamespace(score=bleu[hyps[0]])

    monkeypatch.setattr(select, "translate_texts", translate_texts)
    fake_sacrebleu = SimpleNamespace(BLEU=lambda: SimpleNamespace(corpus_score=corpus_score))
    monkeypatch.setattr(select, "sacrebleu", fake_sacrebleu)  # the script's alone
    scores = {"bleu": 1.0, "bleu_signature": "", "chrf": 1.0, "chrf_signature": ""}
    monkeypatch.setattr(select, "score", lambda *args, **kwargs: scores)
    cfg = SimpleNamespace(max_seq_length=32, src_lang="en", tgt_lang="de")
    loaded = (torch.nn.Linear(1, 1), None, None, cfg)
    monkeypatch.setattr(select, "load_models", lambda paths: loaded)
    monkeypatch.setattr(select, "resolve", Path)  # "a" and "b": no checkpoints to find
    monkeypatch.setattr(select, "given_twice", lambda dirs: [])
    out = tmp_path / "ens"
    select.main(["--run", str(out), "--data", str(data), "--beams", "2", "--ensemble", "a", "b"])
    report = json.loads((out / "results.json").read_text())
    assert [r["val_bleu"] for r in report["val"]] == [30.0] * 6
    assert report["chosen_on_val"] == {"checkpoint": "ensemble", "beam": 2, "alpha": 1.0,
                                       "val_bleu": 30.0}  # fmt: skip
    # val (12 lines) in every setting, then test (10 lines) once, in the chosen one
    assert decoded == [(12, 1, None)] + [(12, 2, a) for a in select.PENALTIES] + [(10, 2, 1.0)]


def test_multi30k_select_refuses_what_it_cannot_choose_from(tmp_path, monkeypatch):
    # it scores en->de: a de->en run, a run holding both directions (a resume with the
    # languages swapped only warns) or an ensemble of one checkpoint twice all went through
    from data import train_tokenizer
    from test_translate import TEXTS, make_checkpoint

    select, data = select_module(monkeypatch), toy_multi30k(tmp_path)
    tok = train_tokenizer(TEXTS, "unigram", 60)  # one for all: as one run's checkpoints have

    def run_of(name, *ways):
        run = tmp_path / name
        for step, way in enumerate(ways, 1):
            ckpt = make_checkpoint(run / "checkpoints" / f"step-{step:08d}", tok=tok)
            cfg = json.loads((ckpt / "config.json").read_text())
            src, tgt = way.split("->")
            (ckpt / "config.json").write_text(json.dumps({**cfg, "src_lang": src, "tgt_lang": tgt}))
        shutil.copytree(run / "checkpoints" / f"step-{len(ways):08d}", run / "best")
        return run

    def refused(*argv):
        with pytest.raises(UserError) as e:
            select.main(["--data", str(data), "--beams", "2", *map(str, argv)])
        return str(e.value)

    deen = run_of("deen", "de->en", "de->en")
    assert refused("--run", deen).endswith(
        "step-00000002: a de->en model; this script scores en->de"
    )
    mixed = run_of("mixed", "de->en", "en->de")
    assert re.fullmatch(r".*step-00000002: trained en->de, .*step-00000001 de->en",
                        refused("--run", mixed, "--average", 2))  # fmt: skip
    assert not list(mixed.glob("avg*")) and not list(deen.glob("avg*"))  # nothing averaged
    # a best/ of the other direction: found before the averages are made (or old ones removed)
    late = run_of("late", "en->de", "en->de")
    shutil.rmtree(late / "best")
    shutil.copytree(deen / "best", late / "best")
    (late / "avg7").mkdir()
    assert refused("--run", late, "--average", 2).endswith("best: a de->en model; this script "
                                                          "scores en->de")  # fmt: skip
    assert [p.name for p in late.glob("avg*")] == ["avg7"]
    assert "a de->en model, not en->de" in refused(
        "--run", tmp_path / "e", "--ensemble", deen / "best"
    )
    assert refused("--run", tmp_path / "e", "--ensemble", mixed / "best", mixed / "best").endswith(
        "best: the same checkpoint twice"
    )
    assert not (tmp_path / "e").exists()
    with pytest.raises(SystemExit) as e:  # ignored otherwise: an ensemble averages nothing
        select.main(["--run", str(tmp_path / "e"), "--data", str(data), "--average", "2",
                     "--ensemble", str(mixed / "best")])  # fmt: skip
    assert e.value.code == 2


def test_rerank_weighs_the_reverse_model_and_the_length_as_written():
    choose, inf, nan = script("rerank").choose, math.inf, math.nan
    # (text, log P(y|x), log P(x|y), |y|, |x|)
    hyps = [[("a", -1.0, -10.0, 3, 1), ("b", -2.0, -1.0, 3, 1), ("c", -2.5, -1.2, 9, 1)], []]
    assert choose(hyps, 0.0, 0.0) == ["a", ""]  # the forward model alone
    assert choose(hyps, 1.0, 0.0) == ["b", ""]  # -3.0 against -11.0 and -3.7
    assert choose(hyps, 1.0, 2.2) == ["c", ""]  # lp(3) = 1.88, lp(9) = 6.45: -2.06 and -1.59
    # the channel counts per source token: for a source twice as long, half as much
    assert choose(hyps[:1], 0.2, 0.0) == ["b"]  # -2.2 against -3.0
    assert choose([[(t, f, r, n, 2) for t, f, r, n, _ in hyps[0]]], 0.2, 0.0) == ["a"]
    # a side a model could not score: not chosen, wherever it stands, but for the forward
    # model alone when only the channel failed
    for first in (True, False):
        pair = [("x", -1.0, -inf, 3, 1), ("y", -1.5, -2.0, 3, 1)]
        pair = pair if first else pair[::-1]
        assert choose([pair], 0.5, 1.0) == ["y"] and choose([pair], 0.0, 1.0) == ["x"]
        pair = [("z", nan, -1.0, 3, 1), ("y", -9.0, -9.0, 3, 1)]
        assert choose([pair if first else pair[::-1]], 0.0, 1.0) == ["y"]
        # no hypothesis the channel could score (a source past its positions): the forward
        # ranking at the chosen alpha, not the beam's order (alpha 1.0)
        pair = [("short", -10.0, nan, 10, 300), ("long", -10.5, nan, 20, 300)]
        pair = pair if first else pair[::-1]
        assert choose([pair], 0.5, 2.2) == ["long"] and choose([pair], 0.5, 0.0) == ["short"]
        # the reverse score of one not scored is nan (score_pairs), not -inf: still not chosen
        pair = [("x", -1.0, nan, 3, 1), ("y", -1.5, -2.0, 3, 1)]
        assert choose([pair if first else pair[::-1]], 0.5, 1.0) == ["y"]


def reversed_checkpoint(path):
    """A de->en checkpoint: another model than make_checkpoint's default."""
    from test_translate import make_checkpoint

    path = make_checkpoint(path, eos_scale=1.0, n_layers=1)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "src_lang": "de", "tgt_lang": "en"}))
    return path


def test_rerank_scores_each_hypothesis_with_both_directions(tmp_path, monkeypatch):
    from score import score_pairs
    from test_translate import make_checkpoint
    from translate import length_penalty, translate_nbest

    forward = load_model(make_checkpoint(tmp_path / "f"))
    reverse = load_model(reversed_checkpoint(tmp_path / "r"))
    sources = ["a man reads a book", "the dog sees the cat", ""]
    rerank = script("rerank")
    rescored = []

    def text_scored_again(model, *args):  # as if the text tokenized again were other tokens
        rescored.append(model is forward[0])
        return [(s - 100.0, n) for s, n in score_pairs(model, *args)]

    monkeypatch.setattr(rerank, "score_pairs", text_scored_again)
    found = rerank.nbest_features(forward, reverse, sources, 3)
    assert [len(h) for h in found] == [3, 3, 0] and rescored == [False]  # the reverse alone
    beam = translate_nbest(*forward[:3], sources, beam=3, alpha=1.0, nbest=3)
    for x, hyps, ranked in zip(sources, found, beam):
        assert [h[0] for h in hyps] == [text for text, _ in ranked]
        for (y, fwd, rev, n, m), (_, score) in zip(hyps, ranked):
            # the beam's own log-probability and length: its score is their ratio under lp 1.0
            # (the text scored again can differ: a hypothesis cut by the length budget has no
            # </s>, which score.py's target always ends with)
            assert fwd / length_penalty(n, 1.0) == pytest.approx(score)
            assert (rev + 100.0, m) == pytest.approx(score_pairs(*reverse[:3], [y], [x])[0])


def test_rerank_chooses_on_val_and_reranks_test_once(tmp_path, monkeypatch):
    from test_translate import make_checkpoint

    rerank, data = script("rerank"), toy_multi30k(tmp_path)
    monkeypatch.setattr(rerank, "keep_freed_memory", lambda: None)  # glibc's, process-wide
    refs = {
        n: read_lines(str(data / f"{split}.de.gz"))
        for n, split in ((12, "val"), (10, "test_2016_flickr"))
    }
    decoded = []

    def nbest_features(forward, reverse, sources, beam):
        # the reference wins where 9 lam > 4 / lp(3): first at lam 0.3 with alpha 1.4
        decoded.append(len(sources))
        return [[("zzz", -1.0, -10.0, 3, 1), (ref, -5.0, -1.0, 3, 1)] for ref in refs[len(sources)]]

    monkeypatch.setattr(rerank, "nbest_features", nbest_features)
    forward, reverse = make_checkpoint(tmp_path / "f"), reversed_checkpoint(tmp_path / "r")
    argv = ["--forward", forward, "--reverse", reverse, "--data", data, "--beam", 3]
    rerank.main([str(a) for a in [*argv, "--run", tmp_path / "out"]])
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(report["val"]) == len(rerank.WEIGHTS) * len(rerank.PENALTIES) == 35
    assert {k: report["chosen_on_val"][k] for k in ("lam", "alpha")} == {"lam": 0.3, "alpha": 1.4}
    assert decoded == [12, 10]  # val, then test once
    assert (tmp_path / "out" / "test_2016_flickr.hyp.de").read_text().splitlines() == refs[10]
    assert report["test_cased"]["bleu"] == 100 and report["forward_alone_test_cased"]["bleu"] < 5
    moses = report["test_lowercased"]["bleu_moses"], report["forward_alone_test_lowercased"]
    assert moses[0] == 100 and moses[1]["bleu_moses"] < 5  # both in the published form too
    with pytest.raises(UserError, match="--reverse: a en->de model, not de->en"):
        rerank.main([str(a) for a in [*argv[:3], forward, *argv[4:], "--run", tmp_path / "x"]])
    assert not (tmp_path / "x").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="--run .*file: not a directory"):
        rerank.main([str(a) for a in [*argv, "--run", tmp_path / "file"]])


def test_multi30k_select_bad_input_is_exit_2(tmp_path, capsys, monkeypatch):
    data, run_dir = toy_multi30k(tmp_path), tmp_path / "run"
    proc = run("scripts/multi30k_select.py", "--run", run_dir, "--data", data, check=False)
    expected = f"error: nothing to average: 0 checkpoints in {run_dir}/checkpoints"
    assert proc.returncode == 2 and proc.stderr.strip() == expected
    # the rest in this process (each a subprocess cost seconds of imports)
    select = select_module(monkeypatch)
    # an ensemble that does not load leaves no new --run folder
    with pytest.raises(UserError, match="missing"):
        select.main(["--run", str(tmp_path / "ens"), "--data", str(data), "--ensemble",
                     str(tmp_path / "missing")])  # fmt: skip
    assert not (tmp_path / "ens").exists()
    # the data is read and checked first: a misaligned test set fails before any decoding
    # (it used to fail only after the whole val sweep), and so does a missing one
    short = gzip.decompress((data / "test_2016_flickr.de.gz").read_bytes()).splitlines()[:-1]
    (data / "test_2016_flickr.de.gz").write_bytes(gzip.compress(b"\n".join(short) + b"\n"))
    with pytest.raises(UserError) as e:
        select.main(["--run", str(run_dir), "--data", str(data)])
    assert str(e.value) == (
        f"misaligned files: {data}/test_2016_flickr.en.gz has 10 lines, "
        f"{data}/test_2016_flickr.de.gz has 9"
    )
    (data / "test_2016_flickr.en.gz").write_bytes(gzip.compress(b""))  # empty, both sides
    (data / "test_2016_flickr.de.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(UserError) as e:  # not after the val sweep
        select.main(["--run", str(run_dir), "--data", str(data)])
    assert str(e.value) == f"{data}/test_2016_flickr.en.gz: no sentences"
    (data / "val.en.gz").unlink()
    with pytest.raises(UserError, match=re.escape(f"{data}/val.en.gz")):
        select.main(["--run", str(run_dir), "--data", str(data)])
    for args, error in ((["--average", "0"], "--average: N must be at least 1"),
                        (["--beams", "1"], "--beams: K must be at least 2")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            select.main(["--run", str(tmp_path), *args])
        assert exit_.value.code == 2 and error in capsys.readouterr().err


@pytest.mark.parametrize("name", ["multi30k_select", "rerank"])
def test_multi30k_scripts_say_a_missing_sacremoses_before_decoding(name, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sacremoses", None)  # import sacremoses: ImportError
    argv = ["--run", tmp_path / "out", "--data", tmp_path / "none"]  # no data: read after
    argv += ["--forward", "f", "--reverse", "r"] if name == "rerank" else []
    with pytest.raises(UserError, match="needs sacremoses: pip install sacremoses"):
        script(name).main([str(a) for a in argv])
