"""score.py: the log-probability of given targets, teacher-forced, against beam search's own
incremental scores, across batches, ensembles and the command line."""

import math

import pytest
import torch

import score
from checkpoint import load_model
from config import cli
from data import encode_targets
from ensemble import load_models
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
    src = score._encode(tok, ids, SOURCES, cfg.max_seq_length, range(1, len(SOURCES) + 1))
    finished, banned = [], banned_ids(ids)  # padding, as translate.py bans it
    for s in src:
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
    together = score.score_pairs(model, tok, ids, SOURCES, targets, cfg.max_seq_length, 8)
    for i, (source, target) in enumerate(zip(SOURCES, targets, strict=True)):
        alone = score.score_pairs(model, tok, ids, [source], [target], cfg.max_seq_length)
        assert together[i][1] == alone[0][1] == len(encode_targets(tok, [target])[0])
        assert together[i][0] == pytest.approx(alone[0][0], abs=1e-4)


def test_an_empty_line_is_the_empty_sentence(ckpt):
    model, tok, ids, cfg = load_model(ckpt)
    src = score._encode(tok, ids, SOURCES[:1], cfg.max_seq_length, [1])
    got = score.score_pairs(model, tok, ids, [SOURCES[0], "", " "], ["", SOURCES[0], ""], 32)
    eos = torch.tensor([[ids.eos]])
    assert got[0] == (
        pytest.approx(score.score_batch(model, torch.tensor(src), eos, ids).item()),
        1,
    )
    assert got[2] == (pytest.approx(score.score_batch(model, eos, eos, ids).item()), 1)
    labels = torch.tensor(encode_targets(tok, SOURCES[:1]))
    assert got[1][0] == pytest.approx(score.score_batch(model, eos, labels, ids).item())


def test_an_ensemble_of_a_model_with_itself_scores_as_the_model(ckpt):
    model, tok, ids, cfg = load_model(ckpt)
    pair = load_models([str(ckpt), str(ckpt)])[0]
    alone = score.score_pairs(model, tok, ids, SOURCES, SOURCES, cfg.max_seq_length)
    both = score.score_pairs(pair, tok, ids, SOURCES, SOURCES, cfg.max_seq_length)
    assert [n for _, n in both] == [n for _, n in alone]
    assert [s for s, _ in both] == pytest.approx([s for s, _ in alone], abs=1e-4)


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
    sources, targets = LINES, LINES[::-1]  # empty lines among them, on either side
    src.write_text("\n".join(sources) + "\n")
    tgt.write_text("\n".join(targets) + "\n")
    model, tok, ids, cfg = load_model(ckpt)
    expected = score.score_pairs(model, tok, ids, sources, targets, cfg.max_seq_length)
    code, out, err = run_cli(["--checkpoint", ckpt, "--source", src, "--target", tgt], capsys)
    assert code == 0, err
    sums = [float(x) for x in out.splitlines()]
    assert sums == pytest.approx([s for s, _ in expected], abs=1e-5)
    assert all(s < 0 for s in sums)  # an empty target is </s> alone, still a token to predict
    tokens = sum(n for _, n in expected)
    ppl = math.exp(-sum(sums) / tokens)
    assert f"{len(sources)} pairs, {tokens} target tokens" in err and f"{ppl:.2f}" in err
    out_file = tmp_path / "scores.txt"
    argv = ["--checkpoint", ckpt, "--source", src, "--target", tgt, "--normalize"]
    code, _, err = run_cli([*argv, "--output", out_file, "--batch_size", 3], capsys)
    assert code == 0, err
    means = [float(x) for x in out_file.read_text().splitlines()]
    assert means == pytest.approx([s / n for s, n in expected], abs=1e-5)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("misaligned", "misaligned files"),
        ("long target", "target line 2: "),
        ("batch 0", "--batch_size and --max_tokens must be >= 1"),
        ("output is the source", "is the --source file"),
    ],
)
def test_bad_input_is_one_line(ckpt, tmp_path, capsys, case, message):
    src, tgt = tmp_path / "src.en", tmp_path / "tgt.de"
    src.write_text("a man\nthe dog\n")
    tgt.write_text("ein Mann\n" + ("der Hund " * 200 if case == "long target" else "x") + "\n")
    argv = ["--checkpoint", ckpt, "--source", src, "--target", tgt]
    if case == "misaligned":
        tgt.write_text("ein Mann\n")
    elif case == "batch 0":
        argv += ["--batch_size", 0]
    elif case == "output is the source":
        argv += ["--output", src]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and message in err, err
