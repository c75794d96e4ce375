"""translate.py: greedy and beam search (cache, batching, EOS, scores), text in/out, the CLI."""

import dataclasses
import os
import select
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import translate
from checkpoint import load_model, save_model_dir
from config import TrainConfig, UserError
from data import SpecialIds, encode_sources, train_tokenizer
from helpers import ROOT
from model import ModelConfig, Transformer
from model.attention import Cache
from translate import Sampler, beam_search, greedy, length_penalty, translate_nbest

PAD, START = 0, 1  # tiny_cfg: pad 0; tokens drawn from 3 .. vocab - 1
TEXTS = [
    "the dog sees the cat", "a man reads a book", "we eat an apple",
    "the children play in the garden", "der hund sieht die katze", "ein mann liest ein buch",
    "wir essen einen apfel", "die kinder spielen im garten",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Helpers: a tiny random model whose decoding has both finished and unfinished rows


def random_src(lengths: list[int], vocab: int, eos: int) -> torch.Tensor:
    """Right-padded (B, S) sources of the given lengths, each ending in eos."""
    src = torch.full((len(lengths), max(lengths)), PAD)
    for row, n in enumerate(lengths):
        src[row, : n - 1] = torch.randint(3, vocab, (n - 1,))
        src[row, n - 1] = eos
    return src


def tiny_setup(tiny_cfg: ModelConfig, lengths=(5, 3, 8, 4, 6, 2)):
    """Model, padded sources and SpecialIds whose eos is a token the model often emits."""
    model = Transformer(tiny_cfg).eval()
    src = random_src(list(lengths), tiny_cfg.src_vocab_size, eos=2)
    free = greedy(model, src, SpecialIds(pad=PAD, eos=-1, start=START), 12, [PAD, START])
    # The commonest token of steps 2..6: some rows end early, others run to the limit.
    eos = int(free[:, 2:6].flatten().mode().values)
    return model, src, SpecialIds(pad=PAD, eos=eos, start=START)


def lengths_of(src: torch.Tensor) -> torch.Tensor:
    return (src != PAD).sum(1)


class Uncached(nn.Module):
    """The same model, but every decoding step re-runs the whole prefix (no key/value cache).

    Its "cache" is only the prefix so far, held as a Cache's k, so that reorder_cache reorders it
    like a real one.
    """

    def __init__(self, model: Transformer):
        super().__init__()
        self.model, self.cfg = model, model.cfg

    def src_mask(self, src):
        return self.model.src_mask(src)

    def encode(self, src, src_mask):
        return self.model.encode(src, src_mask)

    def new_cache(self):
        return [{"prefix": Cache()}]

    def decode(self, tgt, memory, src_mask, cache=None):
        prefix = cache[0]["prefix"]
        prefix.k = tgt if prefix.k is None else torch.cat([prefix.k, tgt], 1)
        return self.model.decode(prefix.k, memory, src_mask)[:, -tgt.size(1) :]


def cut(row: list[int], eos: int) -> list[int]:
    """A greedy output row up to and including its eos, or up to its padding (its limit)."""
    return row[: row.index(eos) + 1] if eos in row else [t for t in row if t != PAD]


@torch.no_grad()
def teacher_forced_logprob(model, src_row: torch.Tensor, tokens: list[int], ids) -> float:
    """log P(tokens | src) from one full forward pass, banned tokens masked as in decoding."""
    src = src_row[src_row != PAD][None]
    tgt_in = torch.tensor([[ids.start] + tokens[:-1]])
    logp = F.log_softmax(model(src, tgt_in).float(), dim=-1)[0]  # (T, V)
    return logp.gather(1, torch.tensor(tokens)[:, None]).sum().item()


# ---------------------------------------------------------------------------------------------
# Search correctness


def test_output_budget_rounds_alike_for_ints_and_tensors(tiny_cfg):
    """a·|x| + b as fairseq's int(a * src_len + b): the batched (tensor) form must not lose a
    token to float32 rounding (1.3 · 90 + 10 is 126.99999 in float32)."""
    model = Transformer(dataclasses.replace(tiny_cfg, max_len=1000))
    lengths = torch.arange(1, 300)
    for a in (0.7, 1.1, 1.3, 1.5, 2.0):
        batched = translate.max_new_tokens(lengths, model, a, 10).tolist()
        assert batched == [translate.max_new_tokens(n, model, a, 10) for n in range(1, 300)]
    assert translate.max_new_tokens(torch.tensor([90]), model, 1.3, 10).item() == 127
    # both stop one short of the positional table (its first position holds the start token)
    short = Transformer(dataclasses.replace(tiny_cfg, max_len=12))
    assert translate.max_new_tokens(torch.tensor([30]), short).tolist() == [11]
    assert translate.max_new_tokens(30, short) == 11


def test_cached_and_uncached_decoding_give_identical_tokens(tiny_cfg):
    model, src, ids = tiny_setup(tiny_cfg)
    limits = lengths_of(src) + 4
    banned = [PAD, START]
    cached = greedy(model, src, ids, limits, banned)
    assert cached.tolist() == greedy(Uncached(model), src, ids, limits, banned).tolist()
    for alpha in (0.0, 1.0):
        a = beam_search(model, src, ids, limits, 3, alpha, 3, banned)
        b = beam_search(Uncached(model), src, ids, limits, 3, alpha, 3, banned)
        assert [[h.tokens for h in f] for f in a] == [[h.tokens for h in f] for f in b]


def test_batch_equals_one_sentence_at_a_time(tiny_cfg):
    model, src, ids = tiny_setup(tiny_cfg)
    limits = lengths_of(src) * 3 // 2 + 2  # per sentence: the batch must not change them
    batch_greedy = greedy(model, src, ids, limits, [PAD])
    batch_beam = beam_search(model, src, ids, limits, 4, 0.6, 2, [PAD])
    for row in range(src.size(0)):
        alone = src[row : row + 1, : int(lengths_of(src)[row])]
        one = greedy(model, alone, ids, limits[row : row + 1], [PAD])[0].tolist()
        assert cut(one, ids.eos) == cut(batch_greedy[row].tolist(), ids.eos)
        found = beam_search(model, alone, ids, limits[row : row + 1], 4, 0.6, 2, [PAD])[0]
        assert [h.tokens for h in found] == [h.tokens for h in batch_beam[row]]
        for h, g in zip(found, batch_beam[row], strict=True):
            assert h.score == pytest.approx(g.score, abs=1e-4)


def test_greedy_drops_finished_sentences_from_the_batch(tiny_cfg, monkeypatch):
    model, src, ids = tiny_setup(tiny_cfg)
    limits = lengths_of(src) + 4
    # each sentence decoded alone: a batch of one never drops a row before it ends
    alone = [
        cut(greedy(model, src[r : r + 1], ids, limits[r : r + 1], [PAD])[0].tolist(), ids.eos)
        for r in range(src.size(0))
    ]
    decoded = [len(a) for a in alone]  # steps each sentence needs: up to its eos, or its limit
    assert len(set(decoded)) > 1  # sentences end at different steps, or this proves nothing
    rows_per_step = []
    decode = model.decode
    monkeypatch.setattr(
        model,
        "decode",
        lambda tgt, *a, **k: rows_per_step.append(tgt.size(0)) or decode(tgt, *a, **k),
    )
    out = greedy(model, src, ids, limits, [PAD])
    assert [cut(row, ids.eos) for row in out.tolist()] == alone
    assert out.size(1) == max(decoded)
    assert rows_per_step == [sum(n > step for n in decoded) for step in range(max(decoded))]


def test_padding_free_batch_drops_its_mask_and_decodes_the_same(tiny_cfg, monkeypatch):
    model, src, ids = tiny_setup(tiny_cfg)
    full = src[:, : int(lengths_of(src).min())]  # cut to the shortest: no padding left
    assert translate.decoding_mask(model, full) is None
    assert translate.decoding_mask(model, src) is not None  # tiny_setup's batch is padded
    limits = torch.full((full.size(0),), 6)
    without = greedy(model, full, ids, limits, [PAD]), beam_search(model, full, ids, limits, 3)
    monkeypatch.setattr(translate, "decoding_mask", lambda m, s: m.src_mask(s))  # all-True mask
    masked = greedy(model, full, ids, limits, [PAD]), beam_search(model, full, ids, limits, 3)
    assert without[0].tolist() == masked[0].tolist()
    assert [[h.tokens for h in f] for f in without[1]] == [[h.tokens for h in f] for f in masked[1]]


def test_beam_of_one_is_greedy(tiny_cfg):
    model, src, ids = tiny_setup(tiny_cfg)
    limits = lengths_of(src) + 5
    expected = [cut(r, ids.eos) for r in greedy(model, src, ids, limits, [PAD]).tolist()]
    found = beam_search(model, src, ids, limits, beam=1, alpha=0.0, banned=[PAD])
    assert [f[0].tokens for f in found] == expected
    assert any(ids.eos in r for r in expected) and any(ids.eos not in r for r in expected)


def test_decoding_stops_at_eos_and_never_emits_padding(tiny_cfg):
    model, src, ids = tiny_setup(tiny_cfg)
    with torch.no_grad():  # make padding and the start token the most likely outputs
        model.tgt_embed.tokens.weight[[PAD, START]] *= 50
    banned = translate.banned_ids(ids)
    assert banned == [PAD, START]
    # without the ban they are emitted: the ban is what keeps them out below
    unbanned = greedy(model, src, ids, 10, []).tolist()
    assert any(t in (PAD, START) for row in unbanned for t in cut(row, ids.eos)[:-1])
    out = greedy(model, src, ids, 10, banned).tolist()
    assert any(ids.eos in row for row in out)  # some rows end before their limit
    for row in out:
        end = row.index(ids.eos) if ids.eos in row else len(row)
        assert PAD not in row[:end] and START not in row[:end]
        assert all(t == PAD for t in row[end + 1 :])  # only padding after the first eos
    for found in beam_search(model, src, ids, 10, 3, 0.6, 3, banned):
        for h in found:
            assert PAD not in h.tokens and START not in h.tokens
            assert ids.eos not in h.tokens[:-1]  # eos, if any, ends the hypothesis
    # decoding stops once every row has its eos
    one = greedy(model, src[:1], ids, 10, banned)[0].tolist()
    assert ids.eos not in one or one[-1] == ids.eos


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_beam_returns_hypotheses_in_score_order_with_true_scores(tiny_cfg, alpha):
    model, src, ids = tiny_setup(tiny_cfg)
    limits = lengths_of(src) + 4
    found = beam_search(model, src, ids, limits, beam=4, alpha=alpha, nbest=4, banned=[PAD])
    n_eos = n_limit = 0
    for row, hyps in enumerate(found):
        assert 1 <= len(hyps) <= 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)  # no duplicates
        for h in hyps:
            logprob = teacher_forced_logprob(model, src[row], h.tokens, ids)
            assert h.logprob == pytest.approx(logprob, abs=1e-4)
            assert h.score == pytest.approx(
                logprob / length_penalty(len(h.tokens), alpha), abs=1e-4
            )
            if h.tokens[-1] == ids.eos:
                n_eos += 1
            else:  # ran out of room: exactly at the sentence's limit
                assert len(h.tokens) == int(limits[row])
                n_limit += 1
    assert n_eos and n_limit  # both endings were exercised


