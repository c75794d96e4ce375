"""ensemble.py: several models decoding as one (the mean of their next-token distributions)."""

import dataclasses
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

import evaluate
import translate
from checkpoint import load_model, save_model_dir
from config import UserError
from data import train_tokenizer
from ensemble import Ensemble, load_models
from model import Transformer
from test_bad_input import assert_one_line_error, run_cli
from test_translate import PAD, TEXTS, cut, make_checkpoint, tiny_setup
from translate import beam_search, greedy, length_penalty, translate_texts


def two_models(tiny_cfg):
    """Two different random models over one vocabulary: other widths, depths and weights, so
    a mix-up of their memories or caches changes the result."""
    first, src, ids = tiny_setup(tiny_cfg)
    torch.manual_seed(1)
    second = Transformer(dataclasses.replace(tiny_cfg, d_model=24, d_ff=48, n_layers=3)).eval()
    return [first, second], src, ids


@torch.no_grad()
def mean_logprobs(models, src_row: torch.Tensor, tokens: list[int], ids) -> torch.Tensor:
    """log of the models' mean next-token probability at each position of `tokens` (T, V),
    from one full forward pass of each model (no cache, no ensemble code)."""
    src = src_row[src_row != PAD][None]
    tgt_in = torch.tensor([[ids.start] + tokens[:-1]])
    probs = torch.stack([F.softmax(m(src, tgt_in).float(), dim=-1)[0] for m in models])
    return probs.mean(0).log()


def test_greedy_follows_the_mean_of_the_models_distributions(tiny_cfg):
    models, src, ids = two_models(tiny_cfg)
    limits = (src != PAD).sum(1) + 4
    out = greedy(Ensemble(models), src, ids, limits, [PAD, ids.start])
    alone = [greedy(m, src, ids, limits, [PAD, ids.start]) for m in models]
    assert not torch.equal(alone[0], alone[1])  # the models disagree, so the mix matters
    for row in range(src.size(0)):
        tokens = cut(out[row].tolist(), ids.eos)
        logp = mean_logprobs(models, src[row], tokens, ids)
        logp[:, [PAD, ids.start]] = -math.inf
        assert logp.argmax(-1).tolist() == tokens


def test_decode_gives_the_log_of_the_mean_distribution(tiny_cfg):
    models, src, ids = two_models(tiny_cfg)
    ens, tgt = Ensemble(models), torch.full((src.size(0), 1), ids.start)
    logp = ens.decode(tgt, ens.encode(src, None), None)
    want = torch.stack([F.softmax(m.decode(tgt, m.encode(src, None), None), -1) for m in models])
    torch.testing.assert_close(logp.exp(), want.mean(0))  # a distribution: it sums to 1


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_scores_are_the_ensembles_log_probabilities(tiny_cfg, alpha):
    models, src, ids = two_models(tiny_cfg)
    limits = (src != PAD).sum(1) + 4
    found = beam_search(Ensemble(models), src, ids, limits, 3, alpha, 3, [PAD, ids.start])
    for row, hyps in enumerate(found):
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            logp = mean_logprobs(models, src[row], h.tokens, ids)
            logprob = logp.gather(1, torch.tensor(h.tokens)[:, None]).sum().item()
            assert h.logprob == pytest.approx(logprob, abs=1e-4)
            assert h.score == pytest.approx(logprob / length_penalty(len(h.tokens), alpha), 1e-4)


def test_a_model_twice_decodes_as_the_model_alone(tiny_cfg):
    model, src, ids = tiny_setup(tiny_cfg)
    twice, limits = Ensemble([model, model]), (src != PAD).sum(1) + 4
    assert torch.equal(
        greedy(twice, src, ids, limits, [PAD]), greedy(model, src, ids, limits, [PAD])
    )
    for a, b in zip(
        beam_search(twice, src, ids, limits, 3, 0.6, 3, [PAD]),
        beam_search(model, src, ids, limits, 3, 0.6, 3, [PAD]),
        strict=True,
    ):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


def test_the_shortest_positional_table_bounds_the_output(tiny_cfg):
    models, src, ids = two_models(tiny_cfg)
    short = Transformer(dataclasses.replace(tiny_cfg, max_len=12)).eval()
    ensemble = Ensemble([models[0], short])
    assert ensemble.cfg.max_len == 12 and not ensemble.training
    assert translate.max_new_tokens(30, ensemble) == 11  # the table's last position: 11
    assert translate.max_new_tokens(30, models[0]) > 11  # the longer member alone allows more
    # </s> banned, so every row runs to its limit: 11 tokens decode through short's table...
    out = greedy(ensemble, src, ids, translate.max_new_tokens(30, ensemble), [PAD, ids.eos])
    assert out.size(1) == 11
    # ...and a budget past it would index beyond the table
    with pytest.raises(ValueError, match="exceeds max_len 12"):
        greedy(ensemble, src, ids, 13, [PAD, ids.eos])


