"""The GPU path, on a CUDA device only (skipped elsewhere; `bash scripts/gpu_check.sh` runs it).

- No attention call needs SDPA's math kernel: a bf16 training step (source padding mask,
  is_causal) and greedy and beam decoding run with only the flash, memory-efficient and cuDNN
  kernels allowed (a call none of them can serve raises "No available kernel"); with and without
  attention dropout, as the kernels' constraints on dropout differ.
- Under bf16 autocast (as bench/benchmark.py decodes) a batch without padding decodes on the
  flash kernel alone: no mask is built for it. (translate.py decodes in fp32 by default, where
  no flash kernel exists; `--mixed_precision bf16` decodes so.)
- Under FSDP2 with bf16 mixed precision (accelerate_config.yaml's), which copies the containers
  passed to each wrapped module, cached decoding still equals teacher forcing.
- A training step from data.batch_iter's copy to the device through the fused AdamW step makes
  no host sync that torch.cuda.set_sync_debug_mode("error") detects (train.py adds one on
  purpose, the check that the gradient norm is finite, and R-Drop another).
"""

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel

from config import TrainConfig
from data import Corpus, SpecialIds, batch_iter
from model import ModelConfig, Transformer
from train import loss_fn, make_optimizer
from translate import beam_search, greedy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

IDS = SpecialIds(pad=0, eos=3, start=2)  # the layout of data.train_tokenizer's vocabulary
VOCAB, B = 1000, 16
NOT_MATH = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


def model_and_batches(attn_dropout: float = 0.0, padded: bool = True, n: int = 2):
    """A d_model 256, 3+3-layer model (bench/benchmark.py's widths) on cuda, and `n` batches of
    B pairs from data.batch_iter; padded: sentences of 8-20 tokens, else all of 20."""
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
        attn_dropout=attn_dropout,
    )
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 21, size=(2, n * B)) if padded else np.full((2, n * B), 20)
    sides = []
    for side in lengths:  # ordinary tokens ending in </s>, concatenated with offsets
        ids = [np.append(rng.integers(4, VOCAB, size=k - 1), IDS.eos) for k in side]
        sides += [np.concatenate(ids), np.concatenate([[0], np.cumsum(side)])]
    corpus = Corpus(*sides)
    index = [np.arange(i * B, (i + 1) * B) for i in range(n)]
    return Transformer(cfg).cuda(), batch_iter(corpus, index, IDS, torch.device("cuda"))


def train_step(model, optimizer, batch) -> torch.Tensor:
    with torch.autocast("cuda", torch.bfloat16):
        logits = model(batch["src"], batch["tgt_in"])
        loss = loss_fn(logits, batch["labels"], IDS.pad, label_smoothing=0.1)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def decode(model, src):
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        return greedy(model, src, IDS, 12), beam_search(model, src, IDS, 12, beam=4)


@pytest.mark.parametrize("attn_dropout", [0.0, 0.1])
def test_no_attention_call_needs_the_math_kernel(attn_dropout):
    model, batches = model_and_batches(attn_dropout)
    batch = next(batches)
    assert (batch["src"] == IDS.pad).any(), "the batch must hold padding"
    optimizer = make_optimizer(model, TrainConfig(learning_rate=1e-4), batch["src"].device)
    model.train()
    with sdpa_kernel(NOT_MATH):
        loss = train_step(model, optimizer, batch)
        out, found = decode(model, batch["src"])
    assert torch.isfinite(loss)
    assert out.size(0) == B and len(found) == B


def test_a_batch_without_padding_decodes_on_flash_alone():
    model, batches = model_and_batches(padded=False)
    src = next(batches)["src"]
    assert not (src == IDS.pad).any()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out, found = decode(model, src)
    assert out.size(0) == B and len(found) == B


@pytest.mark.parametrize("attn_dropout", [0.0, 0.1])
def test_a_training_step_makes_no_host_sync(attn_dropout):
    model, batches = model_and_batches(attn_dropout)
    optimizer = make_optimizer(model, TrainConfig(learning_rate=1e-4), torch.device("cuda"))
    model.train()
    train_step(model, optimizer, next(batches))  # first step: lazy state, cuBLAS handles
    torch.cuda.synchronize()
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = train_step(model, optimizer, next(batches))  # the batch's copy included
    finally:
        torch.cuda.set_sync_debug_mode(before)
    assert torch.isfinite(loss)


def test_cached_decoding_under_fsdp_in_bf16_equals_teacher_forcing(tmp_path):
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model, batches = model_and_batches()
        batch = next(batches)
        # bf16 compute, as train.py's policy (which reduces gradients in fp32: none here)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16)
        for layer in [*model.encoder.layers, *model.decoder.layers]:
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        for method in ("encode", "decode"):  # as train.py registers them
            register_fsdp_forward_method(model, method)
        model.eval()
        src, tgt = batch["src"], batch["tgt_in"][:, :8]
        with torch.no_grad():
            src_mask = model.src_mask(src)
            memory = model.encode(src, src_mask)
            full = model.decode(tgt, memory, src_mask).float()
            cache = model.new_cache()
            steps = [model.decode(tgt[:, i : i + 1], memory, src_mask, cache) for i in range(8)]
        # bf16 rounding apart; a lost cache (each step alone at position 0) differs by ~1
        torch.testing.assert_close(torch.cat(steps, 1).float(), full, atol=0.1, rtol=0.05)
    finally:
        dist.destroy_process_group()
