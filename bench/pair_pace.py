"""One two-thread run against two one-thread runs side by side (scripts/multi30k_pair.sh).

    python bench/pair_pace.py [--steps 800] [--rounds 1] [extra train.py arguments]

Trains configs/multi30k.json in bf16 for --steps steps (no BLEU validation, no saves) first on
both threads, then as two one-thread runs at once (seeds 1234 and 2), --rounds times, and prints
the median logged target tokens/s of each run over its second half (after warmup's first
steps and the caches), and the pair's sum against the one run. Needs the machine to itself.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(out: Path, steps: int, threads: int, seed: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "train.py", "--config", "configs/multi30k.json",
           "--max_steps", str(steps), "--cooldown_steps", "0", "--mixed_precision", "bf16",
           "--valid_bleu_samples", "0", "--best_metric", "loss", "--save_every", "100000",
           "--keep_last", "1", "--log_with", "null", "--seed", str(seed), "--output_dir", str(out),
           *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log(out), "w")
    )  # a file, not a pipe: a pipe nobody reads while the other run trains would fill and stall


def log(out: Path) -> Path:
    return out.with_name(out.name + ".log")


def failed(runs: dict) -> str | None:
    """Wait for every run {out: process} (none left training into a directory being deleted);
    the end of the first failure's stderr, if any."""
    codes = {out: proc.wait() for out, proc in runs.items()}
    bad = [out for out, code in codes.items() if code]
    return log(bad[0]).read_text()[-2000:] if bad else None


def tokens_per_s(out: Path, steps: int) -> float:
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return statistics.median(r["tok_s"] for r in rows if "tok_s" in r and r["step"] > steps // 2)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--rounds", type=int, default=1)
    args, extra = p.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            one = Path(tmp, f"one{r}")
            if err := failed({one: train(one, args.steps, 2, 1234, extra)}):
                sys.exit(f"the two-thread run failed:\n{err}")
            pair = [Path(tmp, f"pair{r}_{m}") for m in "ab"]
            if err := failed(
                {out: train(out, args.steps, 1, s, extra) for out, s in zip(pair, (1234, 2))}
            ):
                sys.exit(f"a one-thread run failed:\n{err}")
            a, b, o = (tokens_per_s(out, args.steps) for out in (*pair, one))
            print(
                f"round {r + 1}: one run, 2 threads {o:,.0f} tokens/s; two runs, 1 thread "
                f"each {a:,.0f} + {b:,.0f} = {a + b:,.0f} tokens/s: {(a + b) / o:.2f}x"
            )


if __name__ == "__main__":
    main()
