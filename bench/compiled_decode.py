"""Does decoding gain from torch.compile with inductor's `freezing`? (README, Speed)

    python bench/compiled_decode.py                 # compiled with freezing
    python bench/compiled_decode.py --no-freezing   # compiled without it

`freezing` turns the weights into constants of the compiled graph, so inductor can prepack them
and fold what depends only on them. Compiles `model.decode` with dynamic shapes (the
self-attention cache grows by one position a step); with a symbolic batch size inductor packs
fp32 linear layers for oneDNN, not for MKL as bench/mkl_packed.py does by hand (MKL packing
needs a static batch: torch/_inductor/fx_passes/mkldnn_fusion.py). Prints the time of the first
call (compiling included), whether greedy and beam-4 decoding of bench/benchmark.py's
network and batch give the same tokens as eager, and eager and compiled times, interleaved.
One variant per process: a compiled graph must not be reused for another freezing setting.
Not used by the product.
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.benchmark import BANNED, BATCH, IDS, NEW_TOKENS, Bench, our_model, random_batch  # noqa: E402
from bench.mkl_packed import medians_s  # noqa: E402
from translate import beam_search, greedy  # noqa: E402


@torch.no_grad()
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--no-freezing", dest="freezing", action="store_false")
    freezing = p.parse_args().freezing
    torch._inductor.config.freezing = freezing  # read when the graph compiles, at first call
    b = Bench("cpu", threads=2)
    model, src = our_model().eval(), random_batch(b)["src"]
    fast = copy.deepcopy(model)
    fast.decode = torch.compile(fast.decode, dynamic=True)
    runs = {
        "greedy": (lambda m: greedy(m, src, IDS, NEW_TOKENS, BANNED), 7),
        "beam 4": (lambda m: beam_search(m, src, IDS, NEW_TOKENS, 4, banned=BANNED), 5),
    }
    print(f"{BATCH} sentences, {NEW_TOKENS} new tokens each; compiled with freezing={freezing}")
    for name, (decode, _) in runs.items():
        start = time.perf_counter()
        got = decode(fast)
        first = time.perf_counter() - start
        ref = decode(model)
        if name == "greedy":
            same = torch.equal(ref, got)
        else:
            same = [h[0].tokens for h in ref] == [h[0].tokens for h in got]
        print(f"{name}: first compiled call {first:.1f} s (compiling); same tokens: {same}")
    for _ in range(2):
        for name, (decode, repeat) in runs.items():
            eager, compiled = medians_s(repeat, (decode, model), (decode, fast))
            print(f"{name}: eager {eager * 1e3:.0f} ms, compiled {compiled * 1e3:.0f} ms, "
                  f"{eager / compiled:.2f}x (medians of {repeat} interleaved)")  # fmt: skip


if __name__ == "__main__":
    main()
