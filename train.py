"""Train an encoder-decoder Transformer from a JSON config.

    python train.py --config configs/quickstart.json [--key value ...] [--resume]
    accelerate launch --config_file accelerate_config.yaml train.py --config config.json

One process or many, the same loop runs; accelerate handles devices, precision and FSDP.
"""

import json
import math
import os
import time
from pathlib import Path

import datasets
import sacrebleu
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from checkpoint import fresh_tmp, replace_dir, write_model_dir
from config import TrainConfig, UserError, cli, config_from_argv
from data import (SpecialIds, batch_iter, load_text, load_tokenizer, shard, token_batches,
                  tokenize)
from model import ModelConfig, Transformer
from translate import translate_texts


def inverse_sqrt(step: int, warmup: int) -> float:
    """LR multiplier (paper §5.3): linear warmup to 1, then decay as 1/sqrt(step)."""
    step = max(step, 1)
    return min(step / warmup, math.sqrt(warmup / step)) if warmup else 1 / math.sqrt(step)


def loss_fn(logits, labels, pad_id: int, label_smoothing: float = 0.0, reduction="mean"):
    """Label-smoothed cross-entropy over non-padding target tokens (paper §5.4)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=pad_id,
                           label_smoothing=label_smoothing, reduction=reduction)


def model_config(cfg: TrainConfig, tokenizer, ids: SpecialIds) -> ModelConfig:
    vocab = len(tokenizer)
    return ModelConfig(
        src_vocab_size=vocab, tgt_vocab_size=vocab, pad_id=ids.pad, d_model=cfg.model_dim,
        n_heads=cfg.num_heads, d_ff=cfg.hidden_dims, n_layers=cfg.num_layers,
        dropout=cfg.dropout, attn_dropout=cfg.attn_dropout,
        max_len=2 * cfg.max_seq_length + 16,  # room for decoding 1.5·src_len + 10 tokens
        pre_norm=cfg.pre_norm, share_embeddings=cfg.share_embeddings,
    )


@torch.no_grad()
def evaluate(model, accelerator, valid, run: dict) -> dict:
    """Validation loss per target token (no smoothing) and sacreBLEU on a capped sample."""
    corpus, texts = valid
    cfg, ids = run["cfg"], run["ids"]
    model.eval()
    total = torch.zeros(2, device=accelerator.device)  # summed loss, tokens
    batches = token_batches(corpus.lengths(), cfg.max_tokens, cfg.batch_size, cfg.seed, 0, False)
    for batch in batch_iter(corpus, shard(batches, accelerator.process_index,
                                          accelerator.num_processes), ids, accelerator.device):
        logits = model(batch["src"], batch["tgt_in"])
        total += torch.stack([loss_fn(logits, batch["labels"], ids.pad, reduction="sum"),
                              torch.tensor(float(batch["n_tokens"]), device=total.device)])
    total = accelerator.reduce(total, "sum")
    metrics = {"valid_loss": (total[0] / total[1]).item()}
    if cfg.valid_bleu_samples:
        sample = texts[: cfg.valid_bleu_samples]
        hyps = translate_texts(accelerator.unwrap_model(model), run["tokenizer"], ids,
                               sample["src"], cfg.decode_batch_size, cfg.max_seq_length)
        metrics["valid_bleu"] = sacrebleu.corpus_bleu(hyps, [sample["tgt"]]).score
    model.train()
    return metrics


def save(accelerator, model, name: str, run: dict, state: dict) -> None:
    """Write output_dir/name atomically: weights, config, tokenizer and (for resume) the
    optimizer/scheduler/RNG state. Collective: every process must call it."""
    out = Path(run["cfg"].output_dir) / name
    weights = accelerator.get_state_dict(model)
    tmp = out.with_name(out.name + ".tmp")
    if accelerator.is_main_process:
        fresh_tmp(out)
        write_model_dir(tmp, weights, run["cfg"], run["model_cfg"], run["ids"], run["tokenizer"],
                        {"trainer_state.json": json.dumps(state, indent=2)})
    accelerator.wait_for_everyone()
    if name == "last":
        accelerator.save_state(tmp / "state")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, out)


def main(argv=None):
    args, cfg = config_from_argv(argv, "Train a Transformer for translation.")
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum_steps)
    log, out = accelerator.print, Path(cfg.output_dir)
    if not accelerator.is_local_main_process:
        datasets.disable_progress_bars()  # one set of bars, not one per process
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write_test").touch()
        (out / ".write_test").unlink()
    except OSError as e:
        raise UserError(f"output_dir {out} is not writable ({e.strerror})") from None
    set_seed(cfg.seed)

    train_text = load_text(cfg.train_data, cfg, cfg.train_split)
    with accelerator.main_process_first():  # the main process trains/saves a tokenizer first
        tokenizer = load_tokenizer(cfg, out, lambda: (b["src"] + b["tgt"] for b in train_text.iter(1000)),
                                   reuse=args.resume or not accelerator.is_main_process)
    ids = SpecialIds.of(tokenizer)
    train_set = tokenize(train_text, tokenizer, cfg.max_seq_length, "train", log)
    valid = None
    if cfg.valid_data:
        valid_text = load_text(cfg.valid_data, cfg, cfg.valid_split)
        valid = (tokenize(valid_text, tokenizer, cfg.max_seq_length, "valid", log), valid_text)
    model_cfg = model_config(cfg, tokenizer, ids)
    model = Transformer(model_cfg)
    log(f"{len(train_set)} training pairs, vocabulary {model_cfg.src_vocab_size}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.98),
                                  eps=1e-9, weight_decay=cfg.weight_decay)
    # Not passed to prepare(): accelerate would step it once per process per step.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: inverse_sqrt(s, cfg.warmup_steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    run = {"cfg": cfg, "model_cfg": model_cfg, "ids": ids, "tokenizer": tokenizer}
    if accelerator.is_main_process:
        cfg.save(out / "config.json")

    state = {"epoch": 0, "step": 0, "batch_in_epoch": 0, "best": None}
    if args.resume and (out / "last" / "state").exists():
        accelerator.load_state(out / "last" / "state")
        state = json.loads((out / "last" / "trainer_state.json").read_text())
        log(f"resumed from {out / 'last'}: epoch {state['epoch'] + 1}, step {state['step']}")
    elif args.resume:
        log(f"nothing to resume in {out}; starting fresh")

    lengths = train_set.lengths()
    for epoch in range(state["epoch"], cfg.epochs):
        batches = shard(token_batches(lengths, cfg.max_tokens, cfg.batch_size, cfg.seed, epoch),
                        accelerator.process_index, accelerator.num_processes)
        skip = state["batch_in_epoch"]
        bar = tqdm(total=len(batches), initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not accelerator.is_local_main_process, dynamic_ncols=True)
        loss_sum, n_loss, n_tok, t0 = torch.zeros((), device=accelerator.device), 0, 0, time.time()
        model.train()
        for i, batch in enumerate(batch_iter(train_set, batches[skip:], ids, accelerator.device), skip):
            with accelerator.accumulate(model):
                loss = loss_fn(model(batch["src"], batch["tgt_in"]), batch["labels"], ids.pad,
                               cfg.label_smoothing)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.clip_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                optimizer.step()
                optimizer.zero_grad()
            loss_sum, n_loss, n_tok = loss_sum + loss.detach(), n_loss + 1, n_tok + batch["n_tokens"]
            state["batch_in_epoch"] = i + 1
            bar.update(1)
            if accelerator.sync_gradients:
                scheduler.step()
                state["step"] += 1
                if state["step"] % cfg.log_every == 0:  # the only host sync in the loop
                    bar.set_postfix(loss=f"{loss_sum.item() / n_loss:.3f}",
                                    lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                    tok_s=f"{n_tok * accelerator.num_processes / (time.time() - t0):.0f}")
                    loss_sum, n_loss, n_tok, t0 = loss_sum.zero_(), 0, 0, time.time()
                if cfg.max_steps and state["step"] >= cfg.max_steps:
                    break
        bar.close()
        finished = state["batch_in_epoch"] >= len(batches)
        state.update(epoch=epoch + 1 if finished else epoch, batch_in_epoch=0 if finished else state["batch_in_epoch"])
        metrics = evaluate(model, accelerator, valid, run) if valid else {}
        score = metrics.get("valid_bleu", -metrics.get("valid_loss", 0.0))
        is_best = valid is not None and (state["best"] is None or score > state["best"])
        if is_best:
            state["best"] = score
        log(f"epoch {epoch + 1}: step {state['step']} "
            + " ".join(f"{k} {v:.3f}" for k, v in metrics.items()) + (" (best)" if is_best else ""))
        if accelerator.is_main_process:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"epoch": epoch + 1, "step": state["step"], **metrics}) + "\n")
        save(accelerator, model, "last", run, state)
        if is_best or valid is None:
            save(accelerator, model, "best", run, state)
        if cfg.max_steps and state["step"] >= cfg.max_steps:
            break
    accelerator.end_training()
    log(f"done: checkpoints in {out}/best and {out}/last")


if __name__ == "__main__":
    cli(main)
