"""Decoding on 2 cores: one process on both threads against two one-thread processes.

    python bench/split_decode.py [--repeat 7]

bench/benchmark.py's random network and batch (64 sentences, exactly 30 new tokens), greedy and
beam 4, fp32, freed memory kept (as translate.py keeps it on CPU). The split side hands 32
sentences to each of two forked one-thread workers (a multiprocessing pool started once, the
model inherited through fork) and waits for both. Runs interleave (bench/mkl_packed.py's
medians_s); prints sentences/s of each side, the ratio, and whether the outputs are identical.
Training gains from such a split (docs/distributed.md); this measures whether decoding
would.
"""

import argparse
import multiprocessing as mp
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.benchmark import BATCH, Bench, our_model, random_batch  # noqa: E402
from bench.mkl_packed import decoders, medians_s  # noqa: E402
from cpu_memory import keep_freed_memory  # noqa: E402

MODEL = SRC = None  # set before the pool forks, inherited by the workers


def decode(rows: slice, name: str) -> list[list[int]]:
    """The top tokens of SRC[rows], decoded as bench/mkl_packed.py's decoders[name] does."""
    with torch.no_grad():
        return decoders(SRC[rows])[name][0](MODEL)


def main():
    global MODEL, SRC
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory("cpu")
    MODEL, SRC = our_model().eval(), random_batch(Bench("cpu", 2))["src"]
    halves = [slice(0, BATCH // 2), slice(BATCH // 2, BATCH)]
    with mp.get_context("fork").Pool(2, initializer=torch.set_num_threads, initargs=(1,)) as pool:

        def one(outs: dict, name: str):
            outs["one"] = decode(slice(None), name)

        def split(outs: dict, name: str):
            parts = pool.starmap(decode, [(h, name) for h in halves])
            outs["split"] = parts[0] + parts[1]

        for name in ("greedy", "beam 4"):
            outs = {}
            t_one, t_split = medians_s(args.repeat, (one, outs, name), (split, outs, name))
            print(
                f"{name}: one process, 2 threads {BATCH / t_one:.1f} sentences/s; two processes, "
                f"1 thread each {BATCH / t_split:.1f}: {t_one / t_split:.2f}x, identical "
                f"{outs['one'] == outs['split']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
