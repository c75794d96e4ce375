"""Does decoding gain from bf16 autocast on CPU? (docs/speed.md: "bf16 autocast on CPU")

    python bench/bf16_decode.py --checkpoint runs/multi30k/best [--sentences 400] [--rounds 3]

Translates the first Multi30k val sentences with a trained checkpoint, greedy and beam 5
(length penalty 1.0, batches of 64), in fp32 and under `torch.autocast("cpu", bfloat16)`,
interleaved, and prints the median times, the share of identical translations and both BLEUs.
A trained model, not random weights: how often bf16 rounding changes a translation depends on
how peaked the model's distributions are. translate.py's `--mixed_precision bf16` decodes so.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import sacrebleu
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checkpoint import load_model  # noqa: E402
from cpu_memory import keep_freed_memory  # noqa: E402
from data import read_lines  # noqa: E402
from translate import translate_texts  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared/data/multi30k"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--sentences", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory(torch.device("cpu"))
    model, tok, ids, cfg = load_model(args.checkpoint)
    src = read_lines(f"{args.data}/val.en.gz")[: args.sentences]
    ref = read_lines(f"{args.data}/val.de.gz")[: args.sentences]
    print(f"torch {torch.__version__}, 2 threads, {len(src)} val sentences, {args.checkpoint}")

    def run(bf16: bool, beam: int) -> tuple[float, list[str]]:
        kw = {} if beam == 1 else {"beam": beam, "alpha": 1.0}
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hyps = translate_texts(model, tok, ids, src, 64, cfg.max_seq_length, **kw)
        return time.perf_counter() - start, hyps

    for beam in (1, 5):
        times, hyps = {False: [], True: []}, {}
        for _ in range(args.rounds):
            for bf16 in (False, True):
                seconds, hyps[bf16] = run(bf16, beam)
                times[bf16].append(seconds)
        same = sum(a == b for a, b in zip(hyps[False], hyps[True])) / len(src)
        f32, b16 = statistics.median(times[False]), statistics.median(times[True])
        bleu = {k: sacrebleu.corpus_bleu(h, [ref]).score for k, h in hyps.items()}
        print(
            f"{'greedy' if beam == 1 else f'beam {beam}'}: fp32 {f32:.2f} s, bf16 {b16:.2f} s "
            f"({f32 / b16:.2f}x), identical translations {same:.1%}, "
            f"BLEU fp32 {bleu[False]:.2f}, bf16 {bleu[True]:.2f}"
        )


if __name__ == "__main__":
    main()
