"""Decoding speed of this checkout against another one, interleaved in one process.

    git worktree add /tmp/base HEAD~1        # the code to compare with
    python bench/decode_ab.py --base /tmp/base [--checkpoint runs/multi30k/avg5]

Both checkouts' modules are imported side by side (each with its own module objects; each side's
tasks are built before the next side is imported), and every task runs once per round in each
(bench/mkl_packed.py's medians_s), so that the machine's drift falls on both alike. Tasks:
bench/benchmark.py's random network and batch (64 sentences, exactly 30 new tokens; greedy and
beam 4, as bench/mkl_packed.py decodes them), and with `--checkpoint` the first `--lines` of
Multi30k val translated by translate_texts (greedy and beam 5 in batches of 64, beam 10 in
batches of 200, length penalty 1.0). Prints the median seconds of each side, the ratio, and
whether the outputs are identical. fp32, 2 threads, freed memory kept (as translate.py keeps it
on CPU).
"""

import argparse
import gzip
import importlib
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
from bench.mkl_packed import medians_s  # noqa: E402


def load(repo: Path) -> dict:
    """Import a checkout's modules under their usual names, then forget those names (and
    sys.path as it was) so the next checkout imports its own."""
    ours = {p.stem for p in repo.glob("*.py")} | {"model", "bench"}
    for name in [n for n in sys.modules if n.split(".")[0] in ours]:
        del sys.modules[name]
    path = list(sys.path)
    sys.path.insert(0, str(repo))
    try:
        names = ("translate", "checkpoint", "cpu_memory", "bench.benchmark", "bench.mkl_packed")
        modules = {n.split(".")[-1]: importlib.import_module(n) for n in names}
    finally:
        sys.path[:] = path
    for name, module in modules.items():  # not this checkout's, found further down sys.path
        if not Path(module.__file__).resolve().is_relative_to(repo.resolve()):
            sys.exit(f"{repo}: no {name} of its own (imported {module.__file__})")
    return modules


def tasks(side: dict, checkpoint: str | None, lines: list[str]) -> dict:
    bench, tr = side["benchmark"], side["translate"]
    src = bench.random_batch(bench.Bench("cpu", torch.get_num_threads()))["src"]
    net = bench.our_model().eval()
    out = {  # bench/mkl_packed.py's greedy and beam 4 (top tokens per sentence)
        f"random net, {name}": lambda f=decode: f(net)
        for name, (decode, *_) in side["mkl_packed"].decoders(src).items()
    }
    if checkpoint:
        model, tok, ids, _ = side["checkpoint"].load_model(checkpoint)

        def run(batch, beam):
            return tr.translate_texts(model, tok, ids, lines, batch, beam=beam, alpha=1.0)

        for name, batch, beam in (("greedy", 64, 1), ("beam 5", 64, 5), ("beam 10", 200, 10)):
            out[f"val, {name}, batches of {batch}"] = lambda b=batch, k=beam: run(b, k)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the other checkout (a directory)")
    p.add_argument("--checkpoint", help="a Multi30k checkpoint directory (optional)")
    p.add_argument("--valid", default="../shared/data/multi30k/val.en.gz")
    p.add_argument("--lines", type=int, default=400)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    lines = []
    if args.checkpoint:
        with gzip.open(args.valid, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()[: args.lines]
    work = {}  # each side's tasks are built before the next side's modules are imported
    for who, repo in (("base", Path(args.base).resolve()), ("this", HERE)):
        side = load(repo)
        side["cpu_memory"].keep_freed_memory()
        work[who] = tasks(side, args.checkpoint, lines)
    print(f"medians of {args.rounds} interleaved rounds; base: {args.base}")
    with torch.no_grad():
        for task, this in work["this"].items():
            base = work["base"][task]
            same = base() == this()
            t_base, t_this = medians_s(args.rounds, (base,), (this,))
            print(f"  {task:32s} base {t_base:6.3f} s  this {t_this:6.3f} s  "
                  f"{t_base / t_this:.2f}x  identical output: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