@pytest.mark.parametrize("k, vocab", [(1, 9), (3, 50), (4, 7), (5, 6)])
def test_best_continuations_are_the_top_2k_of_all_k_times_v(k, vocab):
    """The two-pass selection returns what one top-k over each sentence's K·V continuations
    returns: the same scores, beams and tokens, best first, with banned (-inf) tokens and a
    vocabulary smaller than 2K."""
    torch.manual_seed(k)
    n = 6
    scores = torch.randn(n, k).sort(dim=1, descending=True).values
    scores[0, 1:] = -torch.inf  # a first step: one live beam
    logp = F.log_softmax(torch.randn(n * k, vocab) * 3, dim=-1)
    logp[:, [0, 2]] = -torch.inf  # banned ids
    logp[1::4] += 5  # some beams hold most of the best continuations
    top, beam_of, token = translate.best_continuations(scores, logp)
    flat = (scores.view(-1, 1) + logp).view(n, k * vocab)  # every continuation
    ref_top, ref_index = flat.topk(2 * k, dim=1)
    assert torch.equal(top, ref_top)
    finite = ref_top > -torch.inf  # below that, which -inf comes first is arbitrary
    assert torch.equal(beam_of[finite], (ref_index // vocab)[finite])
    assert torch.equal(token[finite], (ref_index % vocab)[finite])
    assert finite[:, : min(2 * k, vocab - 2)].all()  # the test does compare real candidates


def test_finished_hypotheses_are_ranked_and_kept_by_score_not_log_probability():
    # ids: 0 pad, 1 start, 2 eos, 3 a. start: eos .3, a .7; a: eos .5, a .5. With alpha 1.5
    # "a eos" (-1.05 / 1.26) beats "a a eos" (-1.74 / 1.54), which beats "eos" (-1.20 / 1)
    e = 1e-9
    probs = [[0.25] * 4, [e, e, 0.3, 0.7], [0.25] * 4, [e, e, 0.5, 0.5]]
    model, ids = Table(probs), SpecialIds(pad=0, eos=2, start=1)
    found = beam_search(model, torch.tensor([[3, 2]]), ids, 10, 3, 1.5, 3, [0, 1])[0]
    assert [h.tokens for h in found] == [[3, 2], [3, 3, 2], [2]]


def test_early_stopping_stops_early():
    # K finished hypotheses that no live beam can beat end the search, long before the limit
    e = 1e-9
    probs = [[0.25] * 4, [e, e, 0.9, 0.1], [0.25] * 4, [e, e, 0.9, 0.1]]
    model, ids = Table(probs), SpecialIds(pad=0, eos=2, start=1)
    calls, decode = [0], model.decode

    def counted(*args, **kwargs):
        calls[0] += 1
        return decode(*args, **kwargs)

    model.decode = counted
    beam_search(model, torch.tensor([[3, 2]]), ids, 40, 2, 0.6, 2, [0, 1])
    assert calls[0] <= 5


@pytest.mark.parametrize("alpha", [1.5, -0.5])
def test_early_stopping_never_changes_the_result_of_random_tables(alpha):
    # with alpha > 0 a live beam's best score is at the longest length it may reach: a bound
    # taken at the next length stopped too early (4 of 400 such tables decoded otherwise)
    gen = torch.Generator().manual_seed(0)
    ids, src = SpecialIds(pad=0, eos=2, start=1), torch.tensor([[3, 2]])
    for _ in range(100):
        probs = torch.rand(6, 6, generator=gen) ** 3 + 1e-3
        model = Table((probs / probs.sum(-1, keepdim=True)).tolist())
        early, full = (beam_search(model, src, ids, 12, 2, alpha, 2, [0, 1], early_stop=stop)[0]
                       for stop in (True, False))  # fmt: skip
        assert [h.tokens for h in early] == [h.tokens for h in full]


@pytest.mark.parametrize("alpha", [0.0, 0.6, -0.5])
def test_early_stopping_never_changes_the_result(tiny_cfg, alpha):
    """The stopping rule is exact: running every sentence to its limit finds nothing better."""
    model, src, ids = tiny_setup(tiny_cfg)
    limits = lengths_of(src) + 6
    early = beam_search(model, src, ids, limits, 3, alpha, 3, [PAD])
    full = beam_search(model, src, ids, limits, 3, alpha, 3, [PAD], early_stop=False)
    assert [[h.tokens for h in f] for f in early] == [[h.tokens for h in f] for f in full]


class Table(nn.Module):
    """A model whose next-token distribution is a fixed table: P(next | last token) = probs[last],
    whatever the source."""

    def __init__(self, probs):
        super().__init__()
        v = len(probs)
        self.logp, self.cfg = torch.tensor(probs).log(), ModelConfig(v, v, 0, 4, 1, 4, 1)

    def src_mask(self, src):
        return (src != 0)[:, None, None, :]

    def encode(self, src, src_mask):
        return torch.zeros(src.size(0), src.size(1), 4)

    def new_cache(self):
        return []

    def decode(self, tgt, memory, src_mask, cache=None):
        return self.logp[tgt]  # (B, 1, V)


# ---------------------------------------------------------------------------------------------
# Sampling (--sampling): one token per sentence drawn from Table's fixed distribution

# ids: 0 pad, 1 start (both banned), 2 eos, 3 a, 4 b, 5 c; the start token's row is the one drawn
FIRST = [0.05, 0.05, 0.12, 0.40, 0.30, 0.08]


def first_tokens(sampler, n=20000):
    """The first token of n sentences (lines 1..n), each one draw from FIRST."""
    model, ids = Table([FIRST] * 6), SpecialIds(pad=0, eos=2, start=1)
    src = torch.full((n, 2), 3)
    return greedy(model, src, ids, 1, [0, 1], sampler, list(range(1, n + 1)))[:, 0]


@pytest.mark.parametrize(
    ("sampler", "expected"),
    [
        # the distribution left after banning pad and start, renormalised
        (Sampler(), {2: 0.12 / 0.9, 3: 0.40 / 0.9, 4: 0.30 / 0.9, 5: 0.08 / 0.9}),
        # temperature 0.5: p ** (1 / 0.5), renormalised
        (Sampler(temperature=0.5), {t: FIRST[t] ** 2 / 0.2708 for t in (2, 3, 4, 5)}),
        # top 2: a and b
        (Sampler(topk=2), {3: 0.4 / 0.7, 4: 0.3 / 0.7}),
        # nucleus 0.8 of the renormalised a .444, b .333, eos .133, c .089: a, b, then eos (a,
        # b and eos, before c, hold .911 >= .8: c is cut)
        (Sampler(topp=0.8), {3: 0.40 / 0.82, 4: 0.30 / 0.82, 2: 0.12 / 0.82}),
        # both: the top 3, renormalised (a .488, b .366, eos .146), then their nucleus 0.85: a
        # and b hold .854 >= .85, so eos is cut (of the whole distribution they hold .777)
        (Sampler(topk=3, topp=0.85), {3: 0.4 / 0.7, 4: 0.3 / 0.7}),
    ],
)
def test_sampling_draws_from_the_cut_and_renormalised_distribution(sampler, expected):
    drawn = first_tokens(sampler)
    counts = torch.bincount(drawn, minlength=6) / drawn.numel()
    got = {t: float(c) for t, c in enumerate(counts) if c}
    assert got.keys() == expected.keys()  # banned and cut tokens never drawn
    for t, p in expected.items():  # 20,000 draws: a standard error of at most 0.0035
        assert abs(got[t] - p) < 0.015, (t, got[t], p)


def test_a_draw_at_either_end_of_the_unit_interval_is_a_token_that_can_be_drawn():
    # inverse CDF: u = 0 must not land on a banned token of probability 0 before the first
    # allowed one, and u * total rounding up to the total must not run past the vocabulary
    logits = torch.tensor([[-torch.inf, -torch.inf, 0.0, 1.0, -torch.inf]] * 2)
    drawn = Sampler().pick(logits, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert drawn.tolist() == [2, 3]


def test_a_tiny_temperature_draws_the_most_probable_token_not_past_the_vocabulary():
    # 5 / 1e-38 overflowed to inf, the softmax to NaN, and the draw ran past the vocabulary
    logits = torch.tensor([[5.0, 1.0, 1.0, 1.0, 1.0, -torch.inf]] * 3)
    drawn = Sampler(temperature=1e-38).pick(
        logits, torch.tensor([0.0, 0.5, 0.999], dtype=torch.float64)
    )
    assert drawn.tolist() == [0, 0, 0]


def test_top_p_keeps_a_token_only_while_the_more_probable_hold_less_than_p():
    # two tokens of probability 0.5 each, top-p 0.5: the first alone holds p, the second is cut
    logits = torch.tensor([[0.0, 0.0, -torch.inf, -torch.inf]]).repeat(1000, 1)
    u = torch.rand(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert len(set(Sampler(topk=2, topp=0.5).pick(logits, u).tolist())) == 1


def test_sampling_never_draws_a_banned_token_however_probable():
    model, ids = Table([[0.97, 0.02, 0.005, 0.005, 0, 0]] * 6), SpecialIds(0, 2, 1)
    src = torch.full((2000, 2), 3)
    out = greedy(model, src, ids, 1, [0, 1], Sampler(temperature=50.0), list(range(2000)))
    assert set(out[:, 0].tolist()) <= {2, 3, 4, 5}


def test_sampling_from_the_top_token_is_greedy(tiny_cfg):
    model, src, ids = tiny_setup(tiny_cfg)
    limits = lengths_of(src) + 4
    lines = list(range(1, src.size(0) + 1))
    expected = greedy(model, src, ids, limits, [PAD, START])
    for sampler in (Sampler(topk=1), Sampler(topp=1e-6), Sampler(temperature=1e-4)):
        got = greedy(model, src, ids, limits, [PAD, START], sampler, lines)
        assert torch.equal(got, expected)


def test_a_lines_sample_depends_on_the_seed_and_its_line_number_alone(tiny_cfg):
    model, src, ids = tiny_setup(tiny_cfg)
    limits, lines = lengths_of(src) + 4, [7, 3, 12, 40, 5, 9]

    def sample(seed, rows, numbers):
        out = greedy(model, src[rows], ids, limits[rows], [PAD, START], Sampler(seed=seed),
                     numbers)  # fmt: skip
        return [cut(r, ids.eos) for r in out.tolist()]

    batch = sample(0, list(range(6)), lines)
    # alone, or in another batch, a line gets the same draws
    assert [sample(0, [r], [lines[r]])[0] for r in range(6)] == batch
    assert sample(0, [4, 1], [lines[4], lines[1]]) == [batch[4], batch[1]]
    # another seed, or the same sentence on other lines, gives other translations
    assert sample(1, list(range(6)), lines) != batch
    same = sample(0, [2] * 6, list(range(100, 106)))
    assert len(set(map(tuple, same))) > 1


def test_length_penalty_is_gnmts():
    # lp(L) = ((5 + L) / 6) ** alpha, worked out by hand: 1 at length 1, (12 / 6) ** alpha at 7
    for alpha in (0.0, 0.6, -0.5, 2.0):
        assert length_penalty(1, alpha) == 1.0
    assert length_penalty(7, 1.0) == 2.0 and length_penalty(7, 0.5) == pytest.approx(2**0.5)
    assert length_penalty(7, 0.0) == 1.0


def test_early_stopping_with_a_negative_alpha_waits_for_a_live_beam_that_can_still_win():
    # alpha < 0 favours short output, so lp is largest at the next length, not at the limit:
    # a bound taken at the limit gave up on "a c" while it could still (and does) beat the worst
    # finished hypothesis. ids: 0 pad, 1 start, 2 eos, 3 a, 4 b, 5 c.
    e = 1e-9
    probs = [
        [1 / 6] * 6,
        [e, e, 0.3, 0.6, 0.1, e],  # start: eos 0.3 (finished first), a 0.6, b 0.1
        [1 / 6] * 6,
        [e, e, 0.05, e, e, 0.95],  # a: c
        [e, e, 0.99, e, e, 0.01],  # b: eos (the worst finished: "b eos", score -2.70)
        [e, e, 0.99, 0.01, e, e],  # c: eos ("a c eos": -0.76, the best)
    ]
    model, ids = Table(probs), SpecialIds(pad=0, eos=2, start=1)
    src = torch.tensor([[3, 2]])
    found = [beam_search(model, src, ids, 60, beam=2, alpha=-1.0, nbest=2, banned=[0, 1],
                         early_stop=early)[0] for early in (True, False)]  # fmt: skip
    assert [[h.tokens for h in f] for f in found] == [[[3, 5, 2], [2]]] * 2


def test_beam_search_finds_the_best_path_of_a_known_distribution():
    """Greedy is fooled, beam is not."""
    # ids: 0 pad, 1 start, 2 eos, 3 "a". From start: eos 0.4, a 0.6; after a: eos 0.5, a 0.5.
    # Greedy: a, then a tie... -> "a eos" = 0.3; best is "eos" = 0.4.
    probs = [[0.25] * 4, [1e-9, 1e-9, 0.4, 0.6], [0.25] * 4, [1e-9, 1e-9, 0.5, 0.5]]
    model, ids = Table(probs), SpecialIds(pad=0, eos=2, start=1)
    src = torch.tensor([[3, 2]])
    assert greedy(model, src, ids, 5, [0, 1])[0].tolist()[:1] == [3]
    best = beam_search(model, src, ids, 5, beam=2, alpha=0.0, nbest=2, banned=[0, 1])[0]
    assert best[0].tokens == [2] and best[0].logprob == pytest.approx(torch.tensor(0.4).log())
    assert best[1].tokens == [3, 2]


# ---------------------------------------------------------------------------------------------
# Text in, text out


def make_checkpoint(
    path: Path, eos_scale: float = 3.0, test_data: str | None = None, tok=None, **model_overrides
) -> Path:
    """A tiny random checkpoint with a real (trained, or the given) tokenizer, saved as train.py
    saves one.

    eos_scale enlarges the eos embedding so that some sentences end before their limit;
    model_overrides change the ModelConfig (e.g. pre_norm=True).
    """
    tok = tok or train_tokenizer(TEXTS, "unigram", 60)
    ids = SpecialIds.of(tok)
    cfg = TrainConfig(
        tokenizer={"train": "unigram", "vocab_size": 60}, max_seq_length=32, max_tokens=256,
        model_dim=16, hidden_dims=32, num_heads=2, num_layers=2, dropout=0.0,
        output_dir=str(path.parent), test_data=test_data,
    )  # fmt: skip
    model_cfg = ModelConfig(
        src_vocab_size=len(tok), tgt_vocab_size=len(tok), pad_id=ids.pad, d_model=16,
        n_heads=2, d_ff=32, n_layers=2, dropout=0.0, max_len=2 * 32 + 16,
    )  # fmt: skip
    model_cfg = dataclasses.replace(model_cfg, **model_overrides)
    torch.manual_seed(0)
    model = Transformer(model_cfg)
    with torch.no_grad():
        model.tgt_embed.tokens.weight[ids.eos] *= eos_scale
    save_model_dir(path, model.state_dict(), cfg, model_cfg, ids, tok)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("translate") / "ckpt")


LINES = ["the dog sees the cat", "", "a man reads a book", "   ", "we eat an apple",
         "the children play in the garden", "der hund", "ein"]  # fmt: skip


@pytest.mark.parametrize("beam", [1, 3])
def test_texts_in_batches_equal_texts_one_at_a_time(ckpt, beam):
    model, tok, ids, cfg = load_model(ckpt)
    batched = translate_nbest(model, tok, ids, LINES, 4, cfg.max_seq_length, beam=beam, nbest=beam)
    for line, pairs in zip(LINES, batched, strict=True):
        alone = translate_nbest(
            model, tok, ids, [line], 1, cfg.max_seq_length, beam=beam, nbest=beam
        )
        assert [t for t, _ in alone[0]] == [t for t, _ in pairs]
    assert batched[1] == [] and batched[3] == []  # empty lines: no hypotheses
    assert all(len(p) >= 1 for i, p in enumerate(batched) if LINES[i].strip())


def test_progress_counts_every_line_once(ckpt):
    model, tok, ids, cfg = load_model(ckpt)

    class Bar:
        n, updates = 0, 0

        def update(self, k):
            self.n, self.updates = self.n + k, self.updates + 1

    bar = Bar()
    lines = [*LINES, "", "\u200b", *LINES]
    translate_nbest(model, tok, ids, lines, 2, cfg.max_seq_length, progress=bar)
    assert bar.n == len(lines) and bar.updates > 2  # batch by batch, the empty ones at once


def test_empty_lines_never_reach_the_model(ckpt, monkeypatch):
    model, tok, ids, cfg = load_model(ckpt)

    def fail(*a, **k):
        raise AssertionError("the model was run")

    monkeypatch.setattr(translate, "greedy", fail)
    # zero-width, BOM, directional and control characters: blank to the tokenizer, not to strip()
    blank = ["", "  ", "\t", "\u200b", "\x07", "\ufeff\u200e \x00"]
    assert translate.translate_texts(model, tok, ids, blank, 8) == [""] * len(blank)


def test_an_unknown_word_in_the_output_is_shown_not_dropped(ckpt, monkeypatch):
    # fairseq and Marian print <unk>; skip_special_tokens used to delete it from the text
    model, tok, ids, cfg = load_model(ckpt)
    words = tok(text_target=["the dog"], add_special_tokens=False)["input_ids"][0]
    hypothesis = [words[0], tok.unk_token_id, *words[1:], ids.eos, ids.pad]

    def decoded(model, src, *args):
        return [[(hypothesis, None, None)] for _ in range(len(src))]  # (tokens, score, logprob)

    monkeypatch.setattr(translate, "_decode", decoded)
    (text,) = translate.translate_texts(model, tok, ids, ["anything"], 8)
    assert tok.unk_token in text and "</s>" not in text and "<pad>" not in text
    assert text.replace(tok.unk_token, " ").split() == ["the", "dog"]


def test_translate_texts_keeps_train_py_signature(ckpt):
    model, tok, ids, cfg = load_model(ckpt)
    out = translate.translate_texts(model, tok, ids, LINES, 3, cfg.max_seq_length)  # positional
    assert len(out) == len(LINES) and out[1] == "" and all("\n" not in o for o in out)
    beam = translate.translate_texts(model, tok, ids, LINES, 3, cfg.max_seq_length, beam=2)
    assert len(beam) == len(LINES)


def test_sources_are_truncated_to_the_positional_table_whatever_the_limit_asked(ckpt, capsys):
    # an ensemble member's max_seq_length may exceed another's table: the table wins
    model, tok, ids, _ = load_model(ckpt)
    line = " ".join(["the children play"] * 40)  # far over the table's 80 positions
    found = translate_nbest(model, tok, ids, [line], 1, max_src_len=1000)
    assert len(found) == 1 and "truncated to 80" in capsys.readouterr().err


def test_a_source_of_exactly_the_limit_is_not_truncated(ckpt, capsys):
    _, tok, ids, _ = load_model(ckpt)
    encoded = encode_sources(tok, ["the children play in the garden"])[0]
    n = len(encoded)
    assert translate._encode(tok, ids, ["the children play in the garden"], n, [1]) == [encoded]
    assert capsys.readouterr().err == ""
    cut = translate._encode(tok, ids, ["the children play in the garden"], n - 1, [1])[0]
    assert cut == encoded[: n - 2] + [ids.eos] and "truncated to" in capsys.readouterr().err


def test_long_input_is_truncated_with_a_warning_naming_the_line(ckpt, tmp_path, capsys):
    src = tmp_path / "in.en"
    src.write_text("a dog\n" + " ".join(["the children play"] * 20) + "\n\nthe cat\n")
    out = tmp_path / "out.de"
    translate.main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out),
                    "--chunk_size", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert "warning: line 2:" in err and "truncated to 32" in err
    assert "line 1" not in err and "line 4" not in err
    lines = out.read_text().split("\n")
    assert len(lines) == 5 and lines[-1] == "" and lines[2] == ""


def test_nbest_lines_are_parseable(ckpt, tmp_path):
    src = tmp_path / "in.en"
    src.write_text("\n".join(LINES) + "\n")
    out = tmp_path / "nbest.tsv"
    translate.main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out),
                    "--beam", "3", "--nbest", "3", "--chunk_size", "3"])  # fmt: skip
    got = out.read_text().split("\n")[:-1]
    assert len(got) == len(LINES)
    for line, text in zip(LINES, got, strict=True):
        fields = text.split("\t")
        pairs = list(zip(fields[0::2], map(float, fields[1::2]), strict=False))
        if not line.strip():
            assert text == "" and pairs == []
            continue
        assert 1 <= len(pairs) <= 3 and len(fields) == 2 * len(pairs)
        assert [s for _, s in pairs] == sorted((s for _, s in pairs), reverse=True)
    with pytest.raises(UserError, match="nbest"):
        translate.main(["--checkpoint", str(ckpt), "--input", str(src), "--nbest", "2"])
    # --nbest 1 is the first pair of each line, score included; no --nbest: its text alone
    for flags, name in ((["--nbest", "1"], "one.tsv"), ([], "plain.de")):
        translate.main(["--checkpoint", str(ckpt), "--input", str(src), "--output",
                        str(tmp_path / name), "--beam", "3", *flags])  # fmt: skip
    one = (tmp_path / "one.tsv").read_text().split("\n")[:-1]
    assert one == ["\t".join(text.split("\t")[:2]) for text in got]
    assert (tmp_path / "plain.de").read_text().split("\n")[:-1] == [t.split("\t")[0] for t in got]


