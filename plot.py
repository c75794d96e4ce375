"""Training curves from a run's metrics.jsonl: loss, learning rate and validation BLEU by step.

python plot.py runs/multi30k/metrics.jsonl runs/multi30k/curves.png
"""

import json
import sys
from pathlib import Path


def plot_metrics(metrics: str | Path, png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
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


if __name__ == "__main__":
    plot_metrics(sys.argv[1], sys.argv[2])
