"""score.py: the log-probability of given targets, teacher-forced, against beam search's own
incremental scores, across batches, ensembles and the command line."""

import dataclasses
import io
import math

import pytest
import torch
import torch.nn.functional as F

import score
from checkpoint import load_model
from config import cli
from data import encode_sources, encode_targets
from ensemble import load_models
from model import shift_right
from test_translate import LINES, make_checkpoint
from translate import banned_ids, beam_search

SOURCES = [line for line in LINES if line.strip()]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("score") / "ckpt")


def test_a_finished_hypothesis_scores_its_beam_search_log_probability(ckpt):
    # the same number by two roads: beam search's sum over cached one-token steps, and one
    # teacher-forced pass over the whole target
    model, tok, ids, cfg = load_model(ckpt)
    finished, banned = [], banned_ids(ids)  # padding, as translate.py bans it
    for s in encode_sources(tok, SOURCES):
        found = beam_search(model, torch.tensor([s]), ids, 20, 4, alpha=0.0, nbest=4, banned=banned)
        for hyp in found[0]:
            if hyp.tokens[-1] == ids.eos:  # one cut at the length limit has no </s> to score
                finished.append((s, hyp))
    assert len(finished) >= 8
    for s, hyp in finished:
        got = score.score_batch(model, torch.tensor([s]), torch.tensor([hyp.tokens]), ids)
        assert got.item() == pytest.approx(hyp.logprob, abs=1e-4)


def test_a_pairs_score_does_not_depend_on_its_batch(ckpt):
    model, tok, ids, cfg = load_model(ckpt)
    targets = SOURCES[::-1]  # other lengths than the sources: padding on both sides
    together = score.score_pairs(model, tok, ids, SOURCES, targets, batch_size=8)
    for i, (source, target) in enumerate(zip(SOURCES, targets, strict=True)):
        alone = score.score_pairs(model, tok, ids, [source], [target])
        assert together[i][1] == alone[0][1] == len(encode_targets(tok, [target])[0])
        assert together[i][0] == pytest.approx(alone[0][0], abs=1e-4)


def test_an_empty_line_is_the_empty_sentence(ckpt):
    model, tok, ids, cfg = load_model(ckpt)
    got = score.score_pairs(model, tok, ids, [SOURCES[0], "", " "], ["", SOURCES[0], ""])
    src, eos = torch.tensor(encode_sources(tok, SOURCES[:1])), torch.tensor([[ids.eos]])
    assert got[0] == (pytest.approx(score.score_batch(model, src, eos, ids).item()), 1)
    assert got[2] == (pytest.approx(score.score_batch(model, eos, eos, ids).item()), 1)
    labels = torch.tensor(encode_targets(tok, SOURCES[:1]))
    assert got[1][0] == pytest.approx(score.score_batch(model, eos, labels, ids).item())
    assert score.score_pairs(model, tok, ids, [], []) == []


def test_a_side_longer_than_the_positional_table_is_nan_and_the_rest_scored(ckpt):
    model, tok, ids, cfg = load_model(ckpt)
    long = "the dog " * model.cfg.max_len
    got = score.score_pairs(model, tok, ids, [SOURCES[0], long, SOURCES[1]], [long] + SOURCES[:2])
    assert math.isnan(got[0][0]) and math.isnan(got[1][0])
    assert got[2] == score.score_pairs(model, tok, ids, SOURCES[1:2], SOURCES[1:2])[0]


def test_a_side_of_exactly_the_positional_table_is_scored_and_the_bar_counts_every_pair(ckpt):
    model, tok, ids, cfg = load_model(ckpt)
    n = max(len(encode_sources(tok, SOURCES[:1])[0]), len(encode_targets(tok, SOURCES[1:2])[0]))
    alone = score.score_pairs(model, tok, ids, SOURCES[:1], SOURCES[1:2])
    done = []
    progress = type("Bar", (), {"update": lambda self, k: done.append(k)})()
    for table, scored in ((n, True), (n - 1, False)):  # a table of n positions, then n - 1
        model.cfg = dataclasses.replace(model.cfg, max_len=table)
        done.clear()
        got = score.score_pairs(model, tok, ids, SOURCES[:2], SOURCES[1:3], progress=progress)
        assert (got[0] == alone[0]) if scored else math.isnan(got[0][0])
        assert sum(done) == 2  # the skipped pair too: the bar ends at its total


def test_an_ensemble_scores_the_log_of_its_models_mean_probability(ckpt, tmp_path):
    other = make_checkpoint(tmp_path / "other", eos_scale=1.0, n_layers=1)  # another model
    models = [load_model(ckpt)[0], load_model(other)[0]]
    _, tok, ids, cfg = load_model(ckpt)
    pair = load_models([str(ckpt), str(other)])[0]
    got = score.score_pairs(pair, tok, ids, SOURCES, SOURCES[::-1])
    for (logp, _), source, target in zip(got, SOURCES, SOURCES[::-1], strict=True):
        src = torch.tensor(encode_sources(tok, [source]))
        labels = torch.tensor(encode_targets(tok, [target]))
        with torch.no_grad():  # each model's probability of each label, by hand
            p = [F.softmax(m(src, shift_right(labels, ids.start, ids.pad)), -1) for m in models]
        mean = (p[0] + p[1]) / 2
        assert logp == pytest.approx(mean[0].gather(1, labels.T).log().sum().item(), abs=1e-4)
        assert logp != pytest.approx(
            score.score_pairs(models[0], tok, ids, [source], [target])[0][0]
        )


