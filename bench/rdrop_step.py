"""What one R-Drop training step costs (docs/training.md: R-Drop).

    python bench/rdrop_step.py

The tiny Multi30k recipe's network (d_model 128, d_ff 256, 4 heads, 4+4 layers, vocabulary 8,000,
dropout 0.2, label smoothing 0.1) on a random batch of 64 × 16 source and target tokens, fp32:
median seconds of a step (forward, backward, fused AdamW; no gradient clipping or scheduler) with
train.py's objective for rdrop_alpha 0, for rdrop_alpha 0 on the batch doubled (R-Drop's two passes
without the KL), and for rdrop_alpha 5. The last two differ by the KL term alone.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.mkl_packed import medians_s  # noqa: E402
from config import TrainConfig  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402
from train import make_optimizer, train_loss  # noqa: E402

VOCAB, PAD, B, T, REPEAT = 8000, 0, 64, 16, 20


def step(model, optimizer, batch, cfg):
    train_loss(model, batch, cfg, PAD).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = Transformer(
        ModelConfig(
            VOCAB, VOCAB, pad_id=PAD, d_model=128, n_heads=4, d_ff=256, n_layers=4, dropout=0.2
        )
    ).train()
    plain = TrainConfig(label_smoothing=0.1)
    rdrop = TrainConfig(label_smoothing=0.1, dropout=0.2, rdrop_alpha=5.0)
    optimizer = make_optimizer(model, plain, torch.device("cpu"))

    def batch(n):
        ids = torch.randint(4, VOCAB, (n, T + 1))  # no padding: R-Drop's KL skips padded rows
        return {"src": ids[:, 1:], "tgt_in": ids[:, :-1], "labels": ids[:, 1:]}

    cases = [
        ("plain, 64 sentences", batch(B), plain),
        ("plain, 128 sentences (two passes, no KL)", batch(2 * B), plain),
        ("R-Drop alpha 5, 64 sentences", batch(B), rdrop),
    ]
    medians = medians_s(REPEAT, *[(step, model, optimizer, b, cfg) for _, b, cfg in cases])
    print(f"{torch.__version__}, {torch.get_num_threads()} threads, median of {REPEAT} steps")
    for (name, _, _), s in zip(cases, medians):
        print(f"{name:42s} {s * 1e3:7.1f} ms  {s / medians[0]:4.2f}x")


if __name__ == "__main__":
    # no options: --help prints what it measures instead of running it
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    main()
