"""The GPU path, on a CUDA device only (skipped elsewhere; `bash scripts/gpu_check.sh` runs it).

- No attention call needs SDPA's math kernel: a bf16 training step (source padding mask,
  is_causal) and greedy and beam decoding run with only the flash, memory-efficient and cuDNN
  kernels allowed (a call none of them can serve raises "No available kernel").
- A batch without padding decodes on the flash kernel alone: no mask is built for it.
- A training step (bf16 forward, label-smoothed loss, backward, gradient clipping, fused AdamW)
  makes no host sync: torch.cuda.set_sync_debug_mode("error") turns any into an error. (train.py
  adds one on purpose, the check that the gradient norm is finite.)
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from config import TrainConfig
from data import SpecialIds
from model import ModelConfig, Transformer, shift_right
from train import loss_fn, make_optimizer
from translate import beam_search, greedy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

IDS = SpecialIds(pad=0, eos=3, start=2)
VOCAB, B, S, T = 1000, 16, 20, 18
NOT_MATH = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


def model_and_batch(device: str = "cuda", padded: bool = True):
    """bench/benchmark.py's network on a small vocabulary; half the sentences padded if asked."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        src_vocab_size=VOCAB,
        tgt_vocab_size=VOCAB,
        pad_id=IDS.pad,
        d_model=256,
        n_heads=4,
        d_ff=1024,
        n_layers=3,
        dropout=0.1,
        attn_dropout=0.1,
    )
    src = torch.randint(4, VOCAB, (B, S))
    labels = torch.randint(4, VOCAB, (B, T))
    src[:, -1] = labels[:, -1] = IDS.eos
    if padded:  # even rows: shorter sources; odd rows: shorter targets
        src[::2, 11], src[::2, 12:] = IDS.eos, IDS.pad
        labels[1::2, 8], labels[1::2, 9:] = IDS.eos, IDS.pad
    batch = (src, shift_right(labels, IDS.start, IDS.pad), labels)
    return Transformer(cfg).to(device), *(x.to(device) for x in batch)


def train_step(model, optimizer, src, tgt_in, labels) -> torch.Tensor:
    with torch.autocast(src.device.type, torch.bfloat16):
        loss = loss_fn(model(src, tgt_in), labels, IDS.pad, label_smoothing=0.1)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def decode(model, src):
    model.eval()
    with torch.no_grad(), torch.autocast(src.device.type, torch.bfloat16):
        return greedy(model, src, IDS, 12), beam_search(model, src, IDS, 12, beam=4)


def test_no_attention_call_needs_the_math_kernel():
    model, src, tgt_in, labels = model_and_batch()
    optimizer = make_optimizer(model, TrainConfig(learning_rate=1e-4), src.device)
    model.train()
    with sdpa_kernel(NOT_MATH):
        loss = train_step(model, optimizer, src, tgt_in, labels)
        out, found = decode(model, src)
    assert torch.isfinite(loss)
    assert out.size(0) == B and len(found) == B


def test_a_batch_without_padding_decodes_on_flash_alone():
    model, src, _, _ = model_and_batch(padded=False)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out, found = decode(model, src)
    assert out.size(0) == B and len(found) == B


def test_a_training_step_makes_no_host_sync():
    model, src, tgt_in, labels = model_and_batch()
    optimizer = make_optimizer(model, TrainConfig(learning_rate=1e-4), src.device)
    model.train()
    train_step(model, optimizer, src, tgt_in, labels)  # first step: lazy state, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = train_step(model, optimizer, src, tgt_in, labels)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss)
