"""Where a training step's time goes (docs/speed.md), and what a fused loss would save.

    python bench/profile_step.py [--size tiny|bench] [--default_malloc]

`tiny`: the Multi30k recipe's network (d_model 128, d_ff 256, 4 heads, 4+4 layers, label
smoothing 0.2); `bench`: bench/benchmark.py's sizes (d_model 256, d_ff 1024, 4 heads, 3+3
layers, label smoothing 0.1). Both here with vocabulary 8,000, dropout 0.2 and a random batch of
64 × 16 source and target tokens with no padding, fp32, 2 threads, freed memory kept as train.py
keeps it on CPU (`--default_malloc`: glibc's defaults). Times the step (forward, backward, fused
AdamW) with a fused loss (SmoothedCrossEntropy below, whose backward is one pass: softmax -
eps/V - (1 - eps)·onehot) against the same step with train.py's loss_fn
(F.cross_entropy(label_smoothing=eps)), interleaved, medians of 20; prints torch.profiler's
operators by self time over 10 steps; then checks that the two losses agree in value and
gradient on random logits of the step's shape (1,024 × 8,000, a tenth of the rows padding) and
times them there alone, forward and backward, interleaved, medians of 20.
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402
from bench.mkl_packed import medians_s  # noqa: E402
from config import TrainConfig  # noqa: E402
from cpu_memory import keep_freed_memory  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402
from train import loss_fn, make_optimizer, train_loss  # noqa: E402

VOCAB, PAD, B, T = 8000, 0, 64, 16
SIZES = {
    "tiny": ({"d_model": 128, "d_ff": 256, "n_layers": 4}, 0.2),
    "bench": ({"d_model": 256, "d_ff": 1024, "n_layers": 3}, 0.1),
}


class SmoothedCrossEntropy(torch.autograd.Function):
    """A candidate for train.py's loss_fn: label-smoothed cross-entropy, mean over non-padding
    rows, with a one-pass backward.

    F.cross_entropy's value, computed as logsumexp - (1 - eps)·target - eps·mean(logits); its
    gradient is written directly as (softmax - eps/V - (1 - eps)·onehot) / n, where torch's
    backward fills, scatters, adds and goes through log_softmax's backward over the whole
    (N, V) logits.
    """

    @staticmethod
    def forward(ctx, logits, labels, pad_id: int, eps: float):  # (N, V), (N,) -> ()
        lse = torch.logsumexp(logits, -1)  # (N,)
        keep = labels != pad_id
        n = keep.sum().clamp_min(1)
        safe = labels.masked_fill(~keep, 0)  # padding rows are zeroed below, any index will do
        target = logits.gather(1, safe[:, None]).squeeze(1)  # (N,)
        per_token = lse - (1 - eps) * target - eps * logits.mean(-1)  # -smoothed log p
        ctx.save_for_backward(logits, safe, lse, keep, n)
        ctx.eps = eps
        return (per_token * keep).sum() / n

    @staticmethod
    def backward(ctx, grad_out):
        logits, safe, lse, keep, n = ctx.saved_tensors
        eps = ctx.eps
        grad = torch.sub(logits, lse[:, None]).exp_().sub_(eps / logits.size(-1))  # (N, V)
        grad.scatter_add_(1, safe[:, None], torch.full_like(lse[:, None], eps - 1))
        return grad.mul_((keep * (grad_out / n))[:, None]), None, None, None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=SIZES, default="tiny")
    p.add_argument("--default_malloc", action="store_true", help="do not keep freed memory")
    args = p.parse_args()
    kept = not args.default_malloc and keep_freed_memory()  # as train.py does on CPU
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    arch, eps = SIZES[args.size]
    cfg = ModelConfig(VOCAB, VOCAB, pad_id=PAD, n_heads=4, dropout=0.2, **arch)
    model = Transformer(cfg).train()
    train_cfg = TrainConfig(label_smoothing=eps)
    optimizer = make_optimizer(model, train_cfg, torch.device("cpu"))
    ids = torch.randint(4, VOCAB, (B, T + 1))
    batch = {"src": ids[:, 1:], "tgt_in": ids[:, :-1], "labels": ids[:, 1:]}

    def step():
        train_loss(model, batch, train_cfg, PAD).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def fused_loss(logits, labels, pad_id, label_smoothing=0.0):
        return SmoothedCrossEntropy.apply(
            logits.flatten(0, 1), labels.flatten(), pad_id, label_smoothing
        )

    def step_with(loss):
        train.loss_fn = loss
        step()

    steps = medians_s(20, (step_with, loss_fn), (step_with, fused_loss))
    train.loss_fn = loss_fn
    print(f"{args.size}: {cfg}\n{torch.__version__}, {torch.get_num_threads()} threads")
    print(f"freed memory kept: {kept}")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))

    logits = torch.randn(B * T, VOCAB, requires_grad=True)
    labels = ids[:, 1:].flatten()
    labels[::10] = PAD  # some padding, which both must ignore

    def grad_of(loss):
        logits.grad = None
        loss().backward()
        return logits.grad

    def ours():
        return fused_loss(logits[None], labels[None], PAD, eps)

    def theirs():
        return loss_fn(logits[None], labels[None], PAD, eps)

    torch.testing.assert_close(ours(), theirs())
    fused_grad, library_grad = grad_of(ours), grad_of(theirs)  # each call: a fresh .grad
    torch.testing.assert_close(fused_grad, library_grad, rtol=1e-5, atol=1e-9)
    diff = (fused_grad - library_grad).abs().max().item()
    alone = medians_s(20, (grad_of, theirs), (grad_of, ours))
    print(f"medians of 20, interleaved (gradients within {diff:.1e}):")
    for name, (lib, fused) in (("training step", steps), (f"loss alone, {B * T} × {VOCAB}", alone)):
        print(f"  {name:26s} loss_fn (F.cross_entropy) {lib * 1e3:6.1f} ms, "
              f"SmoothedCrossEntropy {fused * 1e3:6.1f} ms: {lib / fused:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
