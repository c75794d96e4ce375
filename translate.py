"""Translate text with a trained checkpoint: greedy, beam search or sampling, batched.

    python translate.py --checkpoint runs/quickstart < input.en > output.de
    python translate.py --checkpoint runs/quickstart --beam 5 --input test.en --output test.de
    python translate.py --checkpoint runs/quickstart --beam 5 --nbest 3 < input.en > nbest.tsv
    python translate.py --checkpoint runs/a runs/b --beam 5 < input.en     # an ensemble
    python translate.py --checkpoint runs/de-en --sampling --input mono.de  # back-translation

Lines: exactly one output line per input line, in input order. An empty input line (or one the
tokenizer reads as nothing: whitespace, zero-width spaces) gives an empty output line without
running the model. A source longer than the checkpoint's max_seq_length tokens is truncated,
with a warning on stderr naming its line. On a terminal, stderr shows a bar of lines done.

Streaming: input is read, translated and written in chunks of --chunk_size lines (each chunk is
sorted by length into batches and put back in input order), and the output is flushed after each
chunk, so a pipe over a large file holds one chunk in memory. A chunk from stdin also ends where
the input pauses, so a line typed, or fed by a program that waits for its answer, is translated
at once. An --output file appears only once complete: a run that fails midway (e.g. a line that
is not UTF-8) leaves none.

Decoding (each encodes once and feeds one new token per step through the key/value cache):
  greedy       the default (--beam 1): the most probable token at each step.
  beam search  --beam K: K hypotheses per sentence, ranked by the GNMT length-normalised score
               (Wu et al., 2016, §7)
                   score(y) = log P(y | x) / lp(|y|),   lp(L) = ((5 + L) / 6) ** alpha
               with alpha = --length_penalty (0 = raw log-probability, larger favours longer
               output) and |y| counting the output tokens including </s>. A sentence stops once
               it has K finished hypotheses and no live one can still beat the worst of them
               (an exact bound, not fairseq's "stop at K finished").
  sampling     --sampling: each token drawn from the model's distribution, softened or
               sharpened by --temperature, optionally cut to the --sampling_topk most probable
               tokens, then to the smallest set holding --sampling_topp of the probability
               (nucleus sampling, Holtzman et al., 2020), renormalised: the back-translation of
               Edunov et al. (2018). A line's draws come from --seed and its line number alone,
               not from the batch or chunk it is in; its translation can still change with
               them, rarely, where a batch's other shape rounds the probabilities differently
               and moves a draw across a token's boundary (5 lines of 2,014 changed from
               --batch_size 64 to 7 here, on CPU; none of 300 with --sampling_topk 10). Shards
               of a corpus translated apart number their lines from 1 each: give each its own
               --seed.
  length       at most a·|x| + b new tokens, and at least 1 (--max_len_a, --max_len_b; |x| =
               source tokens including </s>), per sentence, so the output of a sentence does
               not depend on the batch it is in. A hypothesis that reaches the limit ends there
               without </s> (fairseq forces one, and scores it).
  never        padding and the decoder start token are never generated.
  ensemble     several --checkpoint dirs (sharing one vocabulary) decode as one model whose
               next-token distribution is the mean of theirs (ensemble.py).
  precision    fp32, or bf16 autocast with --mixed_precision bf16 (for GPUs, where SDPA's flash
               kernel needs half precision); log-probabilities and scores are summed in fp32, from
               bf16 logits, so they differ from fp32 decoding's.

n-best (--nbest N, with --beam K >= N): one line per input line holding up to N tab-separated
(hypothesis, score) pairs, best first; scores are the ones beam search ranks by (above):

    hyp_1 <TAB> score_1 <TAB> hyp_2 <TAB> score_2 ...

Hypotheses never contain a tab (whitespace is normalised to single spaces); an empty input line
gives an empty line (no pairs). To parse a line:

    fields = line.rstrip("\\n").split("\\t")
    pairs = list(zip(fields[0::2], map(float, fields[1::2])))
"""

import argparse
import collections
import contextlib
import gzip
import io
import itertools
import math
import os
import select
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from config import ArgumentParser, UserError, cli, signals_unwind
from cpu_memory import keep_freed_memory
from data import SpecialIds, _first_line, decode_lines, encode_sources, iter_lines
from model import Transformer, reorder_cache


class Hypothesis(NamedTuple):
    tokens: list[int]  # generated ids, </s> included when the hypothesis finished with it
    score: float  # logprob / lp(len(tokens)): what beam search ranks by
    logprob: float  # log P(tokens | source), summed over tokens


def banned_ids(ids: SpecialIds) -> list[int]:
    """Tokens decoding never emits: padding and the decoder start token (never </s>)."""
    return sorted({ids.pad, ids.start} - {ids.eos})


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's lp(L) = ((5 + L) / 6) ** alpha (Wu et al., 2016, eq. 14)."""
    return ((5 + length) / 6) ** alpha


