"""Score given translations: the log-probability a model gives each target for its source.

    python score.py --checkpoint runs/multi30k --source test.en --target test.de > scores.txt
    python score.py --checkpoint runs/de-en --source mono.de --target synthetic.en --normalize
    python translate.py --checkpoint runs/multi30k < test.en | python score.py \\
        --checkpoint runs/multi30k --source test.en --target -    # a model's own output

Teacher forcing, no search: fairseq-generate's --score-reference, Marian's marian-scorer,
OpenNMT-py's gold scores. Uses: the perplexity of a test set; reranking hypotheses with a model
of the other direction (noisy-channel reranking: scripts/rerank.py, on n-best lists); filtering
synthetic or crawled pairs by their scores under both directions (dual conditional
cross-entropy, Junczys-Dowmunt 2018).

Output: one line per pair, in input order: log P(target | source) in nats (natural log),
summed over the target's tokens, </s> included, as marian-scorer writes it (--normalize: the
mean per token; fairseq prints that mean in bits, divided by ln 2). The target is encoded as a
target (Marian tokenizers have a target-side model of their own), exactly as training encodes
its labels. An empty line (or one the tokenizer reads as nothing) is the empty sentence, </s>
alone, on either side. Sources are scored whole, not cut at max_seq_length as translate.py cuts
them; a pair with a side longer than the model's positional table gets nan, counted on stderr,
whose last line gives the corpus figures: target tokens, nats per token and perplexity. Several
--checkpoint dirs score with their ensemble (the mean of their next-token probabilities, as they
decode). An --output file appears only once complete. Either --source or --target (not both)
may be "-", stdin.
"""

import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from config import ArgumentParser, UserError, cli
from cpu_memory import keep_freed_memory
from data import SpecialIds, check_aligned, encode_sources, encode_targets, token_batches
from model import shift_right
from translate import (
    add_device_args,
    check_device,
    check_not_an_input,
    decoding_autocast,
    open_output,
)
from translate import read_lines as read_input  # a file, or stdin for "-"


@torch.no_grad()
def score_batch(model, src: torch.Tensor, labels: torch.Tensor, ids: SpecialIds) -> torch.Tensor:
    """src (B, S), labels (B, T) padded -> log P(labels | src) (B,), summed over real tokens."""
    src_mask = model.src_mask(src)
    memory = model.encode(src, src_mask)
    logits = model.decode(shift_right(labels, ids.start, ids.pad), memory, src_mask)  # (B, T, V)
    # -cross-entropy is the log-probability of each label; padding gives 0 (ignore_index)
    logp = -F.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=ids.pad, reduction="none"
    )  # (B, T)
    return logp.sum(1)


def score_pairs(
    model,
    tokenizer,
    ids: SpecialIds,
    sources: list[str],
    targets: list[str],
    batch_size: int = 64,
    max_tokens: int = 4096,
    mixed_precision: str = "no",
    progress=None,
) -> list[tuple[float, int]]:
    """Pairs -> (log P(target | source), target tokens) for each, in input order; NaN for a pair
    with a side longer than the model's positional table. Batches hold at most `batch_size`
    pairs and `max_tokens` padded tokens on either side (the logits are batch x length x
    vocabulary)."""
    if not sources:
        return []
    src, tgt = encode_sources(tokenizer, sources), encode_targets(tokenizer, targets)
    src, tgt = [s or [ids.eos] for s in src], [t or [ids.eos] for t in tgt]  # empty: </s> alone
    out = [(math.nan, len(t)) for t in tgt]
    longer = [max(len(s), len(t)) for s, t in zip(src, tgt, strict=True)]
    fits = [i for i, n in enumerate(longer) if n <= model.cfg.max_len]
    lengths = np.array([longer[i] for i in fits], dtype=np.int64)
    batches = token_batches(lengths, max_tokens, batch_size, 0, 0, shuffle=False)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if progress is not None:
        progress.update(len(src) - len(fits))
    for index in ([fits[j] for j in batch] for batch in batches):
        s = pad_sequence([torch.tensor(src[i]) for i in index], True, ids.pad)  # (B, S)
        t = pad_sequence([torch.tensor(tgt[i]) for i in index], True, ids.pad)  # (B, T)
        with decoding_autocast(device, mixed_precision):
            logp = score_batch(model, s.to(device), t.to(device), ids).tolist()
        for row, i in enumerate(index):
            out[i] = (logp[row], len(tgt[i]))
        if progress is not None:
            progress.update(len(index))
    model.train(was_training)
    return out


def main(argv=None):
    from ensemble import load_models

    p = ArgumentParser.of_tool(__doc__, "Teacher forcing")
    p.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        action="extend",
        help="checkpoint dir or a run's output_dir; several: their ensemble",
    )
    p.add_argument(
        "--source", required=True, help="source sentences, one per line (.gz ok; - reads stdin)"
    )
    p.add_argument(
        "--target", required=True, help="their translations, line by line (.gz ok; - reads stdin)"
    )
    p.add_argument("--output", help="default stdout")
    p.add_argument("--normalize", action="store_true", help="the mean per target token")
    p.add_argument("--batch_size", type=int, default=64, help="pairs per batch (default 64)")
    p.add_argument(
        "--max_tokens",
        type=int,
        default=4096,
        help="padded tokens per batch, either side (default 4096)",
    )
    add_device_args(p)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.max_tokens < 1:
        raise UserError("--batch_size and --max_tokens must be >= 1")
    check_device(args.device)
    check_not_an_input("--output", args.output, {"--source": args.source, "--target": args.target})
    if args.source == args.target == "-":
        raise UserError("--source - and --target -: only one of them can read stdin")
    sources, targets = read_input(args.source, "--source"), read_input(args.target, "--target")
    check_aligned(sources, targets, args.source, args.target)
    model, tokenizer, ids, _ = load_models(args.checkpoint, args.device)
    keep_freed_memory(args.device)
    bar = tqdm(desc="scoring", unit=" pairs", total=len(sources), file=sys.stderr, disable=None)
    # opened first (a temporary file, renamed when done): a bad --output fails now, not after
    with open_output(args.output) as out:
        with bar:
            scored = score_pairs(
                model,
                tokenizer,
                ids,
                sources,
                targets,
                args.batch_size,
                args.max_tokens,
                args.mixed_precision,
                progress=bar,
            )
        out.writelines(f"{logp / n if args.normalize else logp:.6f}\n" for logp, n in scored)
    if skipped := [n for n, (logp, _) in enumerate(scored, 1) if math.isnan(logp)]:
        print(
            f"warning: {len(skipped):,} pair(s) not scored (nan), a side longer than the "
            f"model's {model.cfg.max_len} positions: line {skipped[0]} first",
            file=sys.stderr,
        )
    scored = [(logp, n) for logp, n in scored if not math.isnan(logp)]
    total, tokens = sum(logp for logp, _ in scored), sum(n for _, n in scored)
    if tokens:
        nll = -total / tokens
        print(
            f"{len(scored):,} pairs, {tokens:,} target tokens (</s> included): "
            f"{nll:.4f} nats per token, perplexity {math.exp(nll):.2f}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    cli(main)
