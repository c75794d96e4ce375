"""Does decoding gain from MKL-packed weights? (README, Speed: "also tried without a gain")

    python bench/mkl_packed.py

torch.ops.mkl._mkl_linear is what inductor's `freezing` runs fp32 linear layers on, on CPU.
Prints GFLOP/s of F.linear and of the packed op at the decoding shapes, then greedy and beam-4
times of the benchmark network (bench/benchmark.py's sizes) with the decoder's linear layers
eager and packed, and whether both give the same tokens. Not used by the product.
"""

import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import SpecialIds  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402
from translate import beam_search, greedy  # noqa: E402

IDS, BANNED = SpecialIds(pad=0, eos=3, start=2), [0, 2, 3]  # as bench/benchmark.py


def median_s(repeat: int, fn, *args) -> float:
    fn(*args)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class PackedLinear(torch.nn.Module):
    """nn.Linear on a weight packed once for `rows` input rows; other row counts run F.linear."""

    def __init__(self, linear: torch.nn.Linear, rows: int):
        super().__init__()
        self.weight, self.bias, self.rows = linear.weight, linear.bias, rows
        self.packed = torch.ops.mkl._mkl_reorder_linear_weight(linear.weight.detach(), rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.size(-1))
        if x2.size(0) != self.rows:
            return F.linear(x, self.weight, self.bias)
        y = torch.ops.mkl._mkl_linear(x2, self.packed, self.weight, self.bias, self.rows)
        return y.view(*x.shape[:-1], -1)


def packed(model: Transformer, rows: int) -> Transformer:
    model = copy.deepcopy(model)
    for module in list(model.decoder.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, PackedLinear(child, rows))
    model.out_proj = PackedLinear(model.out_proj, rows)
    return model


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    for m, k, n in [(64, 256, 8000), (64, 256, 1024), (64, 1024, 256), (256, 256, 8000),
                    (256, 256, 1024)]:  # fmt: skip
        x, w, b = torch.randn(m, k), torch.randn(n, k) * 0.05, torch.zeros(n)
        pw = torch.ops.mkl._mkl_reorder_linear_weight(w, m)
        eager = median_s(200, F.linear, x, w, b)
        mkl = median_s(200, torch.ops.mkl._mkl_linear, x, pw, w, b, m)
        gf = 2 * m * k * n / 1e9
        print(f"{m}x{k}x{n}: F.linear {gf / eager:6.1f} GFLOP/s, packed {gf / mkl:6.1f}")
    cfg = ModelConfig(8000, 8000, 0, d_model=256, n_heads=4, d_ff=1024, n_layers=3, max_len=256)
    model, src = Transformer(cfg).eval(), torch.randint(4, 8000, (64, 24))
    runs = {
        "greedy": (lambda mod: greedy(mod, src, IDS, 30, BANNED), 64, 7),
        "beam 4": (lambda mod: beam_search(mod, src, IDS, 30, 4, banned=BANNED), 256, 5),
    }
    for name, (decode, rows, repeat) in runs.items():
        fast = packed(model, rows)
        a, b = decode(model), decode(fast)
        same = (
            torch.equal(a, b)
            if name == "greedy"
            else [h[0].tokens for h in a] == [h[0].tokens for h in b]
        )
        for _ in range(2):
            t_eager, t_packed = median_s(repeat, decode, model), median_s(repeat, decode, fast)
            print(f"{name}: eager {t_eager * 1e3:.0f} ms, packed {t_packed * 1e3:.0f} ms "
                  f"(median of {repeat}; same tokens: {same})")  # fmt: skip


if __name__ == "__main__":
    main()
