"""Does MBR reranking of the beam's n-best beat its top hypothesis? A check on Multi30k val.

    python scripts/mbr_check.py --checkpoint runs/multi30k/avg10 [--beam 10] [--length_penalty 1.0]

Decodes val once with beam search, keeping all `--beam` hypotheses, then picks for each sentence
the hypothesis with the highest expected utility against all of the first K, itself included
(minimum Bayes risk, Kumar & Byrne 2004): argmax_i sum_j w_j U(h_i, h_j), with U sentence BLEU
or chrF (sacreBLEU) and w a softmax at temperature T (None: uniform) of the beam's
length-normalised scores (log P / lp, see translate.py), not of log P itself. Prints the corpus
BLEU of the top hypothesis and of each MBR setting on val and on four halves of it (even / odd
lines, first / second half), then, since the best of many settings on one set flatters itself,
each half's best setting scored on the other half against the top hypothesis. Val only: never
reads test.
"""

import functools
import math
import sys
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checkpoint import load_model  # noqa: E402
from config import ArgumentParser, cli  # noqa: E402
from data import read_aligned  # noqa: E402
from evaluate import score  # noqa: E402
from translate import check_length_penalty, translate_nbest  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared/data/multi30k"


def sentence_utility(metric):
    """U(h, r): the metric's sentence score of h against r, each ordered pair computed once."""
    return functools.cache(lambda h, r: metric.sentence_score(h, [r]).score)


def mbr_pick(nbest: list[tuple[str, float]], utility, k: int, temperature: float | None) -> str:
    """The hypothesis of the first k with the highest expected utility against all k."""
    texts, scores = [t for t, _ in nbest[:k]], [s for _, s in nbest[:k]]
    if temperature is None:
        w = [1.0] * len(scores)
    else:
        w = [math.exp((s - max(scores)) / temperature) for s in scores]
    return max(texts, key=lambda h: sum(wj * utility(h, hj) for wj, hj in zip(w, texts)))


def main():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, e.g. runs/multi30k/avg10")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--beam", type=int, default=10, help="beam size = n-best size (default 10)")
    p.add_argument("--length_penalty", type=float, default=1.0,
                   help="GNMT alpha of the beam, as translate.py's (default 1.0)")  # fmt: skip
    args = p.parse_args()
    if args.beam < 2:
        p.error("--beam: at least 2 hypotheses are needed to rerank")
    check_length_penalty(args.length_penalty)  # as translate.py's
    model, tok, ids, cfg = load_model(args.checkpoint)
    src, ref = read_aligned(f"{args.data}/val.en.gz", f"{args.data}/val.de.gz")
    found = translate_nbest(
        model, tok, ids, src, 64, cfg.max_seq_length,
        beam=args.beam, alpha=args.length_penalty, nbest=args.beam,
    )  # fmt: skip
    settings = {"top hypothesis": [f[0][0] if f else "" for f in found]}  # "": an empty line
    metrics = {"bleu": BLEU(effective_order=True), "chrf": CHRF()}
    for name, metric in metrics.items():
        utility = sentence_utility(metric)
        for temperature in (None, 0.5, 1.0, 2.0):
            for k in sorted({min(5, args.beam), args.beam}):
                hyps = [mbr_pick(f, utility, k, temperature) if f else "" for f in found]
                settings[f"MBR {name} T {temperature} first {k}"] = hyps
    # Choosing the best of many settings on val flatters it: choose on one half, score the other.
    n = len(ref)
    halves = {"even": range(0, n, 2), "odd": range(1, n, 2), "first": range(n // 2),
              "second": range(n // 2, n)}  # fmt: skip
    pairs = {"even": "odd", "odd": "even", "first": "second", "second": "first"}

    def bleu(hyps, idx):
        return score([hyps[i] for i in idx], [ref[i] for i in idx])["bleu"]

    table = {s: {h: bleu(hyps, idx) for h, idx in halves.items()} for s, hyps in settings.items()}
    print(f"beam {args.beam}, lp {args.length_penalty}; val BLEU, whole and by halves:")
    for s, hyps in settings.items():
        cells = " ".join(f"{h} {b:.2f}" for h, b in table[s].items())
        print(f"  {s:26s} {bleu(hyps, range(n)):.2f}   {cells}")
    for chose_on, scored_on in pairs.items():
        best = max(table, key=lambda s: table[s][chose_on])
        gain = table[best][scored_on] - table["top hypothesis"][scored_on]
        print(f"chosen on {chose_on}: {best}; on {scored_on}: {gain:+.2f} over the top hypothesis")


if __name__ == "__main__":
    cli(main)
