"""Translate text with a trained checkpoint: greedy decoding with the KV cache, batched.

    python translate.py --checkpoint runs/quickstart < input.en > output.de

Exactly one output line per input line, in input order; empty input lines give empty output
lines without running the model.
"""

import argparse
import sys

import torch

from config import UserError, cli
from data import SpecialIds, encode_sources
from model import Transformer


@torch.no_grad()
def greedy(model: Transformer, src: torch.Tensor, ids: SpecialIds, max_new: int) -> torch.Tensor:
    """src (B, S) -> generated ids (B, <= max_new), eos included, pad after it.

    Encodes once; each step feeds only the newest token and reuses cached keys/values.
    """
    src_mask = model.src_mask(src)
    memory = model.encode(src, src_mask)
    cache = model.new_cache()
    out = src.new_full((src.size(0), 1), ids.start)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for _ in range(max_new):
        logits = model.decode(out[:, -1:], memory, src_mask, cache)[:, -1]  # (B, V)
        next_id = logits.argmax(-1).masked_fill(done, ids.pad)
        out = torch.cat([out, next_id[:, None]], dim=1)
        done |= next_id == ids.eos
        if done.all():
            break
    return out[:, 1:]


def max_new_tokens(src_len: int, model: Transformer, a: float = 1.5, b: int = 10) -> int:
    """Output budget a·src_len + b, within the positional table."""
    return max(1, min(int(a * src_len + b), model.cfg.max_len - 1))


def strip_special(seq: list[int], ids: SpecialIds) -> list[int]:
    """Cut at the first eos."""
    return seq[: seq.index(ids.eos)] if ids.eos in seq else seq


def translate_texts(model: Transformer, tokenizer, ids: SpecialIds, lines: list[str],
                    batch_size: int = 64, max_src_len: int | None = None) -> list[str]:
    """Lines -> translations, same count and order. Batches are formed by source length."""
    device = next(model.parameters()).device
    out = [""] * len(lines)
    todo = [i for i, line in enumerate(lines) if line.strip()]
    encoded = encode_sources(tokenizer, [lines[i] for i in todo]) if todo else []
    limit = max_src_len or model.cfg.max_len
    truncated = [todo[j] + 1 for j, e in enumerate(encoded) if len(e) > limit]
    if truncated:
        print(f"warning: {len(truncated)} input line(s) longer than {limit} tokens were truncated "
              f"(line {', '.join(map(str, truncated[:5]))}{', ...' if len(truncated) > 5 else ''})",
              file=sys.stderr)
        encoded = [e if len(e) <= limit else e[: limit - 1] + [ids.eos] for e in encoded]
    order = sorted(range(len(todo)), key=lambda j: len(encoded[j]))
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[j]) for j in chunk)
        src = torch.full((len(chunk), width), ids.pad, dtype=torch.long)
        for row, j in enumerate(chunk):
            src[row, : len(encoded[j])] = torch.tensor(encoded[j])
        hyps = greedy(model, src.to(device), ids, max_new_tokens(width, model)).tolist()
        texts = tokenizer.batch_decode([strip_special(h, ids) for h in hyps], skip_special_tokens=True)
        for j, text in zip(chunk, texts):
            out[todo[j]] = " ".join(text.split())  # one line: no stray newlines or tabs
    model.train(was_training)
    return out


def read_lines(path: str | None) -> list[str]:
    from data import _read_lines

    if path is None or path == "-":
        return [line.rstrip("\r\n") for line in sys.stdin]
    return _read_lines(path)


def main(argv=None):
    from checkpoint import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint dir or a run's output_dir")
    p.add_argument("--input", help="text file, one sentence per line (.gz ok); default stdin")
    p.add_argument("--output", help="default stdout")
    p.add_argument("--batch_size", type=int, default=64)
    args = p.parse_args(argv)
    model, tokenizer, ids, cfg = load_model(args.checkpoint)
    lines = read_lines(args.input)
    hyps = translate_texts(model, tokenizer, ids, lines, args.batch_size, cfg.max_seq_length)
    text = "".join(h + "\n" for h in hyps)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    cli(main)