def max_new_tokens(src_len, model: Transformer, a: float = 1.5, b: int = 10):
    """Output budget a·src_len + b, within the positional table. int or (B,) tensor in and out.
    Not the paper's (§6.1: input length + 50): fairseq's form; 1.5·|x| + 10 by default.

    Both forms round as fairseq's int(a * src_len + b) in Python floats: the tensor one in
    float64 too (in float32, 1.3 · 90 + 10 came out 126, not 127)."""
    b = min(b, model.cfg.max_len)  # the budget stops there anyway; a huge b is no int64
    if torch.is_tensor(src_len):
        # clamped before the cast: a budget past int64 would wrap around to 1 token
        return (src_len.double() * a + b).clamp(1, model.cfg.max_len - 1).long()
    return max(1, int(min(a * src_len + b, model.cfg.max_len - 1)))


def _limits(max_new, batch: int, device) -> torch.Tensor:
    """max_new as an int or a (B,) tensor -> (B,) long tensor."""
    if torch.is_tensor(max_new):
        return max_new.to(device=device, dtype=torch.long)
    return torch.full((batch,), int(max_new), dtype=torch.long, device=device)


def decoding_mask(model: Transformer, src: torch.Tensor) -> torch.Tensor | None:
    """src (B, S) -> its padding mask (B, 1, 1, S), or None when no sentence is padded.

    Without a mask SDPA may pick its mask-free kernels (flash on GPUs; transformers drops an
    all-ones mask the same way). On CPU it made no difference beyond noise (benchmark batch,
    medians of 6: greedy 378 vs 383 ms, beam 4 1,205 vs 1,171 ms), with identical tokens.
    Decoding syncs with the host every step anyway; training keeps the mask, free of syncs.
    """
    src_mask = model.src_mask(src)
    return None if bool(src_mask.all()) else src_mask


SAMPLING_NO_BEAM = "--sampling draws one translation per line: it takes no --beam"


