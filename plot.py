"""Training curves from a run's metrics.jsonl: loss, learning rate and validation BLEU by step.

python plot.py runs/multi30k/metrics.jsonl runs/multi30k/curves.png
"""

import json
import sys
from pathlib import Path

from config import ArgumentParser, UserError, cli


def plot_metrics(metrics: str | Path, png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    try:
        lines = [line for line in Path(metrics).read_text().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines[:-1]]
    except (OSError, ValueError) as e:
        raise UserError(f"{metrics}: cannot read the metrics ({e})") from None
    try:
        records += [json.loads(line) for line in lines[-1:]]
    except ValueError:  # a run killed while writing it, or still writing: as train.py's resume
        print(f"warning: {metrics}: its last line is cut short; left out", file=sys.stderr)
    if not all(isinstance(r, dict) and "step" in r for r in records):
        raise UserError(f"{metrics}: not a metrics.jsonl (every line a record with a step)")
    train = [r for r in records if "train_loss" in r]
    valid = [r for r in records if "valid_loss" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot(
        [r["step"] for r in train], [r["train_loss"] for r in train], label="train (smoothed CE)"
    )
    ax.plot([r["step"] for r in valid], [r["valid_loss"] for r in valid], "o-", label="valid (CE)")
    ax.set(title="loss per target token", xlabel="step")
    ax.legend()
    rates = [r for r in train if "lr" in r]
    axes[1].plot([r["step"] for r in rates], [r["lr"] for r in rates])
    axes[1].set(title="learning rate", xlabel="step")
    bleu = [r for r in valid if "valid_bleu" in r]
    axes[2].plot([r["step"] for r in bleu], [r["valid_bleu"] for r in bleu], "o-")
    axes[2].set(title="valid sacreBLEU (greedy)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    # written aside, in the format the name asks for (the temporary name's suffix would decide)
    png = Path(png)
    tmp = png.with_name(f".{png.name}.tmp")
    try:
        fig.savefig(tmp, dpi=100, format=png.suffix[1:].lower() or "png")
        tmp.replace(png)
    except (OSError, ValueError) as e:  # ValueError: a format matplotlib cannot write
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {png} ({getattr(e, 'strerror', None) or e})") from None
    finally:
        plt.close(fig)


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("metrics", help="a run's metrics.jsonl")
    p.add_argument("png", help="the picture to write")
    args = p.parse_args(argv)
    plot_metrics(args.metrics, args.png)


if __name__ == "__main__":
    cli(main)