def searched(ckpt, text: str, beam: int, alpha: float, nbest: int, max_new: int):
    """One line decoded by greedy/beam_search directly: what the CLI must print for it."""
    model, tok, ids, _ = load_model(ckpt)
    src = torch.tensor([encode_sources(tok, [text])[0]])
    banned = translate.banned_ids(ids)
    if beam == 1:
        found = [(greedy(model, src, ids, max_new, banned)[0].tolist(), None)]
    else:
        hyps = beam_search(model, src, ids, max_new, beam, alpha, nbest, banned)[0]
        found = [(h.tokens, h.score) for h in hyps]
    return [
        (" ".join(tok.decode(translate.strip_special(t, ids)).split()), score) for t, score in found
    ]


def test_cli_nbest_length_penalty_and_budget_reach_the_search(ckpt, tmp_path):
    src, out = tmp_path / "in.en", tmp_path / "out.tsv"
    texts = [t for t in LINES if t.strip()]
    src.write_text("\n".join(texts) + "\n")

    def cli(*extra):
        translate.main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out),
                        *extra])  # fmt: skip
        return out.read_text().split("\n")[:-1]

    for alpha in (0.0, 1.5):
        got = cli("--beam", "3", "--nbest", "3", "--length_penalty", str(alpha))
        for text, line in zip(texts, got, strict=True):
            fields = line.split("\t")
            want = searched(ckpt, text, 3, alpha, 3, max_new_tokens_of(ckpt, text, 1.5, 10))
            assert fields[0::2] == [t for t, _ in want]
            assert list(map(float, fields[1::2])) == pytest.approx([s for _, s in want], abs=1e-4)
        assert any(line.count("\t") > 1 for line in got)  # some line holds more than one pair
    # a budget of 2 new tokens (a·len + b with a = 0): greedy stops there
    short = cli("--max_len_a", "0", "--max_len_b", "2")
    assert short == [searched(ckpt, t, 1, 0.0, 1, 2)[0][0] for t in texts]
    assert short != cli()


