"""Does decoding gain from torch.compile with inductor's `freezing`? (docs/speed.md)

    python bench/compiled_decode.py                 # compiled with freezing
    python bench/compiled_decode.py --no-freezing   # compiled without it
    python bench/compiled_decode.py --cpp-wrapper   # with freezing, the graph called from C++

`freezing` turns the weights into constants of the compiled graph, so inductor can prepack them
and fold what depends only on them. With a static batch size it packs fp32 linear layers for
MKL (torch.ops.mkl._mkl_linear, what bench/mkl_packed.py does by hand); with a symbolic one, for
oneDNN (torch/_inductor/fx_passes/mkldnn_fusion.py). So greedy and beam 4 each get their own
compiled copy of `model.decode` with torch.compile's default (automatic) dynamic shapes: the
batch (64 and 256 rows, constant since no sentence may end early) stays static, the growing
self-attention cache becomes dynamic after one recompile.

Prints the first call's time (compiling included), the graphs compiled and linear weights
packed, whether eager and compiled decoding give the same tokens, then eager and compiled
times, interleaved. One variant per process: the freezing setting is read when a graph
compiles. `--cpp-wrapper` sets inductor's cpp_wrapper: the compiled graph's kernels are
called from generated C++ instead of Python, to take the Python out from between kernels. Not
used by the product.
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.benchmark import BATCH, NEW_TOKENS, Bench, our_model, random_batch  # noqa: E402
from bench.mkl_packed import decoders, medians_s  # noqa: E402


@torch.no_grad()
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--no-freezing", dest="freezing", action="store_false")
    p.add_argument("--cpp-wrapper", action="store_true")
    args = p.parse_args()
    freezing = torch._inductor.config.freezing = args.freezing
    torch._inductor.config.cpp_wrapper = args.cpp_wrapper
    b = Bench("cpu", threads=2)
    model, src = our_model().eval(), random_batch(b)["src"]
    runs = decoders(src)
    print(f"{BATCH} sentences, {NEW_TOKENS} new tokens each; compiled with freezing={freezing}, "
          f"cpp_wrapper={args.cpp_wrapper}")  # fmt: skip
    compiled = {}
    for name, (decode, _, _) in runs.items():
        fast = compiled[name] = copy.deepcopy(model)
        fast.decode = torch.compile(fast.decode)
        graphs, packed = counters["stats"]["unique_graphs"], _packed()
        start = time.perf_counter()
        got = decode(fast)
        first = time.perf_counter() - start
        same = decode(model) == got
        print(f"{name}: first call {first:.1f} s, compiling included "
              f"({counters['stats']['unique_graphs'] - graphs} graphs, "
              f"{_packed() - packed} linear weights packed); same tokens: {same}")  # fmt: skip
        if not same:
            sys.exit(f"{name}: compiled decoding gave other tokens than eager")
    for _ in range(2):
        for name, (decode, _, repeat) in runs.items():
            eager, fast = medians_s(repeat, (decode, model), (decode, compiled[name]))
            print(f"{name}: eager {eager * 1e3:.0f} ms, compiled {fast * 1e3:.0f} ms, "
                  f"{eager / fast:.2f}x (medians of {repeat} interleaved)")  # fmt: skip


def _packed() -> int:
    return counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"]


if __name__ == "__main__":
    main()