def run_cli(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = 0
    try:
        cli(lambda: score.main([str(a) for a in argv]))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_command_line_writes_one_score_per_pair_in_order(ckpt, tmp_path, capsys):
    src, tgt = tmp_path / "src.en", tmp_path / "tgt.de"
    model, tok, ids, cfg = load_model(ckpt)
    long = "the dog " * model.cfg.max_len
    sources, targets = [*LINES, "a cat"], [*LINES[::-1], long]  # empty lines on either side
    src.write_text("\n".join(sources) + "\n")
    tgt.write_text("\n".join(targets) + "\n")
    expected = score.score_pairs(model, tok, ids, sources, targets)
    code, out, err = run_cli(["--checkpoint", ckpt, "--source", src, "--target", tgt], capsys)
    assert code == 0, err
    sums = [float(x) for x in out.splitlines()]
    assert sums[:-1] == pytest.approx([s for s, _ in expected[:-1]], abs=1e-5)
    assert all(s < 0 for s in sums[:-1]) and math.isnan(sums[-1])  # empty: </s> to predict
    tokens = sum(n for _, n in expected[:-1])
    ppl = math.exp(-sum(sums[:-1]) / tokens)
    lines = err.strip().splitlines()
    assert (
        "warning: 1 pair(s) not scored (nan)" in lines[-2] and f"line {len(sources)}" in lines[-2]
    )
    assert f"{len(LINES)} pairs, {tokens} target tokens" in lines[-1] and f"{ppl:.2f}" in lines[-1]
    out_file = tmp_path / "scores.txt"
    argv = ["--checkpoint", ckpt, "--source", src, "--target", tgt, "--normalize"]
    code, _, err = run_cli([*argv, "--output", out_file, "--batch_size", 3], capsys)
    assert code == 0, err
    means = [float(x) for x in out_file.read_text().splitlines()]
    assert means[:-1] == pytest.approx([s / n for s, n in expected[:-1]], abs=1e-5)
    # empty files: nothing to score, nothing written
    src.write_text("")
    tgt.write_text("")
    assert run_cli(["--checkpoint", ckpt, "--source", src, "--target", tgt], capsys) == (0, "", "")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("misaligned", "misaligned files"),
        ("batch 0", "--batch_size and --max_tokens must be >= 1"),
        ("output is the source", "is the --source file"),
        ("missing", "data file not found"),
        ("output unwritable", "cannot write"),
    ],
)
def test_bad_input_is_one_line(ckpt, tmp_path, capsys, monkeypatch, case, message):
    src, tgt = tmp_path / "src.en", tmp_path / "tgt.de"
    src.write_text("a man\nthe dog\n")
    tgt.write_text("ein Mann\nder Hund\n")
    argv = ["--checkpoint", ckpt, "--source", src, "--target", tgt]
    if case == "misaligned":
        tgt.write_text("ein Mann\n")
    elif case == "batch 0":
        argv += ["--batch_size", 0]
    elif case == "output is the source":
        argv += ["--output", src]
    elif case == "missing":
        tgt.unlink()
    elif case == "output unwritable":  # found before scoring, not after hours of it
        argv += ["--output", tmp_path / "no_dir" / "scores.txt"]
        monkeypatch.setattr(score, "score_pairs", lambda *a, **k: pytest.fail("scored first"))
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_either_side_can_come_from_stdin(ckpt, tmp_path, capsys, monkeypatch):
    # translate.py ... | score.py --target -: a model's own output, scored as it comes
    src, tgt = tmp_path / "src.en", tmp_path / "tgt.de"
    src.write_text("a man\nthe dog\n")
    tgt.write_text("ein Mann\nder Hund\n")
    files = run_cli(["--checkpoint", ckpt, "--source", src, "--target", tgt], capsys)
    for side, path in (("--target", tgt), ("--source", src)):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
        argv = ["--checkpoint", ckpt, "--source", src, "--target", tgt]
        argv[argv.index(side) + 1] = "-"
        code, out, err = run_cli(argv, capsys)
        assert (code, out) == (0, files[1]) and out.count("\n") == 2, err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"ein Mann\n")))
    code, _, err = run_cli(["--checkpoint", ckpt, "--source", src, "--target", "-"], capsys)
    assert code == 2 and f"misaligned files: {src} has 2 lines, stdin has 1" in err
    code, _, err = run_cli(["--checkpoint", ckpt, "--source", "-", "--target", "-"], capsys)
    assert code == 2 and "only one of them can read stdin" in err
