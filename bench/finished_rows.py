"""What greedy decoding gains by dropping finished sentences from the batch (README, Translating).

    python bench/finished_rows.py --checkpoint runs/multi30k [--batch_sizes 64 200] [--repeat 5]

Translates Multi30k val (1,014 sentences) with translate.py's greedy, which drops a sentence's
rows when it ends, and with `greedy_keeping_rows` below, the loop it replaced, which carries
finished rows (emitting padding) until every sentence has ended. Same batching (sorted by
length), the two timed interleaved; prints the median seconds of each, the speed-up, and how
many translations are identical (all of them should be). Needs a trained checkpoint.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import translate  # noqa: E402
from checkpoint import load_model  # noqa: E402
from data import read_lines  # noqa: E402


@torch.no_grad()
def greedy_keeping_rows(model, src, ids, max_new, banned=(), sampler=None, lines=None):
    """translate.greedy before finished rows left the batch (the same tokens, more work);
    greedy only (translate.greedy's signature, sampling refused)."""
    assert sampler is None, "greedy only"
    src_mask = translate.decoding_mask(model, src)
    memory = model.encode(src, src_mask)
    cache = model.new_cache()
    limits = translate._limits(max_new, src.size(0), src.device)
    out = src.new_full((src.size(0), 1), ids.start)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for step in range(int(limits.max())):
        logits = model.decode(out[:, -1:], memory, src_mask, cache)[:, -1]  # (B, V)
        if len(banned):
            logits[:, list(banned)] = -torch.inf
        next_id = logits.argmax(-1).masked_fill(done, ids.pad)
        out = torch.cat([out, next_id[:, None]], dim=1)
        done |= (next_id == ids.eos) | (limits <= step + 1)
        if done.all():
            break
    return out[:, 1:]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--source", default=str(ROOT.parent / "shared/data/multi30k/val.en.gz"))
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 200])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, ids, _ = load_model(args.checkpoint)
    lines = read_lines(args.source)
    print(f"{args.checkpoint}: greedy on {len(lines)} sentences of {args.source}")
    for batch_size in args.batch_sizes:
        times, outs = {"dropped": [], "kept": []}, {}
        for _ in range(args.repeat):
            for name in times:
                fn = translate.greedy if name == "dropped" else greedy_keeping_rows
                with mock.patch.object(translate, "greedy", fn):
                    start = time.perf_counter()
                    outs[name] = translate.translate_texts(model, tokenizer, ids, lines, batch_size)
                    times[name].append(time.perf_counter() - start)
        kept, dropped = (statistics.median(times[k]) for k in ("kept", "dropped"))
        same = sum(a == b for a, b in zip(outs["kept"], outs["dropped"], strict=True))
        print(
            f"batch {batch_size}: finished rows kept {kept:.2f} s ({len(lines) / kept:.0f} "
            f"sentences/s), dropped {dropped:.2f} s ({len(lines) / dropped:.0f} sentences/s): "
            f"{kept / dropped:.2f}x, identical {same}/{len(lines)}"
        )


if __name__ == "__main__":
    main()
