"""Several trained models decoding as one: the mean of their next-token distributions.

    python translate.py --checkpoint runs/a/avg5 runs/b/avg5 --beam 5 < input.en

`Ensemble` quacks like a `Transformer` for `translate.greedy` and `translate.beam_search`, so
the searches need no ensemble code of their own:
  encode       each model's memory, concatenated on the feature axis: (B, S, D_1 + D_2 + ...)
               (the searches select its rows like one model's memory);
  new_cache    the models' per-layer caches, one flat list (reorder_cache moves every layer);
  decode       log of the mean probability, log((1/M) Σ_m P_m(y | x, y_<t)), as fairseq's
               EnsembleModel does; a log-softmax of it changes nothing.
The models must share one vocabulary and padding id; the first model's tokenizer encodes and
decodes for all. A model whose tokenizer holds the same pieces under other ids (as two trainings
of one Unigram config gave before data.canonical_unigram) is re-indexed to the first's ids.
"""

import dataclasses
import itertools
import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from config import UserError
from model import Transformer

SHARED = ("src_vocab_size", "tgt_vocab_size", "pad_id")  # what the models must agree on


class Ensemble(nn.Module):
    """Models sharing one vocabulary -> one model for greedy and beam search (see above)."""

    def __init__(self, models: list[Transformer]):
        super().__init__()
        first = models[0].cfg
        for i, m in enumerate(models[1:], 2):
            differ = {k: (getattr(first, k), getattr(m.cfg, k)) for k in SHARED}
            differ = {k: v for k, v in differ.items() if v[0] != v[1]}
            if differ:
                raise UserError(f"ensemble: model 1 and model {i} differ in {differ}")
        self.models = nn.ModuleList(models)
        # the shortest positional table bounds every model's output length
        self.cfg = dataclasses.replace(first, max_len=min(m.cfg.max_len for m in models))
        self.train(models[0].training)  # a new Module is in train mode: follow the models
        self.widths = [m.cfg.d_model for m in models]  # each model's part of the memory
        ends = list(itertools.accumulate(len(m.decoder.layers) for m in models))
        self.layers = [slice(end - len(m.decoder.layers), end) for m, end in zip(models, ends)]

    def src_mask(self, src: torch.Tensor) -> torch.Tensor:
        return self.models[0].src_mask(src)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([m.encode(src, src_mask) for m in self.models], dim=-1)  # (B, S, ΣD)

    def new_cache(self) -> list:
        return [layer for m in self.models for layer in m.new_cache()]

    def decode(self, tgt, memory, src_mask, cache=None) -> torch.Tensor:
        """Like Transformer.decode, but log-probabilities (B, T, V) of the models' mean."""
        logps = []
        for m, mem, layers in zip(self.models, memory.split(self.widths, -1), self.layers):
            part = None if cache is None else cache[layers]  # this model's layers' caches
            logps.append(F.log_softmax(m.decode(tgt, mem, src_mask, part).float(), dim=-1))
        return torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(self.models))


def load_models(paths: list[str], device="cpu"):
    """Checkpoint directories -> (model, tokenizer, special ids, training config) of the first,
    with an Ensemble of them all as the model when there are several."""
    from checkpoint import load_model, resolve

    loaded = [load_model(p, device) for p in paths]
    if len(loaded) == 1:
        return loaded[0]
    _, tokenizer, ids, cfg = loaded[0]
    for path, (*_, other_cfg) in zip(paths[1:], loaded[1:], strict=True):
        ways = [(c.src_lang, c.tgt_lang) for c in (cfg, other_cfg)]
        if ways[0] != ways[1]:  # one vocabulary serves both directions: only the configs tell
            raise UserError(
                f"ensemble: {path} was trained {'->'.join(ways[1])}, {paths[0]} "
                f"{'->'.join(ways[0])}: the models of an ensemble must translate one way"
            )
    vocab = tokenizer.get_vocab()
    for path, (model, tok, other_ids, _) in zip(paths[1:], loaded[1:], strict=True):
        other = tok.get_vocab()  # (the model configs are Ensemble's to check)
        if other_ids == ids and other != vocab and set(other) == set(vocab):
            # the same pieces under other ids (tokenizers trained before canonical_unigram)
            moved = align_vocabulary(model, other, vocab)
            print(f"note: {path}: {moved} pieces re-indexed to {paths[0]}'s ids", file=sys.stderr)
        elif other != vocab or other_ids != ids:
            raise UserError(
                f"ensemble: {path} has another vocabulary than {paths[0]}; the models of an "
                "ensemble must share one (train them on the same data with the same tokenizer "
                f"settings, or with --tokenizer {resolve(paths[0])})"
            )
    return Ensemble([m for m, *_ in loaded]), tokenizer, ids, cfg


@torch.no_grad()
def align_vocabulary(model: Transformer, vocab: dict[str, int], to: dict[str, int]) -> int:
    """Re-index a model trained with `vocab` to the ids of `to`, a vocabulary of the same pieces:
    row to[p] of its embedding tables (and of the tied output projection) becomes its old row
    vocab[p]. Returns how many pieces moved."""
    new_ids = torch.tensor(list(to.values()))
    old_ids = torch.tensor([vocab[piece] for piece in to])
    tables = {id(e.tokens.weight): e.tokens.weight for e in (model.src_embed, model.tgt_embed)}
    for weight in tables.values():  # one table when shared
        order = torch.arange(weight.size(0))  # rows past the tokenizer's stay where they are
        order[new_ids] = old_ids
        weight.copy_(weight[order.to(weight.device)])
    return int((new_ids != old_ids).sum())
