"""Does bf16 autocast speed up a CPU training step? (docs/speed.md, "bf16 on CPU")

    python bench/bf16_step.py [--sizes tiny tiny-4+2 d192 bench] [--repeat 10]

Times train.py's step (forward, backward, fused AdamW; label-smoothed loss, dropout 0.2) of each
network in fp32, in bf16 autocast as train.py runs it (`mixed_precision: bf16`: attention in fp32
on CPU, model/attention.py) and in bf16 autocast with attention in bf16 too, interleaved, medians.
A call is four steps on batches of about 1,000 target tokens of four shapes, as token buckets
give (64 × 16, 40 × 26, 28 × 36, 96 × 10 source and target tokens, every third sentence ending
in 4 pads). Vocabulary 8,000, 2 threads, freed memory kept as train.py keeps it. bf16 pays only
where the CPU has bf16 instructions (AVX512-BF16 or AMX); the script prints what torch sees.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.mkl_packed import medians_s  # noqa: E402
from config import TrainConfig  # noqa: E402
from cpu_memory import keep_freed_memory  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402
from model.attention import MultiHeadAttention  # noqa: E402
from train import make_optimizer, train_loss  # noqa: E402

VOCAB, PAD = 8000, 0
SHAPES = [(64, 16), (40, 26), (28, 36), (96, 10)]
SIZES = {  # d_model, d_ff, encoder layers, decoder layers
    "tiny": (128, 256, 4, 4),  # configs/multi30k.json
    "tiny-4+2": (128, 256, 4, 2),
    "d192": (192, 384, 4, 4),
    "bench": (256, 1024, 3, 3),  # bench/benchmark.py
}


def batches() -> list[dict]:
    out = []
    for b, t in SHAPES:
        ids = torch.randint(4, VOCAB, (b, t + 1))
        ids[::3, -4:] = PAD
        out.append({"src": ids[:, 1:], "tgt_in": ids[:, :-1], "labels": ids[:, 1:]})
    return out


TRAIN_CFG = TrainConfig(label_smoothing=0.2)
MODES = [(False, False), (True, False), (True, True)]  # (autocast bf16, attention in bf16 too)
FP32_SDPA = MultiHeadAttention._sdpa


def bf16_sdpa(self, q, k, v, mask, is_causal):
    """model/attention.py's SDPA call with q, k, v back in bf16: undoes its cast to fp32."""
    bf16 = torch.bfloat16
    with torch.autocast("cpu", dtype=bf16):
        return FP32_SDPA(self, q.to(bf16), k.to(bf16), v.to(bf16), mask, is_causal)


def steps(model, optimizer, data, bf16: bool, attention_in_bf16: bool):
    MultiHeadAttention._sdpa = bf16_sdpa if attention_in_bf16 else FP32_SDPA
    for batch in data:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = train_loss(model, batch, TRAIN_CFG, PAD)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    MultiHeadAttention._sdpa = FP32_SDPA


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: "unknown")()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, AMX {amx}")  # fmt: skip
    data = batches()
    print(f"{'network':10s} {'fp32':>9s} {'bf16':>9s} {'bf16 attn':>10s}   per step, medians of "
          f"{args.repeat}; speed-ups: bf16 (train.py's), bf16 with bf16 attention")  # fmt: skip
    for name in args.sizes:
        d, ff, n_enc, n_dec = SIZES[name]
        cfg = ModelConfig(VOCAB, VOCAB, pad_id=PAD, d_model=d, d_ff=ff, n_heads=4, dropout=0.2,
                          n_layers=n_enc, n_dec_layers=n_dec)  # fmt: skip
        model = Transformer(cfg).train()
        optimizer = make_optimizer(model, TRAIN_CFG, torch.device("cpu"))
        calls = [(steps, model, optimizer, data, *mode) for mode in MODES]
        fp32, bf16, bf16_attn = (t / len(data) for t in medians_s(args.repeat, *calls))
        print(f"{name:10s} {fp32 * 1e3:6.1f} ms {bf16 * 1e3:6.1f} ms {bf16_attn * 1e3:7.1f} ms"
              f"   {fp32 / bf16:.2f}x  {fp32 / bf16_attn:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
