"""Does decoding gain from MKL-packed weights? (docs/speed.md: "a small gain, not adopted yet")

    python bench/mkl_packed.py

torch.ops.mkl._mkl_linear is what inductor's `freezing` runs fp32 linear layers on, on CPU.
Prints GFLOP/s of F.linear and of the packed op at the decoding shapes, then greedy and beam-4
times of bench/benchmark.py's network and batch with the decoder's linear layers and the output
projection eager and packed, and whether both give the same tokens. Not used by the product.
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.benchmark import (  # noqa: E402
    BANNED,
    BATCH,
    IDS,
    NEW_TOKENS,
    SIZES,
    VOCAB,
    Bench,
    our_model,
    random_batch,
)
from model import Transformer  # noqa: E402
from translate import beam_search, greedy  # noqa: E402


def medians_s(repeat: int, *calls) -> list[float]:
    """Median seconds of each (fn, *args) call, the calls interleaved so drift hits all alike."""
    times = [[] for _ in calls]
    for i in range(repeat + 1):  # the first round warms up
        for (fn, *args), out in zip(calls, times):
            start = time.perf_counter()
            fn(*args)
            if i:
                out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def decoders(src: torch.Tensor) -> dict:
    """{name: (decode(model) -> top tokens per sentence, rows per step, timing repeats)}."""

    def beam4(model):
        return [h[0].tokens for h in beam_search(model, src, IDS, NEW_TOKENS, 4, banned=BANNED)]

    return {
        "greedy": (lambda model: greedy(model, src, IDS, NEW_TOKENS, BANNED).tolist(), BATCH, 7),
        "beam 4": (beam4, 4 * BATCH, 5),
    }


class PackedLinear(torch.nn.Module):
    """nn.Linear on a weight packed once for `rows` input rows; other row counts run F.linear.

    The packed copy is a snapshot: it does not follow later changes to the weight.
    """

    def __init__(self, linear: torch.nn.Linear, rows: int):
        super().__init__()
        self.weight, self.bias, self.rows = linear.weight, linear.bias, rows
        self.packed = torch.ops.mkl._mkl_reorder_linear_weight(linear.weight.detach(), rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The op itself falls back to F.linear when the row count is not `rows`.
        return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, self.bias, self.rows)


def packed(model: Transformer, rows: int) -> Transformer:
    """A copy with every decoder linear layer and the output projection packed."""
    model = copy.deepcopy(model)
    for module in list(model.decoder.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, PackedLinear(child, rows))
    model.out_proj = PackedLinear(model.out_proj, rows)
    return model


@torch.no_grad()
def main():
    if not torch.backends.mkl.is_available():
        sys.exit("this torch build has no MKL: nothing to compare")
    b = Bench("cpu", threads=2)
    torch.manual_seed(0)
    d, d_ff = SIZES["d_model"], SIZES["d_ff"]
    # (rows, in, out): a greedy step has BATCH rows, a beam-4 step 4 x BATCH
    shapes = [
        (m, k, n) for m in (BATCH, 4 * BATCH) for k, n in ((d, d), (d, d_ff), (d_ff, d), (d, VOCAB))
    ]
    for m, k, n in shapes:
        x, w, b = torch.randn(m, k), torch.randn(n, k) * 0.05, torch.zeros(n)
        pw = torch.ops.mkl._mkl_reorder_linear_weight(w, m)
        eager, mkl = medians_s(
            200, (F.linear, x, w, b), (torch.ops.mkl._mkl_linear, x, pw, w, b, m)
        )
        gf = 2 * m * k * n / 1e9
        print(f"{m}x{k}x{n}: F.linear {gf / eager:6.1f} GFLOP/s, packed {gf / mkl:6.1f}")
    model, src = our_model().eval(), random_batch(b)["src"]
    for name, (decode, rows, repeat) in decoders(src).items():
        fast = packed(model, rows)
        same = decode(model) == decode(fast)
        for _ in range(2):
            t_eager, t_packed = medians_s(repeat, (decode, model), (decode, fast))
            print(f"{name}: eager {t_eager * 1e3:.0f} ms, packed {t_packed * 1e3:.0f} ms "
                  f"(medians of {repeat} interleaved; same tokens: {same})")  # fmt: skip


if __name__ == "__main__":
    # no options: --help prints what it measures instead of running it
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    main()