def test_cli_sampling_options_reach_the_draws_and_a_line_keeps_its_draws(ckpt, tmp_path):
    src, out = tmp_path / "in.en", tmp_path / "out.de"
    src.write_text("\n".join(LINES * 3) + "\n")

    def cli(*extra):
        translate.main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out),
                        *extra])  # fmt: skip
        return out.read_text().split("\n")[:-1]

    greedy_out = cli()
    assert cli("--sampling", "--sampling_topk", "1") == greedy_out
    assert cli("--sampling", "--temperature", "1e-4") == greedy_out
    drawn = cli("--sampling", "--seed", "5")
    assert drawn != greedy_out and drawn != cli("--sampling", "--seed", "6")
    assert drawn[:8] != drawn[8:16]  # the same text on other lines: other draws
    # in other batches and chunks (the lines numbered across chunks), the same draws
    assert cli("--sampling", "--seed", "5", "--batch_size", "1", "--chunk_size", "5") == drawn
    assert cli("--sampling", "--seed", "5", "--sampling_topp", "0.3") != drawn


def test_cli_says_which_checkpoint_of_a_run_decodes(ckpt, tmp_path, capsys):
    import shutil

    shutil.copytree(ckpt, tmp_path / "run" / "best")
    src = tmp_path / "in.en"
    src.write_text("the dog sees the cat\n")
    for given, said in ((tmp_path / "run", f"decoded with {tmp_path}/run/best"), (ckpt, "")):
        translate.main(["--checkpoint", str(given), "--input", str(src), "--output",
                        str(tmp_path / "out.de")])  # fmt: skip
        assert capsys.readouterr().err.strip() == (f"{given}: {said}" if said else "")