class Sampler:
    """Draws each next token from the model's distribution (--sampling), not its argmax.

    The draw is by inverse CDF from one uniform per sentence and step, taken up front from a
    generator seeded with (seed, the sentence's line number): a line's draws do not depend on
    the batch it is in, nor on the other lines (one generator for the batch would make them
    depend on both); only rounding that differs between batch shapes can move one.
    Temperature, then top-k, then top-p of what is left, as transformers chains them (fairseq
    takes top-p alone when given both). An ensemble's temperature applies to its mean
    distribution (fairseq's, to each model's logits).
    """

    def __init__(self, temperature=1.0, topk=0, topp=1.0, seed=0):
        self.temperature, self.topk, self.topp, self.seed = temperature, topk, topp, seed

    def uniforms(self, lines: list[int], steps: int, device) -> torch.Tensor:
        """(B, steps) uniforms in [0, 1), row i from (seed, lines[i]) alone."""
        # numpy's SeedSequence mixes both numbers into the whole state; torch's CPU generator
        # keeps 32 bits of its seed, so seed * 2**32 + line would ignore the seed
        rows = [np.random.default_rng([self.seed, line]).random(steps) for line in lines]
        return torch.from_numpy(np.stack(rows)).to(device)

    def pick(self, logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """logits (B, V) (banned ids at -inf), u (B,) uniforms -> (B,) drawn ids."""
        logits = logits.float()  # less its maximum first: a tiny temperature would overflow
        logits = (logits - logits.amax(-1, keepdim=True)) / self.temperature
        order = None
        if self.topk:  # the k most probable, in order: their softmax is renormalised already
            logits, order = logits.topk(min(self.topk, logits.size(-1)), -1)
        elif self.topp < 1:  # in order of probability: cut the tail
            logits, order = logits.sort(-1, descending=True)
        probs = logits.softmax(-1).double()  # float64: a long vocabulary's CDF stays exact
        # then top-p of what top-k left (as transformers chains them): keep a token while the
        # more probable ones hold less than topp
        if self.topp < 1:
            probs = probs.masked_fill(probs.cumsum(-1) - probs >= self.topp, 0)
        cdf = probs.cumsum(-1)
        total = cdf[:, -1:]
        # below the total (u * total may round up to it); right=True: a token of probability 0
        # (a banned one, a cut one) never holds a cdf step, so it is never drawn
        x = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
        drawn = torch.searchsorted(cdf, x, right=True).squeeze(1)
        return drawn if order is None else order.gather(1, drawn[:, None]).squeeze(1)


@torch.no_grad()
def greedy(
    model: Transformer,
    src: torch.Tensor,
    ids: SpecialIds,
    max_new,
    banned: list[int] = (),
    sampler: Sampler | None = None,
    lines: list[int] | None = None,
) -> torch.Tensor:
    """src (B, S) -> generated ids (B, <= max(max_new)), eos included, pad after it.

    `max_new`: an int, or a (B,) tensor of per-sentence limits. `banned` ids are never chosen.
    With a `sampler`, each token is drawn (Sampler), row i's draws seeded by `lines[i]`.
    Encodes once; each step feeds only the newest token and reuses cached keys/values. A
    sentence leaves the batch when it ends (its memory, mask and cache rows are dropped, as in
    beam search), so the rest decode on fewer rows: on Multi30k val 1.27-1.45x faster than
    carrying finished rows to the end, with identical output (bench/finished_rows.py).
    """
    src_mask = decoding_mask(model, src)
    memory = model.encode(src, src_mask)
    cache = model.new_cache()
    limits = _limits(max_new, src.size(0), src.device)
    out = src.new_full((src.size(0), int(limits.max())), ids.pad)
    alive = torch.arange(src.size(0), device=src.device)  # the out row of each batch row
    last = src.new_full((src.size(0), 1), ids.start)
    banned = torch.tensor(banned, dtype=torch.long).to(src.device)  # once, not a copy a step
    if sampler is not None:
        u = sampler.uniforms(lines or range(1, src.size(0) + 1), out.size(1), src.device)
    steps = 0
    while steps < out.size(1):
        logits = model.decode(last, memory, src_mask, cache)[:, -1]  # (B_alive, V)
        logits.index_fill_(1, banned, -torch.inf)
        next_id = logits.argmax(-1) if sampler is None else sampler.pick(logits, u[alive, steps])
        out[alive, steps] = next_id
        steps += 1
        done = (next_id == ids.eos) | (limits[alive] <= steps)
        finished = int(done.sum())  # a host sync (and nonzero below another, when rows end)
        if finished == done.numel():
            break
        if finished:  # drop the finished rows
            keep = (~done).nonzero().squeeze(1)
            alive, next_id, memory = alive[keep], next_id[keep], memory.index_select(0, keep)
            src_mask = None if src_mask is None else src_mask.index_select(0, keep)
            cache = reorder_cache(cache, keep, cross_index=keep)
        last = next_id[:, None]
    return out[:, :steps]


def _add_finished(hyps: list[Hypothesis], hyp: Hypothesis, keep: int) -> None:
    """Insert into a best-first list of at most `keep` hypotheses."""
    hyps.append(hyp)
    hyps.sort(key=lambda h: -h.score)
    del hyps[keep:]


def best_continuations(
    scores: torch.Tensor, logp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scores (N, K) of the live beams, logp (N·K, V) of their next tokens -> the best 2K of
    each sentence's K·V continuations, best first: score, beam (0..K-1) and token, each (N, 2K).

    The top 2K of all K·V, found in two smaller passes: no beam can place more than 2K among
    them, so each beam's own best 2K tokens hold them all (K + 1 would do for beam search's
    use: a beam has at most one </s>).
    """
    n, k = scores.shape
    w = min(2 * k, logp.size(-1))
    beam_top, beam_token = logp.topk(w, dim=1)  # (N·K, W)
    cand = (scores.view(-1, 1) + beam_top).view(n, k * w)  # (N, K·W)
    top, flat = cand.topk(2 * k, dim=1)  # (N, 2K)
    return top, flat // w, beam_token.view(n, k * w).gather(1, flat)


@torch.no_grad()
def beam_search(
    model: Transformer,
    src: torch.Tensor,
    ids: SpecialIds,
    max_new,
    beam: int = 5,  # the paper (§6.1): 4, with alpha 0.6
    alpha: float = 0.6,
    nbest: int = 1,
    banned: list[int] = (),
    early_stop: bool = True,
) -> list[list[Hypothesis]]:
    """src (B, S) -> for each sentence up to `nbest` hypotheses, best first (scores: see top).

    The sentences' beams decode as one batch of N·K rows (N sentences still searching, K beams,
    row i·K + j = beam j of sentence i); a sentence leaves the batch once its result is final.
    `early_stop=False` runs every sentence to its length limit: slower, and the same result.
    """
    b, k, dev = src.size(0), beam, src.device
    limits = _limits(max_new, b, dev)  # (B,)

    def lp(length):  # int or tensor
        return length_penalty(length, alpha)

    src_mask = decoding_mask(model, src)
    # One row per sentence: cross-attention takes a sentence's K beam rows as K queries.
    memory = model.encode(src, src_mask)  # (N, S, D)
    cache = model.new_cache()
    active = torch.arange(b, device=dev)  # (N,) original index of each searching sentence
    tokens = src.new_full((b * k, 1), ids.start)  # (N·K, 1 + t) start token + generated ids
    scores = torch.zeros(b, k, device=dev)  # (N, K) log-prob of each live beam
    scores[:, 1:] = -torch.inf  # the K beams start out identical: expand only the first
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]  # best first, at most K each
    banned = torch.tensor(banned, dtype=torch.long).to(dev)  # once, not a copy a step
    active_host = list(range(b))  # `active`, on the host

    def add(which, logprobs, tokens, parent, last, length):
        """Hypotheses ending now: `which` (N, C) marks them in logprobs, parent (their rows in
        tokens) and last (their final token; None: </s>), all (N, C). One host sync when none
        ends, a few when some do, not a few for each (on a GPU each read waits for it)."""
        if not bool(which.any()):
            return
        where = which.nonzero().tolist()  # (E, 2)
        history = tokens[parent[which], 1:].tolist()
        last = [ids.eos] * len(where) if last is None else last[which].tolist()
        for (i, _), logprob, hyp, t in zip(where, logprobs[which].tolist(), history, last):
            h = Hypothesis(hyp + [t], logprob / lp(length), logprob)
            _add_finished(finished[active_host[i]], h, k)

    for step in range(int(limits.max())):
        n, length = active.numel(), step + 1  # length: of the hypotheses made in this step
        logits = model.decode(tokens[:, -1:], memory, src_mask, cache)[:, -1]  # (N·K, V)
        logp = F.log_softmax(logits.float(), dim=-1)  # fp32 whatever the model runs in
        logp.index_fill_(1, banned, -torch.inf)
        # The best 2K (beam, token) continuations hold at least K that go on.
        top, beam_of, token = best_continuations(scores, logp)  # (N, 2K) each, best first
        parent = beam_of + torch.arange(n, device=dev)[:, None] * k  # (N, 2K) batch rows
        # </s> ranked among the best K ends a hypothesis (below rank K it is no better than K
        # live ones: the usual rule).
        ends = (token == ids.eos) & (torch.arange(2 * k, device=dev) < k) & (top > -torch.inf)
        add(ends, top, tokens, parent, None, length)
        # The best K that do not end become the live beams.
        scores, keep = top.masked_fill(token == ids.eos, -torch.inf).topk(k, dim=1)  # (N, K)
        parent, token = parent.gather(1, keep), token.gather(1, keep)  # (N, K)
        at_limit = limits[active] <= length  # (N,) out of room: live beams end without </s>
        add(at_limit[:, None] & (scores > -torch.inf), scores, tokens, parent, token, length)
        # Done: K finished, and the best live beam cannot beat the worst of them at any length
        # it may still reach (its log-prob only falls; lp is largest at one end of the range).
        lp_max = torch.clamp(lp(limits[active].float()), min=lp(length + 1))  # (N,)
        worst = torch.tensor(
            [finished[s][-1].score if len(finished[s]) == k else -torch.inf for s in active_host],
        ).to(dev)  # (N,)
        done = at_limit | (early_stop & (scores[:, 0] / lp_max <= worst))  # (N,)
        # Keep the searching sentences; every beam row now follows its parent row.
        still = (~done).nonzero().flatten()  # (N',)
        still_host = still.tolist()
        if not still_host:
            break
        rows = parent[still].flatten()  # (N'·K,)
        tokens = torch.cat([tokens[rows], token[still].reshape(-1, 1)], dim=1)  # (N'·K, 2 + t)
        # A parent is a beam of the same sentence, so the sentence rows (memory, mask,
        # cross-attention cache) stay put unless a sentence left.
        kept = still if len(still_host) < n else None  # (N',) sentence rows, if one left
        if kept is not None:
            memory = memory[kept]
            src_mask = None if src_mask is None else src_mask[kept]
        cache = reorder_cache(cache, rows, cross_index=kept)
        scores, active = scores[still], active[still]
        active_host = [active_host[i] for i in still_host]
    return [f[:nbest] for f in finished]


# ---------------------------------------------------------------------------------------------
# Text in, text out


def strip_special(seq: list[int], ids: SpecialIds) -> list[int]:
    """Cut at the first eos; drop padding (a batch pads a sentence that ran out of budget, and
    decoding never emits the padding token itself)."""
    seq = seq[: seq.index(ids.eos)] if ids.eos in seq else seq
    return [t for t in seq if t != ids.pad]


def _encode(
    tokenizer, ids: SpecialIds, lines: list[str], limit: int, numbers: list[int], unknown=None
) -> list[list[int]]:
    """Tokenize; truncate sources over `limit` tokens (keeping a final </s>) with a warning;
    append to `unknown` the numbers of lines holding <unk> (characters it does not know)."""
    encoded = encode_sources(tokenizer, lines) if lines else []
    if unknown is not None and (unk := tokenizer.unk_token_id) is not None:
        unknown.extend(numbers[j] for j, e in enumerate(encoded) if unk in e)
    for j, e in enumerate(encoded):
        if len(e) > limit:
            tail = [ids.eos] if e[-1] == ids.eos else []
            encoded[j] = e[: limit - len(tail)] + tail
            print(
                f"warning: line {numbers[j]}: {len(e)} source tokens, truncated to {limit}",
                file=sys.stderr,
            )
    return encoded


def _decode(
    model, src, ids, max_new, beam, alpha, nbest, banned, sampler=None, lines=None
) -> list[list[tuple]]:
    """One batch -> for each sentence its (tokens, score, log-probability), best first."""
    if beam <= 1:
        found = greedy(model, src, ids, max_new, banned, sampler, lines)
        return [[(h, None, None)] for h in found.tolist()]
    found = beam_search(model, src, ids, max_new, beam, alpha, nbest, banned)
    return [[(h.tokens, h.score, h.logprob) for h in f] for f in found]


PRECISIONS = ("no", "bf16")  # decoding's mixed_precision values (--mixed_precision)


def decoding_autocast(device: torch.device, mixed_precision: str):
    """bf16: autocast; "no": nothing, so a caller's autocast holds (train.py's validation)."""
    if mixed_precision not in PRECISIONS:
        raise UserError(f"mixed_precision {mixed_precision!r}: decoding takes 'no' or 'bf16'")
    if mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, torch.bfloat16)


def check_beam(model, beam: int) -> None:
    """UserError for beams past the vocabulary (memory for nothing)."""
    if beam > model.cfg.tgt_vocab_size:
        raise UserError(f"--beam {beam} is more than the {model.cfg.tgt_vocab_size} target tokens")


def translate_nbest(
    model: Transformer,
    tokenizer,
    ids: SpecialIds,
    lines: list[str],
    batch_size: int = 64,
    max_src_len: int | None = None,
    *,
    beam: int = 1,
    alpha: float = 0.6,
    nbest: int = 1,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    line_numbers: list[int] | None = None,
    mixed_precision: str = "no",
    sampler: Sampler | None = None,
    progress=None,
    details: bool = False,
    unknown: list[int] | None = None,
) -> list[list[tuple]]:
    """Lines -> for each line up to `nbest` (text, score) pairs, best first; with `details`,
    (text, score, log P(tokens | line), the number of tokens) for beam search: the tokens it
    found, which the text tokenized again need not be (score.py scores the text).

    Greedy (beam 1) gives one pair with score None. Empty lines give no pairs and never reach
    the model. Batches hold sentences of similar length; `line_numbers` (default 1, 2, ...) name
    the lines in truncation warnings. mixed_precision "bf16" decodes in bf16 autocast (on GPUs
    SDPA's flash kernel needs half precision); log-probabilities are summed in fp32, from bf16
    logits.
    A `sampler` (beam 1 only) draws each token instead, seeded per line by its line number.
    `progress` (a tqdm bar) counts the lines done, batch by batch. `unknown`, a list, gets the
    numbers of the lines whose tokens hold <unk>.
    """
    if nbest > max(beam, 1):
        raise UserError(f"--nbest {nbest} needs --beam >= {nbest}")
    check_beam(model, beam)
    if sampler is not None and beam > 1:
        raise UserError(SAMPLING_NO_BEAM)
    device = next(model.parameters()).device
    lines = list(lines)  # a list, a datasets column, ...
    out: list[list[tuple[str, float | None]]] = [[] for _ in lines]
    todo = [i for i, line in enumerate(lines) if line.strip()]
    limit = min(max_src_len or model.cfg.max_len, model.cfg.max_len)  # the positional table
    numbers = line_numbers or range(1, len(lines) + 1)
    encoded = _encode(
        tokenizer, ids, [lines[i] for i in todo], limit, [numbers[i] for i in todo], unknown
    )
    # a line of zero-width or control characters is blank to the tokenizer: [] (encode_sources)
    todo, encoded = [i for i, e in zip(todo, encoded, strict=True) if e], [e for e in encoded if e]
    if progress is not None:
        progress.update(len(lines) - len(todo))  # the empty ones: done
    order = sorted(range(len(todo)), key=lambda j: len(encoded[j]))
    banned = banned_ids(ids)
    precision = decoding_autocast(device, mixed_precision)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = [torch.tensor(encoded[j]) for j in chunk]
        lengths = torch.tensor([len(row) for row in rows])
        src = pad_sequence(rows, batch_first=True, padding_value=ids.pad).to(device)  # (B, S)
        max_new = max_new_tokens(lengths.to(device), model, max_len_a, max_len_b)
        lines_of = [numbers[todo[j]] for j in chunk]
        with precision:
            found = _decode(model, src, ids, max_new, beam, alpha, nbest, banned, sampler, lines_of)
        flat = [(j, *h) for j, hyps in zip(chunk, found, strict=True) for h in hyps]
        texts = detokenize(tokenizer, [t for _, t, _, _ in flat], ids)
        for (j, tokens, score, logprob), text in zip(flat, texts, strict=True):
            out[todo[j]].append((text, score, logprob, len(tokens)) if details else (text, score))
        if progress is not None:
            progress.update(len(chunk))
    model.train(was_training)
    return out


def detokenize(tokenizer, outputs: list[list[int]], ids: SpecialIds) -> list[str]:
    """Decoded token ids -> text, one line each (no stray newlines or tabs)."""
    # strip_special cuts at </s> and drops padding, and the start token is never emitted: the
    # one special token left is <unk>, shown as fairseq and Marian do, not dropped.
    # use_source_tokenizer=False: a Marian tokenizer with one vocabulary (opus-mt-en-de's)
    # would otherwise detokenize with its source SentencePiece model
    texts = tokenizer.batch_decode(
        [strip_special(t, ids) for t in outputs],
        skip_special_tokens=False,
        use_source_tokenizer=False,
    )
    return [" ".join(text.split()) for text in texts]


def translate_texts(
    model: Transformer,
    tokenizer,
    ids: SpecialIds,
    lines: list[str],
    batch_size: int = 64,
    max_src_len: int | None = None,
    **decoding,
) -> list[str]:
    """Lines -> translations, same count and order (the best hypothesis of each line).

    `decoding`: the keyword options of `translate_nbest` (beam, alpha, max_len_a, ...).
    """
    found = translate_nbest(model, tokenizer, ids, lines, batch_size, max_src_len, **decoding)
    return [pairs[0][0] if pairs else "" for pairs in found]


def format_nbest(pairs: list[tuple[str, float | None]]) -> str:
    """[(hyp, score), ...] -> hyp_1 TAB score_1 TAB hyp_2 TAB score_2 ... (see the top)."""
    return "\t".join(f"{text}\t{score:.6f}" for text, score in pairs)


# ---------------------------------------------------------------------------------------------
# Command line


def iter_input(path: str | None, stdin: "Stdin | None" = None, flag: str = "--input"):
    """(line number, text) for each line of a file (.gz ok) or of stdin ("-"), read lazily.

    The same rules for both (data.decode_lines): UTF-8, only "\\n" ends a line, a leading BOM
    is dropped.
    """
    if path not in (None, "-"):
        yield from iter_lines(path)
    else:
        yield from decode_lines(stdin or Stdin(flag), "stdin")


class Stdin:
    """stdin's lines (bytes) as they arrive, and whether input has paused: no complete line is
    waiting, and none comes within `grace` seconds. translate.py ends a chunk at a pause, so
    that a line typed, or fed by a program waiting for its answer, is translated at once (as
    fairseq-interactive answers each line), while a file or a pipe fed without such waits
    still fills whole chunks."""

    def __init__(self, flag: str = "--input", grace: float = 0.05):
        if sys.stdin is None:  # started with stdin closed (`<&-`)
            raise UserError(f"no input: stdin is closed; give {flag} FILE")
        self.buffer, self.grace = sys.stdin.buffer, grace
        try:
            self.fd = self.buffer.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (tests replace sys.stdin)
            self.fd = None
        self.tty = self.fd is not None and os.isatty(self.fd)
        self.lines, self.part, self.eof = collections.deque(), [], False  # part: of a line

    def __iter__(self):
        while True:
            while not self.lines and not self.eof:
                # read1: what the buffer holds first (stdin read earlier), else one read
                data = self.buffer.read1(1 << 16) if self.fd is not None else self.buffer.read()
                self.eof = not data or self.fd is None
                *ended, rest = data.split(b"\n")
                if ended:
                    ended[0] = b"".join(self.part) + ended[0]
                    self.lines.extend(line + b"\n" for line in ended)
                    self.part = []
                if rest:
                    self.part.append(rest)
            if self.lines:
                yield self.lines.popleft()
            elif self.part:  # the last line, without a line end
                line, self.part = b"".join(self.part), []
                yield line
            else:
                return

    def paused(self) -> bool:
        if self.eof or self.lines:
            return False
        return not select.select([self.fd], [], [], self.grace)[0]


def read_chunks(numbered_lines, size: int, paused=None):
    """(number, line) pairs -> (number of the chunk's first line, its lines), `size` at a time,
    or fewer where `paused()` says that no more input is there yet. A bad line (not UTF-8) ends
    the input with its error once the lines before it are out: on stdout, an error naming line
    N follows lines 1 to N - 1 (a file output is still written whole or not at all)."""
    chunk = []
    try:
        for item in numbered_lines:
            chunk.append(item)
            if len(chunk) == size or (paused is not None and paused()):
                yield chunk[0][0], [line for _, line in chunk]
                chunk = []
    except UserError:
        if chunk:
            yield chunk[0][0], [line for _, line in chunk]
        raise
    if chunk:
        yield chunk[0][0], [line for _, line in chunk]


def read_lines(path: str | None, flag: str = "--input") -> list[str]:
    """All lines of a file (.gz ok) or of stdin (`flag`: the option to name if it is closed)."""
    return [line for _, line in iter_input(path, flag=flag)]


_OUTPUTS = itertools.count()  # numbers the temporary files of one process's outputs


def check_not_an_input(flag: str, path: str | None, inputs: dict[str, str | None]) -> None:
    """UserError if the output `path` is one of the `inputs` ({flag: path}): written over when
    done, it would replace what it was made from."""
    if path in (None, "-") or not os.path.isfile(path):
        return
    for name, given in inputs.items():
        if given not in (None, "-") and os.path.isfile(given) and os.path.samefile(path, given):
            raise UserError(f"{flag} {path} is the {name} file: it would be replaced; name another")


@contextlib.contextmanager
def open_output(path: str | None):
    """A UTF-8 text stream with "\\n" line ends to a file, or to stdout (left open after).

    A file is written whole or not at all: into a temporary file beside it, renamed over `path`
    only when the block ends without an error, so a failure midway (a bad input line, Ctrl-C)
    leaves no partial output and an existing file as it was.
    """
    path = os.fspath(path) if path is not None else None
    if path is None or path == "-":
        if sys.stdout is None:  # started with stdout closed (`>&-`)
            raise UserError("no output: stdout is closed; give --output FILE")
        stream = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n")
        try:
            yield stream
        finally:
            stream.flush()
            stream.detach()
        return
    if not path or path.endswith(os.sep) or os.path.isdir(path):  # found now, not after decoding
        raise UserError(f"cannot write {path!r}: not a file name")
    if os.path.exists(path) and not os.path.isfile(path):  # /dev/null, /dev/stdout, a FIFO
        with _open_text(path, path) as f:
            yield f
        return
    final = os.path.realpath(path)  # through a symlink, not over it
    if os.path.exists(final) and not os.access(final, os.W_OK):
        # as `> path` would be: the rename below would replace a file its owner protected
        raise UserError(f"cannot write {path} (Permission denied)")
    # a name of its own: two outputs of one process may be in one directory (not mkstemp's,
    # whose file is private, 0600, where an output gets the umask's permissions)
    tmp = _new_temporary(final, path)
    try:
        with _open_text(tmp, path) as f, signals_unwind():
            yield f
        if os.path.exists(final):  # keep its permissions, as `> path` does (a private 0600)
            st = os.stat(final)
            os.chmod(tmp, st.st_mode & 0o777)
            with contextlib.suppress(OSError):  # and its owners, where we may (as root)
                os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _new_temporary(final: str, shown: str) -> str:
    """An empty file beside `final`, made here (O_EXCL: never an existing file or link)."""
    while True:
        unique = f"{os.getpid()}.{next(_OUTPUTS)}"
        tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.{unique}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot write {shown} ({e.strerror})") from None


def _open_text(path: str, shown: str):
    """gzip-compressed if `shown` ends in .gz, as --input and the scorers read it back."""
    try:
        if shown.endswith(".gz"):
            return gzip.open(path, "wt", encoding="utf-8", newline="\n")
        return open(path, "w", encoding="utf-8", newline="\n")
    except OSError as e:
        raise UserError(f"cannot write {shown} ({e.strerror})") from None


def add_decoding_args(p: argparse.ArgumentParser) -> list[str]:
    """Decoding options shared with evaluate.py; their names."""
    return [
        p.add_argument("--beam", type=int, default=1, help="beam size; 1 = greedy (default)").dest,
        p.add_argument(
            "--length_penalty",
            type=float,
            help="GNMT alpha for beam search: score = logprob / ((5+len)/6)**alpha; "
            "0 = raw log-probability (default 0.6 with --beam > 1)",
        ).dest,
        p.add_argument(
            "--max_len_a",
            type=float,
            default=1.5,
            help="at most a*source_tokens + b new tokens per sentence (default 1.5)",
        ).dest,
        p.add_argument(
            "--max_len_b", type=int, default=10, help="see --max_len_a (default 10)"
        ).dest,
        p.add_argument(
            "--batch_size", type=int, default=64, help="sentences per batch (default 64)"
        ).dest,
        *add_device_args(p),
    ]


def add_device_args(p: argparse.ArgumentParser) -> list[str]:
    """--mixed_precision and --device, for every tool that runs a model; their names."""
    return [
        p.add_argument(
            "--mixed_precision",
            choices=PRECISIONS,
            default="no",
            help="bf16: decode in bf16 autocast, for GPUs (SDPA's flash kernel needs it); "
            "log-probabilities summed in fp32 from bf16 logits (default no: fp32)",
        ).dest,
        p.add_argument(
            "--device",
            default="cuda" if torch.cuda.is_available() else "cpu",
            help="torch device (default: cuda if available, else cpu)",
        ).dest,
    ]


def decoding_options(args: argparse.Namespace) -> dict:
    """Validated keyword arguments for translate_nbest / translate_texts."""
    if args.beam < 1 or args.batch_size < 1:
        raise UserError("--beam and --batch_size must be >= 1")
    if not (0 <= args.max_len_a < math.inf) or args.max_len_b < 0:  # NaN fails too
        raise UserError("--max_len_a and --max_len_b must be finite and >= 0")
    if args.max_len_a == args.max_len_b == 0:  # a sentence's budget is at least 1 token
        raise UserError("--max_len_a 0 and --max_len_b 0: a budget of no tokens at all")
    alpha = args.length_penalty
    if alpha is not None:
        check_length_penalty(alpha)
    if alpha is not None and args.beam == 1:  # ignored, and recorded as if it had counted
        raise UserError(
            "--length_penalty applies to beam search only: add --beam N (greedy ignores it)"
        )
    check_device(args.device)
    return {
        "beam": args.beam,
        "alpha": None if args.beam == 1 else 0.6 if alpha is None else alpha,  # greedy: none
        "max_len_a": args.max_len_a,
        "max_len_b": args.max_len_b,
        "mixed_precision": args.mixed_precision,
    }


def check_length_penalty(alpha: float) -> None:
    # NaN would rank hypotheses at random; past 10, ((5 + L) / 6) ** alpha overflows float32
    # at a few hundred tokens (fairseq's and transformers' usual values lie within 0-2)
    if not -10 <= alpha <= 10:
        raise UserError(f"--length_penalty must be in [-10, 10] (got {alpha})")


def check_device(device: str) -> None:
    """Before loading anything: a misspelled device or no CUDA is one line, not a traceback."""
    try:
        if torch.empty(0, device=device).device.type == "meta":
            raise RuntimeError("tensors without data cannot be decoded")
    except Exception as e:  # AssertionError: no CUDA; ModuleNotFoundError: "hpu" (torch.hpu)
        raise UserError(f"--device {device}: not usable here ({_first_line(e)})") from None


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sampling",
        action="store_true",
        help="draw each token from the model's distribution instead of taking the most "
        "probable (back-translation); without --beam",
    )
    p.add_argument(
        "--temperature",
        type=float,
        help="with --sampling: divide the logits by T; < 1 sharpens, > 1 flattens (default 1)",
    )
    p.add_argument(
        "--sampling_topk",
        type=int,
        help="with --sampling: draw from the K most probable tokens only (default: all)",
    )
    p.add_argument(
        "--sampling_topp",
        type=float,
        help="with --sampling: draw from the smallest set of most probable tokens holding "
        "probability P (nucleus sampling; default 1: all)",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="with --sampling: a line's draws depend on the seed and its line number alone "
        "(default 0)",
    )


def sampler_of(args: argparse.Namespace) -> Sampler | None:
    """The validated --sampling options, or None (greedy or beam search)."""
    given = [f"--{k}" for k in ("temperature", "sampling_topk", "sampling_topp", "seed")
             if getattr(args, k) is not None]  # fmt: skip
    if not args.sampling:
        if given:  # ignored, and recorded as if it had counted
            raise UserError(f"{given[0]} applies to --sampling only: add --sampling")
        return None
    if args.beam > 1:
        raise UserError(SAMPLING_NO_BEAM)
    t, k, p, seed = args.temperature, args.sampling_topk, args.sampling_topp, args.seed
    fp32 = torch.finfo(torch.float32)  # the logits' type: outside, T would be 0 or inf there
    if t is not None and not (fp32.tiny <= t <= fp32.max):
        raise UserError(
            f"--temperature must be between {fp32.tiny:.3g} and {fp32.max:.3g} (got {t})"
        )
    if k is not None and k < 1:
        raise UserError(f"--sampling_topk must be >= 1 (got {k})")
    if p is not None and not (0 < p <= 1):  # NaN fails too
        raise UserError(f"--sampling_topp must be in (0, 1] (got {p})")
    if seed is not None and seed < 0:
        raise UserError(f"--seed must be >= 0 (got {seed})")
    return Sampler(t or 1.0, k or 0, 1.0 if p is None else p, seed or 0)


def main(argv=None):
    from checkpoint import resolve
    from ensemble import load_models

    p = ArgumentParser.of_tool(__doc__, "Lines:")
    p.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        action="extend",  # given twice: both, not the last alone
        help="checkpoint dir or a run's output_dir; several: decode with their ensemble (the "
        "mean of their next-token probabilities; they must share one vocabulary)",
    )
    p.add_argument("--input", help="text file, one sentence per line (.gz ok); default stdin")
    p.add_argument("--output", help="default stdout")
    add_decoding_args(p)
    p.add_argument(
        "--nbest",
        type=int,
        help="write the N best hypotheses of beam search with their scores, tab-separated, "
        "N = 1 too (needs --beam K, K >= N and K >= 2; without --nbest: the best alone, no "
        "score)",
    )
    p.add_argument(
        "--chunk_size",
        type=int,
        default=2000,
        help="lines read, translated and written at a time (default 2000; fewer when stdin pauses)",
    )
    add_sampling_args(p)
    args = p.parse_args(argv)
    options = decoding_options(args)
    options["sampler"] = sampler_of(args)
    if args.nbest is not None and args.beam < 2:  # greedy and sampling give no score
        raise UserError("--nbest writes beam search's hypotheses and scores: add --beam K >= 2")
    if args.nbest is not None and not 1 <= args.nbest <= args.beam:
        raise UserError(f"--nbest must be between 1 and --beam ({args.beam})")
    if args.chunk_size < 1:
        raise UserError("--chunk_size must be >= 1")
    if args.input not in (None, "-") and not os.path.exists(args.input):
        raise UserError(f"input file not found: {args.input}")
    check_not_an_input("--output", args.output, {"--input": args.input})
    stdin = Stdin() if args.input in (None, "-") else None
    model, tokenizer, ids, cfg = load_models(args.checkpoint, args.device)
    check_beam(model, args.beam)  # now, not once the first line is typed
    keep_freed_memory(args.device)  # each decoding step's logits reuse the last step's memory
    # on stderr, and only on a terminal (disable=None): never into a pipe or a log
    # (nor while the user types: the bar would share the line being typed)
    typed = stdin is not None and stdin.tty
    bar = tqdm(desc="translating", unit=" lines", disable=True if typed else None, file=sys.stderr)
    unknown, read = [], 0
    with open_output(args.output) as out, bar:
        numbered = iter_input(args.input, stdin)
        for first, lines in read_chunks(numbered, args.chunk_size, stdin and stdin.paused):
            found = translate_nbest(
                model,
                tokenizer,
                ids,
                lines,
                args.batch_size,
                cfg.max_seq_length,
                nbest=args.nbest or 1,
                line_numbers=range(first, first + len(lines)),
                progress=bar,
                unknown=unknown,
                **options,
            )
            read += len(lines)
            if args.nbest is not None:  # --nbest 1 too: the best hypothesis and its score
                out.writelines(format_nbest(pairs) + "\n" for pairs in found)
            else:
                out.writelines((pairs[0][0] if pairs else "") + "\n" for pairs in found)
            out.flush()
    if unknown:  # said once, not per line: a whole text in another script would flood stderr
        print(
            f"warning: {len(unknown)} of {read} lines hold characters the tokenizer does not "
            f"know, translated as <unk> (the first: line {unknown[0]})",
            file=sys.stderr,
        )
    for given in args.checkpoint:  # a run's output_dir: which of its checkpoints decoded
        if (used := resolve(given)) != Path(given):  # (after the work: an error stays one line)
            print(f"{given}: decoded with {used}", file=sys.stderr)


if __name__ == "__main__":
    cli(main)
