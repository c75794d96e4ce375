"""Training curves from a run's metrics.jsonl: loss, learning rate and validation BLEU by step.

python plot.py runs/multi30k/metrics.jsonl runs/multi30k/curves.png
"""

import argparse
import json
from pathlib import Path

from config import UserError, cli


def plot_metrics(metrics: str | Path, png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    try:
        lines = Path(metrics).read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as e:
        raise UserError(f"{metrics}: cannot read the metrics ({e})") from None
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
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set(title="learning rate", xlabel="step")
    bleu = [r for r in valid if "valid_bleu" in r]
    axes[2].plot([r["step"] for r in bleu], [r["valid_bleu"] for r in bleu], "o-")
    axes[2].set(title="valid sacreBLEU (greedy)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = Path(png).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(png)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("metrics", help="a run's metrics.jsonl")
    p.add_argument("png", help="the picture to write")
    args = p.parse_args(argv)
    plot_metrics(args.metrics, args.png)


if __name__ == "__main__":
    cli(main)
