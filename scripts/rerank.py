"""Rerank a model's n-best lists with a model of the other direction, chosen on val.

    python scripts/rerank.py --forward runs/en-de/avg10 --reverse runs/de-en/avg10 --run DIR

For val and test_2016_flickr (English->German, from --data): beam search with the forward model
keeps the --beam best hypotheses y of each source x (searched with length penalty 1.0), with
their log P(y | x) as beam search found them (the text tokenized again may be other tokens);
each is scored by the reverse model with score.py (log P(x | y)) and ranked by

    log P(y | x) / lp(|y|) + lam * log P(x | y) / |x|,   lp(L) = ((5 + L) / 6) ** alpha

the direct and channel models of noisy-channel reranking (Yee et al. 2019, without their
language model; the direct model's length normalised by GNMT's penalty instead of |y|); |y| and
|x| count tokens with </s>. A hypothesis one model cannot score (a side longer than its
positional table) ranks last. lam and alpha are chosen on val (cased BLEU, unrounded; the first
tried wins a tie, lam = 0 first: the forward model alone), then test is reranked once with
them, and once with the best lam = 0 setting on val, the forward model's own ranking, for
comparison. Writes DIR/results.json (the val grid, the choices, test's sacreBLEU with
signatures) and DIR/test_2016_flickr.hyp.de; on CPU.
"""

import math
import sys
import time
from pathlib import Path

import sacrebleu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checkpoint import load_model  # noqa: E402
from config import ArgumentParser, UserError, cli  # noqa: E402
from cpu_memory import keep_freed_memory  # noqa: E402
from data import read_aligned  # noqa: E402
from evaluate import import_sacremoses, save_selection, score  # noqa: E402
from score import score_pairs  # noqa: E402
from translate import length_penalty, translate_nbest  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared/data/multi30k"
PENALTIES = (0.6, 1.0, 1.4, 1.8, 2.2)
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # lam: the reverse model's weight


def nbest_features(forward, reverse, sources: list[str], beam: int) -> list[list[tuple]]:
    """For each source x, its hypotheses y as (text, log P(y|x), log P(x|y), |y|, |x|)."""
    model, tok, ids, cfg = forward
    found = translate_nbest(model, tok, ids, sources, 64, cfg.max_seq_length, beam=beam,
                            alpha=1.0, nbest=beam, details=True)  # fmt: skip
    # the direct model's log P(y|x) and |y| of the tokens the beam found: scoring the text
    # again would score its own tokenization (27 of 1,000 val hypotheses differed, by up to 12.7)
    flat = [(i, text, fwd, n) for i, hyps in enumerate(found) for text, _, fwd, n in hyps]
    src, hyp = [sources[i] for i, *_ in flat], [text for _, text, _, _ in flat]
    channel = score_pairs(*reverse[:3], hyp, src)  # the hypothesis is the reverse's source
    out = [[] for _ in sources]
    for (i, text, fwd, n), (rev, m) in zip(flat, channel, strict=True):
        out[i].append((text, fwd, rev, n, m))
    return out


def choose(nbest: list[list[tuple]], lam: float, alpha: float) -> list[str]:
    """Each source's best hypothesis under log P(y|x) / lp(|y|) + lam log P(x|y) / |x|."""

    def key(h):
        fwd, rev, n, m = h[1:]
        scored = not (lam and math.isnan(rev))  # nan: past the reverse model's positions
        value = fwd / length_penalty(n, alpha) + (lam * rev / m if scored and lam else 0.0)
        # the scored first (among hypotheses none of which could be, the forward ranking); a
        # forward score of nan: last
        return scored, -math.inf if math.isnan(value) else value

    return [max(hyps, key=key)[0] if hyps else "" for hyps in nbest]  # none: an empty source


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--forward", required=True, help="the en->de checkpoint whose n-best is ranked")
    p.add_argument("--reverse", required=True, help="a de->en checkpoint: the channel model")
    p.add_argument("--run", required=True, help="a directory for the results (replaced)")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--beam", type=int, default=10, help="hypotheses per sentence (default 10)")
    args = p.parse_args(argv)
    import_sacremoses()  # test's published-form BLEU needs it: said now, not after decoding
    if args.beam < 2:
        p.error("--beam must be at least 2")
    data, run = Path(args.data), Path(args.run)
    if run.exists() and not run.is_dir():
        raise UserError(f"--run {run}: not a directory")
    val_src, val_ref = read_aligned(f"{data}/val.en.gz", f"{data}/val.de.gz")
    test_src, test_ref = read_aligned(
        f"{data}/test_2016_flickr.en.gz", f"{data}/test_2016_flickr.de.gz"
    )
    for split, lines in (("val", val_src), ("test_2016_flickr", test_src)):
        if not lines:
            raise UserError(f"{data}/{split}.en.gz: no sentences")
    keep_freed_memory()
    forward, reverse = load_model(args.forward), load_model(args.reverse)
    for name, (_, _, _, cfg), langs in (("--forward", forward, ("en", "de")),
                                        ("--reverse", reverse, ("de", "en"))):  # fmt: skip
        if (cfg.src_lang, cfg.tgt_lang) != langs:
            raise UserError(
                f"{name}: a {cfg.src_lang}->{cfg.tgt_lang} model, not {'->'.join(langs)}"
            )
    try:  # once the models load: a failure leaves no folder
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--run {run}: cannot make it ({e.strerror})") from None
    t0 = time.time()
    val = nbest_features(forward, reverse, val_src, args.beam)
    print(f"val: {args.beam}-best of {len(val_src)} sentences scored in {time.time() - t0:.0f} s")
    results = []
    for lam in WEIGHTS:
        for alpha in PENALTIES:
            exact = sacrebleu.BLEU().corpus_score(choose(val, lam, alpha), [val_ref]).score
            results.append(
                {"lam": lam, "alpha": alpha, "val_bleu": round(exact, 2), "exact": exact}
            )
            print(f"val  lam {lam:.1f} alpha {alpha:.1f}: BLEU {exact:.2f}", flush=True)
    chosen = max(results, key=lambda r: r["exact"])
    alone = max((r for r in results if r["lam"] == 0), key=lambda r: r["exact"])
    for r in results:
        del r["exact"]
    test = nbest_features(forward, reverse, test_src, args.beam)
    hyps = choose(test, chosen["lam"], chosen["alpha"])
    cased, lower = score(hyps, test_ref), score(hyps, test_ref, lowercase=True, moses_lang="de")
    baseline = choose(test, 0.0, alone["alpha"])  # the forward model's own ranking
    report = {"forward": args.forward, "reverse": args.reverse, "beam": args.beam,
              "chosen_on_val": chosen, "val": results, "test_cased": cased,
              "test_lowercased": lower, "forward_alone_on_val": alone,
              "forward_alone_test_cased": score(baseline, test_ref),
              "forward_alone_test_lowercased": score(baseline, test_ref, lowercase=True,
                                                     moses_lang="de")}  # fmt: skip
    save_selection(run, report, hyps)
    lc, mixed = report["forward_alone_test_lowercased"], report["forward_alone_test_cased"]
    print(f"the forward model alone (lam 0, alpha {alone['alpha']}): test BLEU lowercased "
          f"{lc['bleu']:.2f}, cased {mixed['bleu']:.2f}, chrF {mixed['chrf']:.2f}")  # fmt: skip


if __name__ == "__main__":
    cli(main)