def test_models_with_other_vocabularies_are_refused(tiny_cfg):
    size = tiny_cfg.tgt_vocab_size + 1
    other = dataclasses.replace(tiny_cfg, src_vocab_size=size, tgt_vocab_size=size)
    with pytest.raises(UserError, match="tgt_vocab_size"):
        Ensemble([Transformer(tiny_cfg), Transformer(other)])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two checkpoints with one vocabulary but other widths and weights.

    make_checkpoint trains a tokenizer for each: that they share one vocabulary also checks
    that Unigram training gives the same ids twice (data.canonical_unigram)."""
    tmp = tmp_path_factory.mktemp("ensemble")
    return (
        make_checkpoint(tmp / "a"),
        make_checkpoint(tmp / "b", eos_scale=2.0, d_model=24, d_ff=48, n_layers=1),
    )


LINES = ["the dog sees the cat", "", "a man reads a book", "we eat an apple"]


def test_cli_translates_with_an_ensemble_of_checkpoints(pair, tmp_path):
    src, out = tmp_path / "in.en", tmp_path / "out.de"
    src.write_text("".join(line + "\n" for line in LINES))
    argv = ["--checkpoint", *map(str, pair), "--beam", "2", "--input", str(src)]
    translate.main([*argv, "--output", str(out)])
    loaded = [load_model(p) for p in pair]
    _, tok, ids, cfg = loaded[0]
    expected = translate_texts(Ensemble([m for m, *_ in loaded]), tok, ids, LINES, beam=2)
    assert out.read_text().split("\n")[:-1] == expected
    alone = [translate_texts(m, tok, ids, LINES, beam=2) for m, *_ in loaded]
    assert alone[0] != alone[1]  # (so an ensemble that ignored a model could not pass)

    argv = ["--checkpoint", *map(str, pair), "--source", str(src), "--reference", str(src)]
    report = evaluate.main([*argv, "--beam", "2", "--json", str(tmp_path / "r.json"),
                            "--output", str(tmp_path / "hyp.de")])  # fmt: skip
    # decoded by the ensemble, and scored as decoded (not the first model's translations)
    assert (tmp_path / "hyp.de").read_text().split("\n")[:-1] == expected
    assert report["bleu"] == evaluate.score(expected, LINES)["bleu"]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["checkpoint"] == str(pair[0]) and saved["model_config"]["d_model"] == 16
    assert [m["checkpoint"] for m in saved["ensemble"]] == [str(p) for p in pair]
    assert [m["model_config"]["d_model"] for m in saved["ensemble"]] == [16, 24]
    assert report["bleu"] >= 0 and report["sentences"] == len(LINES)


@pytest.mark.parametrize("share", [True, False])
def test_the_same_pieces_under_other_ids_are_re_indexed(pair, tmp_path, capsys, share):
    """A copy of checkpoint a whose tokenizer numbers its pieces otherwise, its embedding rows
    moved to match (the same model), decodes in an ensemble with a exactly as a alone; with
    share_embeddings false, the rows of both tables (the target's tied to the output layer)."""
    first = pair[0] if share else make_checkpoint(tmp_path / "a", share_embeddings=False)
    model, tok, ids, cfg = load_model(first)
    assert model.cfg.share_embeddings == share
    state = json.loads((first / "tokenizer.json").read_text())
    pieces = state["model"]["vocab"]
    # ids 10..19 rotated (not reversed: a reversal is its own inverse, so the inverse
    # re-indexing would pass too): new id j holds the piece of old id j + 1, id 19 old 10's
    pieces[10:20] = pieces[11:20] + pieces[10:11]
    moved = shutil.copytree(first, tmp_path / "moved")
    (moved / "tokenizer.json").write_text(json.dumps(state))
    with torch.no_grad():
        for embed in [model.src_embed] if share else [model.src_embed, model.tgt_embed]:
            rows = embed.tokens.weight
            rows[10:20] = rows[10:20].roll(-1, 0)
    moved_tok = AutoTokenizer.from_pretrained(moved)
    assert moved_tok.get_vocab() != tok.get_vocab()
    save_model_dir(moved, model.state_dict(), cfg, model.cfg, ids, moved_tok)

    lines = [line for line in LINES if line]
    original = load_model(first)[0]
    alone = translate_texts(original, tok, ids, lines, beam=2)
    capsys.readouterr()
    ensemble, *_ = load_models([str(first), str(moved)])
    assert "10 pieces re-indexed" in capsys.readouterr().err
    re_indexed = ensemble.models[1].state_dict()  # the copy, its rows back where a has them
    assert [k for k, w in original.state_dict().items() if not torch.equal(re_indexed[k], w)] == []
    assert translate_texts(ensemble, tok, ids, lines, beam=2) == alone


def test_checkpoints_trained_the_other_way_are_a_one_line_error(pair, tmp_path, capsys):
    # one joint vocabulary serves en->de and de->en: their ensemble mixed the two languages
    other = tmp_path / "de-en"
    shutil.copytree(pair[1], other)
    saved = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**saved, "src_lang": "de", "tgt_lang": "en"}))
    code, err = run_cli(translate.main, ["--checkpoint", pair[0], other], capsys)
    assert_one_line_error(code, err, f"{other} was trained de->en", "must translate one way")


def test_checkpoints_with_other_vocabularies_are_a_one_line_error(pair, tmp_path, capsys):
    other = make_checkpoint(tmp_path / "other")
    tok = train_tokenizer([t.upper() for t in TEXTS], "unigram", 60)  # other pieces
    assert len(tok) <= 60  # (so load_model accepts it with the model's vocabulary)
    tok.save_pretrained(other)
    with pytest.raises(UserError, match="another vocabulary"):
        load_models([str(pair[0]), str(other)])
    code, err = run_cli(translate.main, ["--checkpoint", pair[0], other], capsys)
    assert_one_line_error(code, err, str(other), "--tokenizer")
