"""Average the weights of a run's last N checkpoints into a new checkpoint (paper §6.1: last 5).

    python average.py --run runs/multi30k --last 5 --out runs/multi30k/avg5
    python average.py --checkpoints DIR1 DIR2 ... --out DIR

The result is a normal checkpoint directory (config, tokenizer and averaged safetensors weights;
the files other than the weights come from the newest checkpoint, with --checkpoints the last
listed). The checkpoints must be of one model: the same model_config.json and vocabulary.
"""

import filecmp
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from checkpoint import (
    WEIGHTS,
    check_replaceable,
    checkpoint_tokenizer,
    resolve,
    staged_output,
    step_dirs,
)
from config import ArgumentParser, UserError, cli

# settings that do not change what the weights compute: dropout rates (a run resumed with
# another dropout still averages with its earlier checkpoints) and max_len, which only sizes the
# sinusoidal table, not saved (a resume at an epoch's end may change max_seq_length); the
# average takes the newest checkpoint's
TRAINING_ONLY = {"dropout", "attn_dropout", "act_dropout", "word_dropout", "max_len"}


def check_same_model(dirs: list[Path]) -> None:
    """UserError unless every checkpoint has the first's model config and vocabulary: weights of
    equal shapes can still belong to other models (other heads, other ids for the same pieces),
    and their average would be silently meaningless."""

    first_cfg = read_json(dirs[0] / "model_config.json")
    first_vocab = checkpoint_tokenizer(dirs[0]).get_vocab()
    first_way = direction(dirs[0])
    for d in dirs[1:]:
        if (way := direction(d)) != first_way:  # one vocabulary, two languages: not one model
            raise UserError(f"{d}: trained {way}, {dirs[0]} {first_way}")
        cfg = read_json(d / "model_config.json")
        keys = (first_cfg.keys() | cfg.keys()) - TRAINING_ONLY
        differ = sorted(k for k in keys if first_cfg.get(k) != cfg.get(k))
        if differ:
            raise UserError(f"{d}: model_config.json differs from {dirs[0]}'s in {differ}")
        if checkpoint_tokenizer(d).get_vocab() != first_vocab:
            raise UserError(f"{d}: its tokenizer's vocabulary differs from {dirs[0]}'s")


def direction(d: Path) -> str:
    """src->tgt, as the checkpoint's config.json says."""
    cfg = read_json(d / "config.json")
    return f"{cfg.get('src_lang', 'en')}->{cfg.get('tgt_lang', 'de')}"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None


def average(dirs: list[Path], out: Path) -> None:
    total = None
    for d in dirs:
        try:
            weights = load_file(d / WEIGHTS)
        except Exception as e:
            raise UserError(f"{d / WEIGHTS}: cannot read weights ({e})") from None
        if total is None:
            total = {k: v.double() for k, v in weights.items()}
        elif weights.keys() != total.keys():
            raise UserError(f"{d}: its weights do not match {dirs[0]}")
        else:
            for k, v in weights.items():
                if v.shape != total[k].shape:  # e.g. another vocabulary size
                    raise UserError(
                        f"{d}: {k} has shape {tuple(v.shape)}, {tuple(total[k].shape)} in {dirs[0]}"
                    )
                total[k] += v.double()
    with staged_output(out) as tmp:
        for f in dirs[-1].iterdir():  # config, model_config, tokenizer from the newest one
            # best.json records one checkpoint's step and validation: not the average's
            if f.is_file() and f.name not in (WEIGHTS, "trainer_state.json", "best.json"):
                shutil.copy2(f, tmp / f.name)
        avg = {k: (v / len(dirs)).to(torch.float32).contiguous() for k, v in total.items()}
        meta = {"format": "pt", "averaged": " ".join(map(str, dirs))}
        save_file(avg, tmp / WEIGHTS, metadata=meta)


def given_twice(dirs: list[Path]) -> list[str]:
    """Checkpoints given twice, by two paths or as a copy (a run's best/ is one of its steps):
    weights files of the same bytes. A copy may have a new time, so only the size screens;
    other checkpoints of one model differ within the first tensor, where the comparison stops."""
    files = [d / WEIGHTS for d in dirs]
    sizes = [f.stat().st_size for f in files]
    return sorted(
        {str(d) for i, d in enumerate(dirs) for j in range(len(dirs))
         if i != j and sizes[i] == sizes[j] and filecmp.cmp(files[i], files[j], shallow=False)}
    )  # fmt: skip


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a run's output_dir: average its newest --last checkpoints")
    p.add_argument("--last", type=int, help="with --run (default 5)")
    p.add_argument(
        "--checkpoints",
        "--checkpoint",  # the other scripts' spelling (it was taken as an abbreviation anyway)
        nargs="+",
        action="extend",  # given twice: both, not the last alone
        help="checkpoint directories to average (two or more)",
    )
    p.add_argument(
        "--out",
        "--output",
        required=True,
        help="the new checkpoint (a checkpoint of ours there, such as an earlier average, is "
        "replaced; not a run's best/, last or step checkpoints, an export, or any other folder)",
    )
    args = p.parse_args(argv)
    if bool(args.run) == bool(args.checkpoints):
        raise UserError("give either --run (with --last) or --checkpoints")
    if args.last is not None and not args.run:  # ignored, as said nowhere
        raise UserError("--last N counts a run's newest checkpoints: it needs --run")
    args.last = 5 if args.last is None else args.last
    if args.last < 1:
        raise UserError(f"--last must be >= 1 (got {args.last})")
    dirs = [resolve(d) for d in args.checkpoints] if args.checkpoints else None
    if args.run:
        dirs = step_dirs(Path(args.run) / "checkpoints")[-args.last :]
    if not dirs:
        where = f" in {Path(args.run) / 'checkpoints'}" if args.run else ""
        raise UserError(f"no checkpoints to average{where}")
    if args.checkpoints and len(dirs) == 1:  # a copy of it, as said nowhere
        raise UserError(
            "--checkpoints: one checkpoint, nothing to average (a run's newest N: --run DIR "
            "--last N)"
        )
    for d in dirs:
        if not (d / WEIGHTS).exists():
            raise UserError(f"{d}: no {WEIGHTS}")
    check_replaceable(args.out, dirs)
    check_same_model(dirs)
    if twice := given_twice(dirs):  # it would weigh double, silently
        raise UserError(f"checkpoint given twice: {', '.join(twice)}")
    if args.run and len(dirs) < args.last:  # said once nothing refuses the run: one error line
        print(f"warning: only {len(dirs)} checkpoints in {args.run}/checkpoints", file=sys.stderr)
    average(dirs, Path(args.out))
    n = f"{len(dirs)} checkpoint{'s' * (len(dirs) > 1)}"
    # the paths as given: "last" or "best" of two runs names neither run
    print(f"averaged {n} ({dirs[0]} ... {dirs[-1]}) into {args.out}")


if __name__ == "__main__":
    cli(main)