def max_new_tokens_of(ckpt, text: str, a: float, b: int) -> int:
    model, tok, _, _ = load_model(ckpt)
    return min(int(a * len(encode_sources(tok, [text])[0]) + b), model.cfg.max_len - 1)


def test_cli_streams_chunks_through_a_pipe(ckpt):
    """Output comes before the input is closed: with the default chunk of 2,000 lines, lines
    that nothing follows yet (typed, or fed by a program that waits for its answer: it waited
    for the end of the input, or for 2,000 lines, before)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def read_lines(proc, n: int) -> list[str]:  # within 5 minutes, or fail (never hang)
        got = b""
        while got.count(b"\n") < n:
            assert select.select([proc.stdout], [], [], 300)[0], f"no output yet: {got!r}"
            got += os.read(proc.stdout.fileno(), 1 << 16)
        return got.decode().splitlines(keepends=True)

    proc = subprocess.Popen(
        [sys.executable, "translate.py", "--checkpoint", str(ckpt)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, bufsize=0,
    )  # fmt: skip
    try:
        proc.stdin.write(b"the dog sees the cat\n\n")
        first = read_lines(proc, 2)
        assert len(first) == 2 and first[1] == "\n", first
        proc.stdin.write(b"a man reads a book\n")
        assert len(read_lines(proc, 1)) == 1
        proc.stdin.write(b"a man\n")
        proc.stdin.close()
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        assert rest.count(b"\n") == 1
        assert proc.stderr.read() == b""  # no progress bar written into a pipe
    finally:
        proc.kill()


def test_stdin_pauses_when_no_complete_line_is_waiting(monkeypatch):
    r, w = os.pipe()
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=os.fdopen(r, "rb")))
    stdin = translate.Stdin(grace=0.01)
    lines = iter(stdin)
    os.write(w, b"one\ntwo\nthr")  # two lines and the start of a third
    assert next(lines) == b"one\n" and not stdin.paused()  # "two" is waiting
    assert next(lines) == b"two\n" and stdin.paused()  # "thr" is no line yet: answer "two"
    os.write(w, b"ee\r\nfour")
    assert next(lines) == b"three\r\n" and stdin.paused()
    os.close(w)
    assert not stdin.paused()  # the end: no wait
    assert list(lines) == [b"four"]  # the last line, without a line end


def test_stdin_read_earlier_is_not_lost(monkeypatch):
    r, w = os.pipe()
    os.write(w, b"header\nthe dog\nthe cat\n")
    os.close(w)
    buffer = os.fdopen(r, "rb")
    assert buffer.readline() == b"header\n"  # the buffer now holds the other lines too
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=buffer))
    assert list(translate.Stdin()) == [b"the dog\n", b"the cat\n"]


def test_chunks_end_where_stdin_pauses():
    """A pipe or file delivering lines faster than they translate fills whole chunks."""
    lines = [(n, f"s{n}") for n in range(1, 8)]
    assert [first for first, _ in translate.read_chunks(lines, 3)] == [1, 4, 7]
    pauses = iter([False, True, False, False, False, False, False])
    got = list(translate.read_chunks(lines, 3, lambda: next(pauses)))
    assert got == [(1, ["s1", "s2"]), (3, ["s3", "s4", "s5"]), (6, ["s6", "s7"])]


def test_cli_keeps_freed_memory_on_cpu(ckpt, tmp_path, monkeypatch):
    """translate.py decodes with glibc keeping freed memory, as train.py trains (docs/speed.md)."""
    calls = []
    monkeypatch.setattr(translate, "keep_freed_memory", lambda device: calls.append(device) or True)
    src = tmp_path / "in.en"
    src.write_text("a dog\n")
    translate.main(["--checkpoint", str(ckpt), "--input", str(src), "--output",
                    str(tmp_path / "out.de"), "--device", "cpu"])  # fmt: skip
    assert calls == ["cpu"]


@pytest.mark.parametrize("beam", [1, 3])
def test_mixed_precision_bf16_decodes_in_bf16_autocast(ckpt, beam):
    """bf16 really decodes under autocast (the logits come out in bf16); the default is fp32."""
    model, tok, ids, cfg = load_model(ckpt)
    seen = {"no": set(), "bf16": set()}
    texts = {}
    for precision in seen:
        hook = model.out_proj.register_forward_hook(
            lambda m, i, out, p=precision: seen[p].add(out.dtype)
        )
        texts[precision] = translate.translate_texts(
            model, tok, ids, LINES, 4, cfg.max_seq_length, beam=beam, mixed_precision=precision
        )
        hook.remove()
    assert seen == {"no": {torch.float32}, "bf16": {torch.bfloat16}}
    outer = []  # the default leaves a caller's autocast alone (train.py's validation relies on it)
    hook = model.out_proj.register_forward_hook(lambda m, i, out: outer.append(out.dtype))
    with torch.autocast("cpu", torch.bfloat16):
        translate.translate_texts(model, tok, ids, LINES[:1], 4, cfg.max_seq_length, beam=beam)
    hook.remove()
    assert set(outer) == {torch.bfloat16}
    with pytest.raises(UserError, match="mixed_precision 'fp16'"):  # no silent fp32 instead
        translate.translate_texts(model, tok, ids, LINES, 4, mixed_precision="fp16")
    assert texts["bf16"][1] == texts["bf16"][3] == ""
    pairs = zip(LINES, texts["no"], texts["bf16"], strict=True)
    same = sum(a == b for line, a, b in pairs if line.strip())  # blank lines agree anyway
    # bf16 rounding may flip a close call, not most sentences
    assert same >= 4 and sum(1 for line in LINES if line.strip()) == 6


def test_cli_passes_mixed_precision_to_decoding(ckpt, tmp_path, monkeypatch):
    got = []
    real = translate.translate_nbest
    monkeypatch.setattr(
        translate,
        "translate_nbest",
        lambda *a, **k: got.append(k["mixed_precision"]) or real(*a, **k),
    )
    src = tmp_path / "in.en"
    src.write_text("a dog\n")
    for flag in ([], ["--mixed_precision", "bf16"]):
        translate.main(["--checkpoint", str(ckpt), "--input", str(src), "--output",
                        str(tmp_path / "out.de"), "--device", "cpu", *flag])  # fmt: skip
    assert got == ["no", "bf16"]


def test_outputs_are_written_whole_with_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    first, second = tmp_path / "a.de", tmp_path / "b.de"
    with translate.open_output(first) as a, translate.open_output(second) as b:
        a.write("eins\n")
        b.write("zwei\n")
        assert not first.exists() and len(list(tmp_path.iterdir())) == 2  # two temporaries
    assert first.read_text() == "eins\n" and second.read_text() == "zwei\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.de", "b.de"]
    assert first.stat().st_mode & 0o777 == 0o666 & ~umask  # not a private temporary file's 0600
    # an existing file keeps its permissions, as `> a.de` keeps them: a private one stays 0600
    # (without a set-group-id bit, which no output of ours should carry)
    first.chmod(0o2600)
    with translate.open_output(first) as a:
        a.write("drei\n")
    assert first.read_text() == "drei\n" and first.stat().st_mode & 0o7777 == 0o600
    if os.geteuid() == 0:  # root may give it back to its owners, as `>` leaves them
        os.chown(first, 65534, 65534)
        with translate.open_output(first) as a:
            a.write("vier\n")
        assert (first.stat().st_uid, first.stat().st_gid) == (65534, 65534)


def test_a_write_protected_output_is_refused_and_kept(tmp_path, monkeypatch):
    out = tmp_path / "out.de"
    out.write_text("kept\n")
    out.chmod(0o444)
    real = os.access  # the tests run as root, to whom every file is writable: as another user
    monkeypatch.setattr(os, "access", lambda p, mode: mode != os.W_OK and real(p, mode))
    with pytest.raises(UserError, match=r"^cannot write .*out.de \(Permission denied\)$"):
        with translate.open_output(out) as f:
            f.write("new\n")
    assert out.read_text() == "kept\n" and os.listdir(tmp_path) == ["out.de"]


def test_a_beam_past_the_vocabulary_is_refused_and_out_of_memory_is_one_line(ckpt, capsys):
    from config import cli

    model, tok, ids, _ = load_model(ckpt)
    v = model.cfg.tgt_vocab_size
    with pytest.raises(UserError, match=rf"^--beam {v + 1} is more than the {v} target tokens$"):
        translate.translate_nbest(model, tok, ids, ["a dog"], beam=v + 1)
    assert translate.translate_nbest(model, tok, ids, ["a dog"], beam=v)[0]  # all of it: fine
    # on empty input too: refused when the model is loaded, not once a line comes (exit 0)
    with pytest.raises(UserError, match=rf"^--beam {v + 1} is more than the {v} target tokens$"):
        translate.main(["--checkpoint", str(ckpt), "--input", os.devnull, "--beam", str(v + 1)])
    import evaluate

    # evaluate.py: before it reads the test set (here none that it could read)
    with pytest.raises(UserError, match=rf"^--beam {v + 1} is more than the {v} target tokens$"):
        evaluate.main(["--checkpoint", str(ckpt), "--test_data", "/nowhere/{lang}.txt",
                       "--beam", str(v + 1)])  # fmt: skip

    def runs_out(message):
        def main():
            raise RuntimeError(message + "\nmore lines")

        with pytest.raises(SystemExit) as e:
            cli(main)
        return e.value.code, capsys.readouterr().err

    code, err = runs_out("DefaultCPUAllocator: can't allocate memory: you tried 3200000000 bytes")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: out of memory (RuntimeError: DefaultCPUAllocator: can't alloc")

    def bare_memory_error():
        raise MemoryError  # Python's own: often no message at all

    with pytest.raises(SystemExit) as e:
        cli(bare_memory_error)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: out of memory (MemoryError: ")
    assert err.count("\n") == 1
    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError: seen whole
        cli(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))


def test_lines_with_characters_the_tokenizer_does_not_know_are_counted(ckpt, tmp_path, capsys):
    # "€" and "x" never occur in TEXTS: their <unk> was translated without a word
    src = tmp_path / "in.en"
    src.write_text("the dog sees the cat\nthe cat costs 5 €\n\nwe eat an apple\nx\n")
    translate.main(
        ["--checkpoint", str(ckpt), "--input", str(src), "--output", str(tmp_path / "o")]
    )
    assert capsys.readouterr().err.splitlines()[-1] == (
        "warning: 2 of 5 lines hold characters the tokenizer does not know, translated as <unk> "
        "(the first: line 2)"
    )
    src.write_text("the dog sees the cat\nwe eat an apple\n")
    translate.main(
        ["--checkpoint", str(ckpt), "--input", str(src), "--output", str(tmp_path / "o")]
    )
    assert "warning" not in capsys.readouterr().err
