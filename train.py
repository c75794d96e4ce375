"""Train an encoder-decoder Transformer from a JSON config.

    python train.py --config configs/quickstart.json [--key value ...] [--resume]
    accelerate launch --config_file accelerate_config.yaml train.py --config config.json

One process or many, the same loop runs; accelerate handles devices, precision, DDP and FSDP.
"""

import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path

import datasets
import numpy as np
import sacrebleu
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import (
    DistributedType,
    InitProcessGroupKwargs,
    LoggerType,
    broadcast,
    gather_object,
    set_seed,
)
from accelerate.utils.other import load as safe_load
from safetensors import SafetensorError
from tqdm.auto import tqdm

from checkpoint import (
    copy_model_dir,
    fresh_tmp,
    latest_checkpoint,
    load_model,
    prune_checkpoints,
    replace_dir,
    step_dirs,
    write_error,
    write_model_dir,
)
from config import TrainConfig, UserError, cli, config_from_argv
from cpu_memory import keep_freed_memory
from data import (
    Corpus,
    SpecialIds,
    batch_iter,
    both_ways,
    check_direction,
    check_targets_hold_eos,
    has_splits,
    init_checkpoint,
    load_text,
    load_tokenizer,
    sample_segmentations,
    shard,
    takes_config,
    token_batches,
    tokenize,
)
from distributed import setup_cpu_launch
from ema import EMA
from model import ModelConfig, Transformer
from translate import translate_texts


def inverse_sqrt(step: int, warmup: int, cooldown: int = 0, total: int | None = None) -> float:
    """LR multiplier (paper §5.3): linear warmup to 1, then decay as 1/sqrt(step).

    With `cooldown` > 0 (not in the paper; the cooldown of warmup-stable-decay schedules, Hägele
    et al. 2024), the last `cooldown` of `total` steps fall linearly from there to 0.
    """
    if cooldown and step > (start := total - cooldown):
        return inverse_sqrt(start, warmup) * max(total - step, 0) / cooldown
    step = max(step, 1)
    return min(step / warmup, math.sqrt(warmup / step)) if warmup else 1 / math.sqrt(step)


def loss_fn(logits, labels, pad_id: int, label_smoothing: float = 0.0, reduction="mean"):
    """Label-smoothed cross-entropy over non-padding target tokens (paper §5.4)."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        labels.flatten(),
        ignore_index=pad_id,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )


def rdrop_kl(logits, labels, pad_id: int):
    """R-Drop's regulariser: logits (2B, T, V) are two passes over one batch (labels (B, T)).
    The symmetric KL between the passes, halved (the paper's L_KL), summed over non-padding
    tokens and divided by the 2B rows' token count, as the cross-entropy of both passes is."""
    rows = (labels != pad_id).flatten().nonzero().squeeze(1)  # (N,): one host sync, not two
    p, q = (x.flatten(0, 1).index_select(0, rows).float().log_softmax(-1) for x in logits.chunk(2))
    kl = ((p.exp() - q.exp()) * (p - q)).sum()  # KL(p||q) + KL(q||p), summed over tokens
    return kl / 2 / (2 * rows.numel())


def train_loss(model, batch: dict, cfg: TrainConfig, pad_id: int):
    """The training objective: label-smoothed CE, plus R-Drop's KL term when rdrop_alpha > 0."""
    src, tgt_in, labels = batch["src"], batch["tgt_in"], batch["labels"]
    if not cfg.rdrop_alpha:
        return loss_fn(model(src, tgt_in), labels, pad_id, cfg.label_smoothing)
    logits = model(src.repeat(2, 1), tgt_in.repeat(2, 1))  # one pass, two dropout draws
    ce = loss_fn(logits, labels.repeat(2, 1), pad_id, cfg.label_smoothing)
    return ce + cfg.rdrop_alpha * rdrop_kl(logits, labels, pad_id)


# the settings that shape the model's weights (a resume cannot change them): TrainConfig's
# names (the users') -> ModelConfig's (the paper's)
MODEL_SHAPE = {"model_dim": "d_model", "hidden_dims": "d_ff", "num_heads": "n_heads",
               "num_layers": "n_layers", "decoder_layers": "n_dec_layers",
               "pre_norm": "pre_norm", "share_embeddings": "share_embeddings"}  # fmt: skip


def model_config(cfg: TrainConfig, tokenizer, ids: SpecialIds) -> ModelConfig:
    vocab = len(tokenizer)
    return ModelConfig(
        src_vocab_size=vocab,
        tgt_vocab_size=vocab,
        pad_id=ids.pad,
        **{ours: getattr(cfg, key) for key, ours in MODEL_SHAPE.items()},
        dropout=cfg.dropout,
        attn_dropout=cfg.attn_dropout,
        act_dropout=cfg.act_dropout,
        word_dropout=cfg.word_dropout,
        max_len=2 * cfg.max_seq_length + 16,  # room for decoding 1.5·src_len + 10 tokens
    )


def make_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the paper's betas and epsilon (§5.3), fused where torch has the kernel: one
    kernel per parameter group instead of a loop of small ops per parameter (on CPU, the step of
    7.6M parameters measured 8 ms instead of 23 ms, 1 thread)."""
    fused = device.type in ("cpu", "cuda") or None
    groups = list(model.parameters())
    if cfg.weight_decay > 0:
        # Decay the matrices only (linear and embedding weights): decaying LayerNorm gains and
        # biases pulls them towards 0, not a prior anyone wants (nanoGPT, HF Trainer). With no
        # weight decay one group, as before, so older checkpoints saved without it still resume.
        groups = [
            {"params": [p for p in groups if p.dim() >= 2]},
            {"params": [p for p in groups if p.dim() < 2], "weight_decay": 0.0},
        ]
    optimizer = torch.optim.AdamW(
        groups,
        lr=cfg.learning_rate,
        betas=(0.9, 0.98),
        eps=1e-9,
        weight_decay=cfg.weight_decay,
        fused=fused,
    )

    def keep_settings(opt, state_dict: dict) -> dict:
        # load_state_dict restores the saved param groups' settings: a run saved by an older
        # version (or on another device) would resume unfused, and a changed weight_decay would
        # be ignored. This run's settings win; the groups themselves must match.
        saved = state_dict["param_groups"]
        if len(saved) != len(opt.param_groups):
            raise UserError(
                f"AdamW parameter groups: {len(saved)} saved, {len(opt.param_groups)} in this run "
                "(weight decay switched on or off, or a version that decayed LayerNorm too)"
            )
        for group, ours in zip(saved, opt.param_groups):
            group["fused"], group["weight_decay"] = fused, ours["weight_decay"]
        return state_dict

    optimizer.register_load_state_dict_pre_hook(keep_settings)
    return optimizer


def epoch_batches(run: dict, accelerator, epoch: int, resumed_inside: bool) -> tuple:
    """This process's batches for one epoch, the same on every run with the same seed, each
    one's weight in its optimizer step (step_weights), and the target tokens of batch i over
    all processes (exact, for the logged tokens/s and the run's token count)."""
    cfg = run["cfg"]
    if cfg.subword_alpha:
        run["train"] = sampled_train(run, accelerator, epoch, resumed_inside)
    elif cfg.bidirectional_epochs:  # the both-ways copy is made once, and freed after epoch N
        if epoch >= cfg.bidirectional_epochs:
            run["train"] = run["train_fwd"]
        elif run["train"] is run["train_fwd"]:
            run["train"] = both_ways(run["train_fwd"])
    every = token_batches(run["train"].lengths(), cfg.max_tokens, cfg.batch_size, cfg.seed, epoch)
    batches = shard(every, accelerator.process_index, accelerator.num_processes)
    # whole optimizer steps only, so that every checkpoint falls on a step boundary; the batches
    # are shuffled, so a different few are left out each epoch
    left_out = len(batches) % cfg.grad_accum_steps
    if left_out:
        pairs = sum(len(b) for b in batches[-left_out:])
        n = accelerator.num_processes  # every process has as many batches (shard), pairs vary
        if n > 1:
            where = f" on each of {n} processes ({pairs} pairs on this one)"
        else:
            where = f" ({pairs} pairs)"
        run["log"](
            f"epoch {epoch + 1}: the last {left_out} of {len(batches)} batches{where} left out, "
            f"to end on a whole step of grad_accum_steps {cfg.grad_accum_steps}"
        )
    batches = batches[: len(batches) - left_out]
    tokens = shard_tokens(every, run["train"], accelerator.num_processes, len(batches))
    weights = step_weights(tokens, accelerator.process_index, cfg.grad_accum_steps)
    return batches, weights, tokens.sum(axis=0).astype(int).tolist()


def check_whole_steps(run: dict, n_processes: int) -> None:
    """UserError if an epoch holds fewer batches than one step accumulates: epoch_batches would
    leave them all out, and the run would validate an untrained model epoch after epoch."""
    cfg = run["cfg"]
    every = token_batches(run["train"].lengths(), cfg.max_tokens, cfg.batch_size, cfg.seed, 0)
    have = math.ceil(len(every) / n_processes)  # each process's share (shard)
    if have < cfg.grad_accum_steps:
        each = f" on each of {n_processes} processes" if n_processes > 1 else ""
        raise UserError(
            f"grad_accum_steps {cfg.grad_accum_steps} is more than the {have} batches of an "
            f"epoch{each}: no step would be taken; lower it, or max_tokens and batch_size"
        )


def shard_tokens(every: list, corpus: Corpus, world: int, n: int) -> np.ndarray:
    """(world, n): the target tokens in each process's first n batches. Every process shards
    the whole epoch (`every`), so no process needs to ask another."""
    tgt = np.diff(corpus.tgt_off)
    return np.array(
        [[tgt[b].sum() for b in shard(every, r, world)[:n]] for r in range(world)],
        dtype=np.float64,
    )


def step_weights(tokens: np.ndarray, rank: int, accum: int) -> list[float]:
    """What process `rank`'s batch i weighs in its step's loss (`tokens`: shard_tokens), so
    that a step's gradient is the mean over all its target tokens, on every process and in
    every accumulated batch, as in fairseq: batch tokens × processes × accum / the step's
    tokens. accelerate divides the loss by accum and DDP/FSDP average over processes, which
    alone would weigh a 40-token batch as much as a 1,000-token one. With one process and accum
    1 the weight is exactly 1."""
    world = len(tokens)
    per_step = tokens.reshape(world, -1, accum).sum(axis=(0, 2))  # (n / accum,)
    return (tokens[rank] * (world * accum) / np.repeat(per_step, accum)).tolist()


def sampled_train(run: dict, accelerator, epoch: int, resumed_inside: bool) -> Corpus:
    """The training pairs with segmentations sampled for this epoch (subword_alpha).

    tokenizers' sampler cannot be seeded, so the main process samples them once and saves them
    in output_dir/subword: every process trains on the same ones, and so does a run resumed
    inside this epoch. Files are kept while a kept checkpoint lies in their epoch."""
    cfg, out = run["cfg"], Path(run["cfg"].output_dir)
    path = out / "subword" / f"epoch-{epoch + 1:04d}.npz"
    problem = None
    if accelerator.is_main_process and not path.exists():
        try:
            if resumed_inside:
                run["log"](
                    f"warning: {path} is gone: epoch {epoch + 1} is sampled anew, so the rest "
                    "of it is not the data the interrupted run would have seen"
                )
            corpus = sample_segmentations(
                run["train_text"],
                run["tokenizer"],
                cfg.subword_alpha,
                cfg.max_seq_length,
                f"train, epoch {epoch + 1}",
                run["log"],
                cfg.max_length_ratio,
            )
            path.parent.mkdir(exist_ok=True)
            corpus.save(path)
            needed = {f"epoch-{e + 1:04d}.npz" for e in epochs_resumable_inside(out) | {epoch}}
            for old in path.parent.glob("epoch-*"):
                if old.name not in needed:
                    old.unlink()
        except UserError as e:
            problem = str(e)
        except OSError as e:
            problem = f"cannot write {path}: {e.strerror or e}"
    # a collective in place of a barrier: the other processes stop too, instead of hanging
    if any_process(accelerator, problem is not None):
        raise UserError(problem or "sampling segmentations failed on the main process")
    return Corpus.load(path)


def epochs_resumable_inside(out: Path) -> set[int]:
    """Epochs (0-based) that a kept step checkpoint lies inside: a resume may go back to any."""
    states = (out / "checkpoints").glob("step-*[0-9]/trainer_state.json")
    return {s["epoch"] for s in map(json.loads, map(Path.read_text, states)) if s["batch_in_epoch"]}


@torch.no_grad()
def evaluate(model, accelerator, run: dict) -> dict:
    """Validation loss per target token (no smoothing) and sacreBLEU on a capped sample."""
    cfg, ids, (corpus, _) = run["cfg"], run["ids"], run["valid"]
    model.eval()
    loss_sum, tokens = torch.zeros((), device=accelerator.device), 0  # tokens: no copy a batch
    batches = token_batches(corpus.lengths(), cfg.max_tokens, cfg.batch_size, cfg.seed, 0, False)
    # every process runs the same number of forwards (FSDP gathers weights in each one)
    mine = batches[accelerator.process_index :: accelerator.num_processes]
    rounds = math.ceil(len(batches) / accelerator.num_processes)
    for i in range(rounds):
        batch = next(
            batch_iter(corpus, [mine[i] if i < len(mine) else batches[0]], ids, accelerator.device)
        )
        loss = loss_fn(
            model(batch["src"], batch["tgt_in"]), batch["labels"], ids.pad, reduction="sum"
        )
        if i < len(mine):
            loss_sum, tokens = loss_sum + loss.float(), tokens + batch["n_tokens"]
    total = accelerator.reduce(torch.stack([loss_sum, loss_sum.new_tensor(float(tokens))]), "sum")
    metrics = {"valid_loss": (total[0] / total[1]).item()}
    if cfg.valid_bleu_samples:
        metrics["valid_bleu"] = valid_bleu(model, accelerator, run)
    model.train()
    return metrics


def valid_bleu(model, accelerator, run: dict) -> float:
    """Greedy sacreBLEU on the first valid_bleu_samples pairs, decoded in the run's precision:
    encode/decode bypass the forward that accelerate wraps in autocast, so wrap them here. Each
    process decodes every N-th sentence; the main process scores them all."""
    cfg, n, rank = run["cfg"], accelerator.num_processes, accelerator.process_index
    sample = run["valid"][1][: cfg.valid_bleu_samples]  # run["valid"]: (token corpus, texts)
    with accelerator.autocast(), gathered_for_decoding(model, accelerator):
        hyps = translate_texts(
            accelerator.unwrap_model(model),
            run["tokenizer"],
            run["ids"],
            sample["src"][rank::n],
            cfg.decode_batch_size,
            cfg.max_seq_length,
        )
    if n > 1:
        shards = gather_object([hyps])  # one list per process, in process order
        hyps = [shards[i % n][i // n] for i in range(len(sample["src"]))]
    # one verdict on best/ and patience for every process
    return main_process_value(accelerator, sacrebleu.corpus_bleu(hyps, [sample["tgt"]]).score)


def main_process_value(accelerator, value: float) -> float:
    """The main process's `value`, on every process: one decision for all of them."""
    if accelerator.num_processes == 1:
        return value
    mine = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return broadcast(mine)[0].item()


@contextmanager
def gathered_for_decoding(model, accelerator):
    """Under FSDP2, each decoding step is a forward, which gathers every unit's weights and
    shards them again: 20 steps, 20 all-gathers of each layer. Gather them all here, on every
    process at once (an all-gather is a collective), and keep them while the validation sample
    decodes: then each process decodes its own sentences, in as many steps as they take, with
    no collective in between. Shard them again after."""
    if accelerator.distributed_type != DistributedType.FSDP:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()  # in the same order on every process
    try:
        yield
    finally:
        layers = accelerator.state.fsdp_plugin.reshard_after_forward
        for unit in units:
            unit.set_reshard_after_forward(unit is not model and bool(layers), recurse=False)
            unit.reshard()


def save(accelerator, model, run: dict, state: dict, best: dict | None = None) -> None:
    """Write output_dir/checkpoints/step-N (weights, config, tokenizer, and optimizer, scheduler
    and RNG state for --resume), point `last` at it, copy it to `best` with the record `best`
    (best/best.json: its step, epoch and validation) if one is given, keep the newest
    `keep_last`. Each directory appears under its name only when complete, so a kill or a full
    disk never costs the previous checkpoint. Collective: every process must call it."""
    cfg, out = run["cfg"], Path(run["cfg"].output_dir)
    final = out / "checkpoints" / f"step-{state['step']:08d}"
    tmp = final.with_name(final.name + ".tmp")
    with averaged(run, model):
        weights = accelerator.get_state_dict(model)  # gathers shards: all processes take part
        if run.get("ema"):  # without FSDP, the state dict holds the parameters themselves
            weights = {k: v.to("cpu", copy=True) for k, v in weights.items()}
    finite = accelerator.is_main_process and all(
        torch.isfinite(w).all() for w in weights.values() if w.is_floating_point()
    )  # the main process holds the gathered weights: it decides, for every process
    finite = bool(main_process_value(accelerator, float(finite)))
    # never let a diverged model replace a good one
    problem = None if finite else "weights are not finite"
    if accelerator.is_main_process:
        if finite:
            trainer_state = {**state, "scheduler": run["scheduler"].state_dict()}
            problem = _try_write(
                lambda: write_model_dir(
                    fresh_tmp(final),
                    weights,
                    cfg,
                    run["model_cfg"],
                    run["ids"],
                    run["tokenizer"],
                    {"trainer_state.json": json.dumps(trainer_state, indent=2)},
                )
            )
    if not any_process(accelerator, problem is not None):
        # accelerate warns that it stores tied weights once; that is what we want
        logging.getLogger("accelerate").setLevel(logging.ERROR)
        problem = _try_write(lambda: accelerator.save_state(tmp / "state"))
    if run.get("ema") and not any_process(accelerator, problem is not None):
        problem = _try_write(lambda: run["ema"].save(ema_file(tmp, accelerator)))
    if any_process(accelerator, problem is not None):
        shutil.rmtree(tmp, ignore_errors=True)
        if problem == "weights are not finite":
            run["log"](f"step {state['step']}: weights are not finite, checkpoint not kept")
            return
        kept = f"the previous checkpoint ({out / 'last'}) is intact"
        raise UserError(
            f"cannot write checkpoint {final}: {problem or 'failed on another process'}; "
            + (kept if (out / "last").exists() else "no checkpoint was kept")
        )
    if accelerator.is_main_process:
        if best:  # before the step is published: its state records it as the best
            copy_model_dir(tmp, out / "best", {"best.json": json.dumps(best, indent=2) + "\n"})
        replace_dir(tmp, final)
        link = out / "last.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(final.relative_to(out))
        link.replace(out / "last")  # atomic: `last` always names a complete checkpoint
        prune_checkpoints(out / "checkpoints", cfg.keep_last)
    accelerator.wait_for_everyone()


def averaged(run: dict, model):
    """With ema_decay, the moving average stands in for the trained weights inside this block."""
    return run["ema"].swapped(model) if run.get("ema") else nullcontext()


def ema_file(ckpt: Path, accelerator) -> Path:
    """This process's part of the moving average (its shards under FSDP) in a checkpoint."""
    return ckpt / "state" / f"ema_{accelerator.process_index}.pt"


def _try_write(write) -> str | None:
    try:
        write()
    except (OSError, SafetensorError, RuntimeError) as e:  # a full disk is any of them
        if (problem := write_error(e)) is None:
            raise
        return problem
    return None


def any_process(accelerator, flag: bool) -> bool:
    """Whether `flag` holds on any process (a collective when there are several): one
    decision, the same on every process."""
    if accelerator.num_processes == 1:
        return flag
    votes = torch.tensor(float(flag), device=accelerator.device)
    return bool(accelerator.reduce(votes, "sum") > 0)


class StopSignal:
    """SIGTERM/SIGINT (preemption, Ctrl-C): finish the step, save, exit 0. A second Ctrl-C
    aborts; a second SIGTERM does not: job systems and the scripts that start a run (e.g.
    scripts/multi30k_pair.sh) may each send one, and the save must not be cut short."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def agreed(self, accelerator) -> bool:
        """Whether any process saw a stop request. Several processes vote after every step: a
        launcher gives its workers little time after forwarding a signal (torchrun: 30 s, then
        SIGKILL), which a vote every log_every steps could outlast before the save began."""
        return any_process(accelerator, self.requested)


def setup(cfg: TrainConfig, accelerator, tokenizer_from: Path | None = None) -> dict:
    """Data, tokenizer, model config: everything a run needs besides the model itself.
    `tokenizer_from`: a checkpoint whose tokenizer the run takes (the one it resumes, or
    init_from's), else the config's (trained now: the other processes load the main one's)."""
    out, log = Path(cfg.output_dir), accelerator.print
    # The main process reads the data, trains (or loads) the tokenizer and tokenizes first,
    # filling datasets' cache; the other processes then find all of it there (on another
    # machine with a cache of its own, its first process fills it for the others there).
    # Passing the training split itself (not an iterator) lets a trained tokenizer be cached by
    # the data.
    with accelerator.main_process_first(), accelerator.local_main_process_first():
        train_text = load_text(cfg.train_data, cfg, cfg.train_split)
        # read now, so that a bad valid_data stops the run before the tokenizing of train
        valid_text = load_text(cfg.valid_data, cfg, cfg.valid_split) if cfg.valid_data else None
        reuse = not accelerator.is_main_process
        tokenizer = load_tokenizer(cfg, out, train_text, reuse, log, saved_in=tokenizer_from)
        check_targets_hold_eos(tokenizer, cfg.tokenizer)  # before tokenizing it all
        train = tokenize(
            train_text, tokenizer, cfg.max_seq_length, "train", log, max_ratio=cfg.max_length_ratio
        )
        valid = None
        if valid_text is not None:
            valid = (tokenize(valid_text, tokenizer, cfg.max_seq_length, "valid", log), valid_text)
    ids = SpecialIds.of(tokenizer)
    run = {
        "cfg": cfg,
        "ids": ids,
        "tokenizer": tokenizer,
        "log": log,
        "valid": valid,
        "train": train,
        "train_fwd": train,  # source->target: run["train"] may be another corpus for an epoch
        "train_text": train_text,
    }
    if cfg.bidirectional_epochs:
        n = cfg.bidirectional_epochs
        log(
            f"train: {len(train):,} pairs, both ways ({2 * len(train):,}) in the first "
            f"{n} epoch{'s' if n > 1 else ''}, then source->target only (bidirectional_epochs)"
        )
    run["model_cfg"] = model_config(cfg, tokenizer, ids)
    return run


def restore(accelerator, out: Path, cfg: TrainConfig, resume: bool, log) -> dict:
    state = {
        "epoch": 0,
        "step": 0,
        "batch_in_epoch": 0,
        "best": None,
        "bad_evals": 0,
        "skipped_steps": 0,
        "target_tokens": 0,  # non-padding, all processes
        "validated_step": None,  # the step of the last validation this state holds
    }
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt:
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

        saved_cfg = saved_config(ckpt)[0]  # the run's config as this checkpoint saved it
        trainer_state = read_trainer_state(ckpt)
        try:
            check_same_launch(trainer_state, accelerator, ckpt / "state", log)
            saved = saved_cfg.get("weight_decay", 0.0)
            if (saved > 0) != (cfg.weight_decay > 0):  # checked here: FSDP's loader fails first
                raise UserError(
                    f"saved with weight_decay {saved:g}, this run has {cfg.weight_decay:g}: "
                    "AdamW's parameter groups differ; the value may change, not on or off"
                )
            # accelerate skips an unreadable RNG file silently (the resume would not be exact):
            # read it first, with weights_only=True like everything accelerate loads for us
            rng = ckpt / "state" / f"random_states_{accelerator.process_index}.pkl"
            if rng.exists() or trainer_state["batch_in_epoch"]:  # (else a new process: seeded)
                safe_load(rng)
            accelerator.load_state(ckpt / "state")
            # the batches counted for accumulation: every checkpoint ends a step, and a resume
            # may change grad_accum_steps (at an epoch's end), whose groups start anew
            accelerator.step = 0
        except UserError as e:
            raise UserError(f"{ckpt}: {e}") from None
        except (Exception, CheckpointException) as e:
            if isinstance(e, CheckpointException) and e.failures:  # its str() is tracebacks
                e = next(iter(e.failures.values()))[0]  # the first failing rank's own error
            raise unreadable(ckpt, "the training state", e) from None
        # older checkpoints did not say: take their validation at this step as theirs
        state.update({"validated_step": trainer_state["step"], **trainer_state})
        was = saved_cfg.get("best_metric", "bleu")  # the metric "best" is in
        if was != cfg.best_metric and state["best"] is not None:
            log(
                f"best_metric {was} -> {cfg.best_metric}: the best so far and the patience "
                f"count start again (best/ holds the {was} best until the next validation)"
            )
            state["best"], state["bad_evals"] = None, 0
        epoch = state["epoch"]  # the epoch under way, or the next one at an epoch's end
        where = f"inside epoch {epoch + 1}" if state["batch_in_epoch"] else f"after epoch {epoch}"
        log(f"resumed from {ckpt}: step {state['step']}, {where}")
    elif resume:
        log(f"warning: nothing to resume in {out} (no checkpoint); starting fresh")
    if accelerator.is_main_process:  # drop metrics logged after the checkpoint we resume from
        if not ckpt:  # and a fresh run samples its own segmentations
            shutil.rmtree(out / "subword", ignore_errors=True)
        metrics = out / "metrics.jsonl"
        kept, broken = [], 0
        # a validation at the checkpoint's own step is kept only if the checkpoint holds it (a
        # step saved by save_every just before its epoch's end is validated again on resume)
        validated = state["validated_step"]
        for line in metrics.read_text().splitlines() if ckpt and metrics.exists() else []:
            try:
                record = json.loads(line)
                at = record["step"]
                if (
                    at < state["step"]
                    or at == state["step"]
                    and ("valid_loss" not in record or validated == at)
                ):
                    kept.append(line + "\n")
            except (ValueError, TypeError, KeyError):
                broken += 1  # a record cut short when the run was killed while writing it
        if broken:
            log(f"warning: {metrics}: {broken} unreadable line(s) dropped (a write cut short)")
        tmp = metrics.with_name(metrics.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(metrics)
    return state


def saved_config(ckpt: Path) -> tuple[dict, dict]:
    """A checkpoint's config.json, and its MODEL_SHAPE settings."""
    try:
        saved = json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise unreadable(ckpt, "config.json", e) from None
    fields = TrainConfig.__dataclass_fields__
    return saved, {k: saved.get(k, fields[k].default) for k in MODEL_SHAPE}


def check_same_model(ckpt: Path, cfg: TrainConfig) -> None:
    """UserError naming the model settings a resume changed (the weights would not load, and
    the error from load_state_dict names tensors, not settings)."""
    saved, was = saved_config(ckpt)
    now = {k: getattr(cfg, k) for k in MODEL_SHAPE}
    for shape in (was, now):  # null: as many decoder layers as encoder layers
        shape["decoder_layers"] = shape["decoder_layers"] or shape["num_layers"]
    changed = [f"{k} {was[k]} -> {now[k]}" for k in MODEL_SHAPE if was[k] != now[k]]
    # the tokenizer too: the embeddings' rows are its ids (another one of the same size would
    # load, and train on ids that mean other pieces)
    was_tok = saved.get("tokenizer", TrainConfig.__dataclass_fields__["tokenizer"].default)
    if was_tok != cfg.tokenizer:
        changed.append(f"tokenizer {json.dumps(was_tok)} -> {json.dumps(cfg.tokenizer)}")
    if changed:
        raise UserError(
            f"{ckpt}: resumed with {', '.join(changed)}: a resume trains the checkpoint's "
            "model, whose shape and vocabulary these settings fix; drop them (--config "
            f"{ckpt.parent.parent / 'config.json'} repeats the run's), or train a new model in "
            "another output_dir"
        )


def from_init(cfg: TrainConfig, resumed_from: Path | None):
    """init_from: (the config with the model shape and tokenizer setting of the checkpoint it
    names, that checkpoint, its model, what to log). On a resume the run's own checkpoint holds
    the weights: its shape and tokenizer, no model, nothing to log."""
    if resumed_from:
        saved, shape = saved_config(resumed_from)
        tokenizer = saved.get("tokenizer", cfg.tokenizer)
        return dataclasses.replace(cfg, **shape, tokenizer=tokenizer), resumed_from, None, ""
    source = init_checkpoint(cfg)
    model, tok, _, trained = load_model(source)  # checked now, before the data is prepared
    m = model.cfg  # the shape of the weights themselves
    try:
        if len(tok) != m.src_vocab_size:  # the new model's vocabulary is its tokenizer's
            raise UserError(f"its tokenizer has {len(tok)} tokens, its model {m.src_vocab_size}")
        check_direction(tok, cfg, other_languages=True)  # Marian's for the other direction
        shape = {key: getattr(m, ours) for key, ours in MODEL_SHAPE.items()}
        adopted = dataclasses.replace(cfg, **shape, tokenizer=trained.tokenizer)
        if bad := adopted.tokenizer_errors():  # was its tokenizer trained in its run?
            raise UserError("; ".join(bad))
    except UserError as e:
        raise UserError(f"init_from {source}: {e}") from None
    # this config's values were meant for a model trained from scratch: said, not refused
    changed = [f"{k} {getattr(cfg, k)} -> {v}" for k, v in shape.items() if getattr(cfg, k) != v]
    note = f"init_from {source}: its weights, tokenizer and model shape"
    note += f" ({', '.join(changed)})" if changed else ""
    note += "; a new optimizer, schedule and step count"
    if (trained.src_lang, trained.tgt_lang) != (cfg.src_lang, cfg.tgt_lang):
        note += f"; warning: it was trained {trained.src_lang}->{trained.tgt_lang}, this run "
        note += f"is {cfg.src_lang}->{cfg.tgt_lang}"
    return adopted, source, model, note


def init_weights(model, trained, source: Path) -> None:
    """Copy the weights of `trained`, the model saved at `source`, into the new run's model."""
    try:
        model.load_state_dict(trained.state_dict())
    except RuntimeError as e:  # not expected: from_init checked the shape and vocabulary
        last = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"init_from {source}: its weights do not fit ({last})") from None


def read_trainer_state(ckpt: Path) -> dict:
    """A checkpoint's trainer_state.json, refused in one line when cut short or damaged."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        for key in ("epoch", "step", "batch_in_epoch"):
            if type(state[key]) is not int:
                raise ValueError(f"{key} is {state[key]!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise unreadable(ckpt, "trainer_state.json", e) from None
    return state


def check_same_launch(trainer_state: dict, accelerator, state_dir: Path, log) -> None:
    """Refuse, before loading anything, a resume the training state cannot serve: under FSDP
    from a checkpoint saved without it or the reverse (one is sharded, the other whole), or
    inside an epoch with another number of processes (each process's batches and random state
    are its own). Say which processes start from the seed at an epoch's end."""
    sharded = state_dir.is_dir() and any(
        p.name.startswith("pytorch_model_fsdp") for p in state_dir.iterdir()
    )
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if sharded != fsdp:
        saved, now = ("under FSDP", "without") if sharded else ("without FSDP", "under")
        raise UserError(
            f"saved {saved} and resumed {now} it: its training state (sharded under FSDP, whole "
            f"without) cannot load; resume it as it was launched, or train on from its weights "
            f"in a new run (--init_from {state_dir.parent})"
        )
    n = accelerator.num_processes  # older checkpoints did not record theirs: one RNG file each
    saved_n = trainer_state.get("batching", {}).get("processes") or (
        len(list(state_dir.glob("random_states_*.pkl"))) or None
    )
    if saved_n is None or saved_n == n:
        return
    if trainer_state["batch_in_epoch"]:
        changed = f"processes {saved_n} -> {n}"
        raise batching_changed(trainer_state["epoch"], changed, f"num_processes {saved_n}")
    if saved_n < n:
        new = f"processes {saved_n}-{n - 1} start" if n - saved_n > 1 else f"process {n - 1} starts"
        log(f"saved by {saved_n} process(es): {new} from the seed's random state")


def main(argv=None):
    # log lines reach a log file (or a pipe to tee) as they are written, not 8 KB at a time
    sys.stdout.reconfigure(line_buffering=True)
    args, cfg = config_from_argv(argv, "Train a Transformer for translation.")
    if bad := cfg.training_errors():
        raise UserError("config: " + "; ".join(bad))
    setup_cpu_launch()
    out = Path(cfg.output_dir)
    # the first folder mkdir makes (runs/ in a fresh clone): a refused run removes it whole
    made = next((p for p in [*reversed(out.parents), out] if not p.exists()), None)
    trackers = [t.value for t in LoggerType]
    if cfg.log_with is not None and cfg.log_with not in trackers:  # "" too
        raise UserError(f"log_with must be null or one of {trackers} (got {cfg.log_with!r})")
    installed = [t.value for t in get_available_trackers()]
    if cfg.log_with not in (None, "all", *installed):  # accelerate would only warn, log nothing
        raise UserError(
            f"log_with {cfg.log_with}: not installed here (pip install {cfg.log_with}, or "
            f"log_with null; installed: {', '.join(installed) or 'none'})"
        )
    if cfg.valid_data and cfg.best_metric == "bleu" and not cfg.valid_bleu_samples:
        # checked here, not in TrainConfig: runs saved with it must still load for decoding
        raise UserError(
            'best_metric "bleu" needs valid_bleu_samples above 0 (or best_metric "loss")'
        )
    resumed_from = latest_checkpoint(out) if args.resume else None
    if args.resume and not cfg.init_from:  # a fine-tuning run goes on as it began, also one
        began = resumed_from or (out if (out / "config.json").is_file() else None)  # killed
        init_from = saved_config(began)[0].get("init_from") if began else None  # before a save
        cfg = dataclasses.replace(cfg, init_from=init_from) if init_from else cfg
    source, init, init_note = None, None, ""
    if cfg.init_from:  # before the data is prepared, as the check below
        cfg, source, init, init_note = from_init(cfg, resumed_from)
    if resumed_from:
        check_same_model(resumed_from, cfg)  # before the data is prepared: minutes on WMT14
    earlier = step_dirs(out / "checkpoints")
    if earlier and not args.resume:  # a fresh run would prune and mix with them, or delete them
        raise UserError(
            f"{out} holds an earlier run's checkpoints (up to {earlier[-1].name}): --resume "
            f"continues it; to start over, delete {out / 'checkpoints'} and {out / 'best'}, or "
            "pick another output_dir"
        )
    if not resumed_from and (out / "best").exists():  # translate.py etc. would take it as ours
        raise UserError(
            f"{out} holds an earlier run's best checkpoint and none to resume: a new run there "
            f"would be served as {out / 'best'} until its first validation; move or delete it, "
            "or pick another output_dir"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        # a uniquely named file (deleted on close): ranks probe at once, maybe from several hosts
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"output_dir {out} is not writable ({e.strerror})") from None
    try:
        accelerator = make_accelerator(cfg, out)
    except BaseException:  # before any process could start writing into it
        if made:
            shutil.rmtree(made, ignore_errors=True)
        raise
    if not accelerator.is_local_main_process or not sys.stderr.isatty():
        datasets.disable_progress_bars()  # one set of bars, not one per process; none in a log
    set_seed(cfg.seed)
    try:
        if accelerator.mixed_precision == "fp16" and not accelerator.native_amp:
            # accelerate turns fp16 on CPU into no autocast at all: the run would be fp32 unawares
            raise UserError(
                f"mixed_precision fp16 is not supported on {accelerator.device.type} "
                "by accelerate (it would train in fp32): use bf16 or no"
            )
        run = setup(cfg, accelerator, source or resumed_from)
        check_whole_steps(run, accelerator.num_processes)
        model = Transformer(run["model_cfg"])
        if init is not None:
            init_weights(model, init, source)
            init = None  # the checkpoint's copy of the weights, freed
    except BaseException:  # bad data, Ctrl-C: a run directory made just now holds no run yet
        if made and accelerator.is_main_process:
            shutil.rmtree(made, ignore_errors=True)
        raise
    if why := fit_steps_inactive(cfg):
        run["log"](f"warning: fit_steps_to_time does nothing in this run: {why}")
    if keep_freed_memory(accelerator.device):  # after the data is prepared
        run["log"]("CPU: freed memory is kept for reuse (glibc mallopt), not given back")
    run["log"](
        f"{len(run['train'])} training pairs, vocabulary {run['model_cfg'].src_vocab_size}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{accelerator.mixed_precision if accelerator.mixed_precision != 'no' else 'fp32'} "
        f"on {accelerator.device.type}, {distribution(accelerator)}"
    )
    if init_note:
        run["log"](init_note)
    # each process takes its own batches: N processes make a step N times larger (fairseq's
    # --max-tokens is per GPU too), so the step's size is said, not left to the arithmetic
    n, accum = accelerator.num_processes, cfg.grad_accum_steps
    cap, size = f"{cfg.batch_size:,} pairs", f"{cfg.batch_size * accum * n:,} pairs"
    if cfg.max_tokens:  # null: batches are capped by batch_size alone
        cap = f"{cfg.max_tokens:,} padded tokens and {cap}"
        size = f"{cfg.max_tokens * accum * n:,} padded tokens"
    run["log"](
        f"step size: batches of up to {cap}, {accum} a step (grad_accum_steps)"
        f"{f' in each of {n} processes' * (n > 1)}: up to {size} a step"
    )
    optimizer = make_optimizer(model, cfg, accelerator.device)
    # Not passed to prepare(): accelerate would step it once per process per step.
    if cfg.lr_schedule == "inverse_sqrt":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            # run["cfg"], not cfg: fit_steps_to_time may change its max_steps and cooldown_steps
            lambda s: inverse_sqrt(
                s, cfg.warmup_steps, run["cfg"].cooldown_steps, run["cfg"].max_steps
            ),
        )
    else:  # warmup, then linear or cosine decay to 0 at max_steps
        from transformers import get_scheduler

        scheduler = get_scheduler(cfg.lr_schedule, optimizer, cfg.warmup_steps, cfg.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)  # one call: FSDP needs both at once
    # The scheduler's state goes into trainer_state.json, not accelerate's pickle (which is
    # loaded with weights_only=False, i.e. could run code from a tampered checkpoint).
    run["scheduler"] = scheduler
    if accelerator.distributed_type == DistributedType.FSDP:
        if not accelerator.is_fsdp2:
            raise UserError("FSDP: set fsdp_version: 2 in the accelerate config")
        from torch.distributed.fsdp import register_fsdp_forward_method

        for method in ("encode", "decode"):  # decoding calls these, not forward()
            register_fsdp_forward_method(model, method)
        # accelerate reshards every unit after its forward, the root too: the root (embeddings
        # and the tied output layer) would be gathered again for backward, twice a step
        model.set_reshard_after_forward(False, recurse=False)
    state = restore(accelerator, out, cfg, args.resume, run["log"])
    if cfg.ema_decay:
        run["ema"] = start_ema(model, accelerator, cfg, resumed_from, run["log"])
    run["cfg"] = cfg = resume_plan(cfg, state, run["log"])
    log_changed_settings(resumed_from, cfg, run["log"])
    check_same_batching(run, state, accelerator)  # before config.json says otherwise
    if "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
        new_learning_rate(scheduler, cfg.learning_rate, state["step"], run["log"])
    if accelerator.is_main_process:
        cfg.save(out / "config.json")
    # a finished run resumed writes no new tracker run (an empty TensorBoard log per resume)
    if cfg.log_with and not nothing_to_do(cfg, state):
        project, kwargs = tracker_names(cfg.log_with, out, state["step"])
        accelerator.init_trackers(
            project,
            {
                k: str(v) if isinstance(v, (dict, type(None))) else v
                for k, v in cfg.to_dict().items()
            },
            init_kwargs=kwargs,
        )
    fit(model, optimizer, scheduler, accelerator, run, state)
    accelerator.end_training()


def fsdp_plugin(cfg: TrainConfig):
    """Under an FSDP launch with 16-bit mixed precision: compute in 16 bits, but average the
    gradients across processes in fp32 (FSDP2's reduce_dtype). accelerate's own policy reduces
    them in the compute dtype, losing bits that one process, which reduces nothing, keeps.
    The rest of the plugin comes from the launch's settings, as without it."""
    launched = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    precision = cfg.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    fsdp2 = os.environ.get("FSDP_VERSION", "1") == "2"  # FSDP1 is refused, with its reason, later
    if not launched or not fsdp2 or precision not in ("bf16", "fp16"):
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    # the policy itself, not a dict: accelerate 1.6-1.15 wanted a dict to name output_dtype too
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    return FullyShardedDataParallelPlugin(mixed_precision_policy=policy)


def tracker_names(log_with: str, out: Path, step: int = 0) -> tuple[str, dict]:
    """accelerate's project_name is TensorBoard's folder in output_dir, but wandb's project and
    mlflow's experiment: there, one project for all runs (WANDB_PROJECT if set, as with
    transformers' Trainer), each run named after its output_dir. Resumed at `step`,
    TensorBoard drops what the interrupted run logged after it (as metrics.jsonl does), also
    among others ("all")."""
    tensorboard = {"tensorboard": {"purge_step": step + 1 if step else 0}}
    if log_with == "tensorboard":
        return "tensorboard", tensorboard
    run_name = out.resolve().name
    project = os.environ.get("WANDB_PROJECT", "transformer-mt")
    return project, {"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}, **tensorboard}


def unreadable(path: Path, what: str, e: BaseException) -> UserError:
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return UserError(
        f"{path}: cannot load {what} ({type(e).__name__}: {first}); "
        "remove this checkpoint to resume from an older one"
    )


def start_ema(model, accelerator, cfg: TrainConfig, ckpt: Path | None, log) -> EMA:
    """The moving average, from the checkpoint resumed (called after restore: a checkpoint
    without one starts it from the resumed weights)."""
    ema = EMA(model, cfg.ema_decay)
    path = None
    if ckpt and accelerator.distributed_type == DistributedType.FSDP:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        saved = state.get("batching", {}).get("processes", accelerator.num_processes)
        if saved != accelerator.num_processes:  # each would find other shards, or none
            raise UserError(
                f"{ckpt}: its moving average is sharded over {saved} processes; under FSDP "
                f"resume it with {saved}, not {accelerator.num_processes}"
            )
        path = ema_file(ckpt, accelerator)  # this process's own shards
    elif ckpt:  # every process holds the same whole average: rank 0's file serves all (a run
        path = ckpt / "state" / "ema_0.pt"  # resumed with more processes has none for the new)
    if path and path.exists():
        try:
            ema.load(path)
        except Exception as e:  # torch.load raises several kinds
            raise unreadable(path, "the moving average", e) from None
    elif ckpt:
        log(f"{ckpt} holds no moving average: it starts from the resumed weights")
    return ema


def resume_plan(cfg: TrainConfig, state: dict, log) -> TrainConfig:
    """The max_steps and cooldown_steps that fit_steps_to_time fitted before a resume, if this
    run's config still has the values they were fitted from (a --max_steps given on resuming
    wins, and is fitted anew)."""
    plan = state.pop("plan", None)
    if not (plan and cfg.fit_steps_to_time):
        return cfg
    if plan.get("config") != [cfg.max_steps, cfg.cooldown_steps]:
        given = "null" if cfg.max_steps is None else f"{cfg.max_steps:,}"
        log(
            f"max_steps {given}, cooldown_steps {cfg.cooldown_steps:,}: as given, not "
            f"the {plan['max_steps']:,} and {plan['cooldown_steps']:,} fitted before the resume"
        )
        state["pace_checks"] = 0  # the next log fits these anew
        return cfg
    state["plan"] = plan
    log(
        f"max_steps {plan['max_steps']:,}, cooldown_steps {plan['cooldown_steps']:,}: as fitted "
        "to max_minutes before the resume (fit_steps_to_time)"
    )
    return dataclasses.replace(
        cfg, max_steps=plan["max_steps"], cooldown_steps=plan["cooldown_steps"]
    )


def log_changed_settings(ckpt: Path | None, cfg: TrainConfig, log) -> None:
    """Settings a resume changes (an override added, or one forgotten) take effect silently and
    the run's config.json is overwritten: the log keeps what the checkpoint was trained with."""
    if ckpt is None:  # a fresh start
        return
    before, now = saved_config(ckpt)[0], cfg.to_dict()  # read (and checked) by restore() too
    changed = [f"{k} {before[k]} -> {v}" for k, v in now.items() if before.get(k, v) != v]
    if changed:
        log(f"resumed with settings other than {ckpt.name}'s: {', '.join(changed)}")


def new_learning_rate(scheduler, lr: float, step: int, log) -> None:
    """A resumed scheduler restores the rate it was built with (base_lrs), and the optimizer
    the rate the old schedule gave the next step. This run's wins: a learning_rate changed for
    the resume, as the run's config.json then says (fairseq's --lr on a restore too), and its
    max_steps / cooldown_steps (the schedule's shape) from the very next step on: lr × this
    run's multiplier at this step."""
    saved = scheduler.base_lrs[0]
    scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
    scheduler._last_lr = [lr * f(scheduler.last_epoch) for f in scheduler.lr_lambdas]
    for group, now in zip(scheduler.optimizer.param_groups, scheduler._last_lr):
        group["initial_lr"], group["lr"] = lr, now  # the next step's rate
    if lr != saved:
        log(
            f"learning_rate {lr:g} ({saved:g} before the resume): the schedule goes on from "
            f"step {step} at the new rate"
        )


# How long a process waits for the others at a collective. The main process prepares the data
# first (download, Arrow, tokenizing: minutes for WMT14) while the others wait at a barrier,
# which NCCL's default of 10 minutes would end with a timeout (`python data.py prepare` first
# fills the caches, so that every launch after it starts at once). The cost: a process that
# hangs later in the run is reported after an hour, not ten minutes.
PROCESS_GROUP_TIMEOUT = timedelta(hours=1)
NO_BF16 = "(GPUs before Ampere have no bf16): pass --mixed_precision no"


def make_accelerator(cfg: TrainConfig, out: Path) -> Accelerator:
    try:
        accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum_steps,
            log_with=cfg.log_with,
            project_dir=out,
            fsdp_plugin=fsdp_plugin(cfg),
            kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)],
        )
    except ValueError as e:
        if "bf16" not in str(e):  # accelerate's check of the device, before anything runs
            raise
        raise UserError(f"mixed_precision bf16: {str(e).strip().rstrip('.')} {NO_BF16}") from None
    # accelerate's check passes where torch can emulate bf16 (a V100, a T4): slowly
    if (
        accelerator.mixed_precision == "bf16"
        and accelerator.device.type == "cuda"
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        raise UserError(f"mixed_precision bf16: this GPU runs bf16 emulated {NO_BF16}")
    return accelerator


def distribution(accelerator) -> str:
    """How the run is really distributed, e.g. "FSDP over 2 processes": accelerate can fall back
    to something else without an error (distributed.py), so the log says it."""
    if accelerator.distributed_type == DistributedType.NO:
        return "1 process"
    n, kind = accelerator.num_processes, accelerator.distributed_type.value
    if kind.startswith("MULTI_"):  # accelerate's names for DDP on CPUs, GPUs, ...
        kind = f"DDP ({kind})"
    return f"{kind} over {n} process{'es' if n > 1 else ''}"


def fit(model, optimizer, scheduler, accelerator, run: dict, state: dict) -> None:
    cfg, ids = run["cfg"], run["ids"]
    run["started"] = time.time() - state.get("train_seconds", 0.0)  # a resume's clock goes on
    run["stop"], outcome = StopSignal(), None  # from here a signal waits for a save
    if finish_resumed(model, accelerator, run, state):
        return
    # one meter for the whole run: a log window that spans an epoch's end loses no step's loss
    meter = run["meter"] = Meter(accelerator, state.pop("meter", None))
    for epoch in range(state["epoch"], cfg.epochs):
        batches, weights, totals = epoch_batches(
            run, accelerator, epoch, state["batch_in_epoch"] > 0
        )
        steps, first = len(batches) // cfg.grad_accum_steps, state["batch_in_epoch"]
        bar = epoch_bar(accelerator, epoch, run, state, steps, first // cfg.grad_accum_steps)
        meter.resume()
        model.train()
        for batch, weight, total in zip(
            batch_iter(run["train"], batches[first:], ids, accelerator.device),
            weights[first:],
            totals[first:],
        ):
            with accelerator.accumulate(model):
                loss = train_loss(model, batch, run["cfg"], ids.pad)
                accelerator.backward(loss if weight == 1.0 else loss * weight)
                if accelerator.sync_gradients:
                    finite = optimizer_step(model, optimizer, accelerator, run)
            state["batch_in_epoch"] += 1
            meter.add(loss, batch["n_tokens"], total)
            state["target_tokens"] += total
            if not accelerator.sync_gradients:
                continue
            if not finite:
                meter.drop()  # the skipped step's loss is not logged (NaN would be)
                check_bad_step(state, run["cfg"], run["log"])
                continue
            meter.commit()
            state["bad_steps"] = 0
            scheduler.step()
            state["step"] += 1
            bar.update(1)
            if outcome := after_step(model, accelerator, scheduler, run, state, epoch, steps, bar):
                break
        bar.close()
        if outcome == "stopped":
            return
        if state["batch_in_epoch"] >= len(batches):
            state.update(epoch=epoch + 1, batch_in_epoch=0)
        state["meter"] = meter.state(accelerator)  # the epoch end's checkpoint logs on from here
        meter.pause()
        ended = end_of_epoch(model, accelerator, run, state, epoch)
        del state["meter"]
        if ended or outcome == "done":
            break
        # max_minutes passed in the epoch's last steps (checked every log_every) or during its
        # validation: the run ends here, validated and saved, not a part of an epoch later
        if out_of_time(accelerator, 0, cfg, state["train_seconds"]):
            break
        # a signal during the epoch's validation: saved just now, so stop before the next
        # epoch's batches are made and a step is trained
        if epoch + 1 < cfg.epochs and run["stop"].agreed(accelerator):
            run["log"](f"stopped by signal at step {state['step']}; continue with --resume")
            return
    seconds = time.time() - run["started"]
    run["log"](
        f"done: step {state['step']}, checkpoints in {cfg.output_dir}; "
        f"{state['target_tokens'] / 1e6:.2f}M target tokens in {seconds / 60:.1f} min, "
        f"{state['target_tokens'] / seconds:.0f} tokens/s end to end (with validation and saves)"
    )


def finish_resumed(model, accelerator, run: dict, state: dict) -> bool:
    """True if a resumed run was already complete (its end validated now if its last
    checkpoint was saved before that validation)."""
    if not (why := finished(run["cfg"], state)):
        return False
    if nothing_to_do(run["cfg"], state):
        run["log"](f"{why}; nothing to do")
    else:
        run["log"](f"{why}; validating the last step")
        end_of_epoch(model, accelerator, run, state, state["epoch"])
    return True


def epoch_bar(accelerator, epoch: int, run: dict, state: dict, steps: int, done: int):
    """The epoch's progress bar, up to max_steps if that comes first; on a terminal only (not
    into a log file: log_train prints a line instead, as fairseq's "simple" format)."""
    cfg = run["cfg"]
    if cfg.max_steps:
        steps = min(steps, done + max(cfg.max_steps - state["step"], 0))
    return tqdm(
        total=steps,
        initial=done,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        dynamic_ncols=True,
        disable=None if accelerator.is_local_main_process else True,  # None: a terminal only
    )


def after_step(model, accelerator, scheduler, run, state, epoch, steps, bar) -> str | None:
    """A step's bookkeeping: log, fit the steps to the pace, save on schedule or when stopped.
    "done" at the run's end (the epoch's end then validates and saves), "stopped" on a signal
    (saved here), else None."""
    state["train_seconds"] = time.time() - run["started"]
    meter, cfg = run["meter"], run["cfg"]
    if state["step"] % cfg.log_every == 0:
        log_train(accelerator, bar, meter, scheduler, state, epoch, run)
        cfg = fit_to_pace(accelerator, run, state, epochs_end(run, state, epoch, steps))
    done = bool(cfg.max_steps and state["step"] >= cfg.max_steps) or out_of_time(
        accelerator, state["step"], cfg, state["train_seconds"]
    )
    stopping = run["stop"].agreed(accelerator)
    if stopping:  # saved now: the grace period may not outlast a validation
        save(accelerator, model, run, {**state, "meter": meter.state(accelerator)})
    if done:  # the run's end validates and saves, a stop request or not
        return "done"
    if stopping:
        run["log"](f"stopped by signal at step {state['step']}; continue with --resume")
        return "stopped"
    if cfg.save_every and state["step"] % cfg.save_every == 0:
        save(accelerator, model, run, {**state, "meter": meter.state(accelerator)})
    return None


def nothing_to_do(cfg: TrainConfig, state: dict) -> bool:
    """A resumed run already complete, its last step validated."""
    return bool(finished(cfg, state)) and state.get("validated_step") == state["step"]


def finished(cfg: TrainConfig, state: dict) -> str | None:
    """Why a resumed run has nothing left to do, if so (a limit raised for the resume lets it
    go on)."""
    if cfg.max_steps and state["step"] >= cfg.max_steps:
        return f"already at max_steps ({cfg.max_steps})"
    if state["epoch"] >= cfg.epochs:
        return f"already trained {cfg.epochs} epoch{'s' * (cfg.epochs > 1)} (more with --epochs)"
    if cfg.max_minutes and state.get("train_seconds", 0.0) > 60 * cfg.max_minutes:
        return f"already trained max_minutes ({cfg.max_minutes})"
    if cfg.patience and state["bad_evals"] >= cfg.patience:
        return f"early stopping ended this run (patience {cfg.patience})"
    return None


def optimizer_step(model, optimizer, accelerator, run: dict) -> bool:
    """Clip, step (and update the moving average), zero the gradients; False if the gradient
    norm was not finite, and the step skipped. Its check is a step's one host sync (R-Drop adds
    one; several processes add their stop vote, StopSignal.agreed)."""
    norm = accelerator.clip_grad_norm_(model.parameters(), run["cfg"].clip_norm or math.inf)
    finite = bool(torch.isfinite(norm))
    if finite:
        optimizer.step()
        if run.get("ema"):
            run["ema"].update(model)
    elif accelerator.scaler is not None:
        # fp16 (GPUs only): clipping has unscaled the gradients and only the step updates the
        # loss scale; skipped without update(), the scale would never fall and the next step's
        # unscale_ would raise
        accelerator.scaler.update()
    optimizer.zero_grad()
    return finite


def fit_to_pace(accelerator, run: dict, state: dict, last_step: int) -> TrainConfig:
    """check_pace at a log step; the run's config, as fit_steps_to_time may have changed it
    (then config.json says so too)."""
    cfg = run["cfg"]
    if cfg.fit_steps_to_time:
        # every process must fit the same max_steps: the main process's clock decides
        state["train_seconds"] = main_process_value(accelerator, state["train_seconds"])
    check_pace(run, state, last_step)
    if run["cfg"] is not cfg and accelerator.is_main_process:
        run["cfg"].save(Path(cfg.output_dir) / "config.json")
    return run["cfg"]


# what an epoch's batches are cut from: a resume inside an epoch skips the batches already
# trained, which is only right if they are the same batches
BATCHING = ("train_data", "train_split", "dataset_config", "max_seq_length", "max_tokens",
            "batch_size", "grad_accum_steps", "seed", "subword_alpha",
            "bidirectional_epochs", "max_length_ratio")  # fmt: skip


def check_same_batching(run: dict, state: dict, accelerator) -> None:
    """Refuse a resume inside an epoch with other batching settings: it would skip pairs and
    repeat others (max_tokens 1,024 -> 512 halfway through Multi30k left 13 % unseen and 37 %
    seen twice). Otherwise record them, for every checkpoint of this run."""
    cfg = run["cfg"]
    now = {k: getattr(cfg, k) for k in BATCHING}
    if not has_splits(cfg.train_data):  # files are read whole: their split names nothing
        now["train_split"] = None
    if not takes_config(cfg.train_data):
        now["dataset_config"] = None
    now.update(processes=accelerator.num_processes, pairs=len(run["train_fwd"]))
    saved, epoch = state.get("batching") or {}, state["epoch"]
    # a key an older checkpoint did not record is not held against it
    diff = [f"{k} {saved[k]} -> {v}" for k, v in now.items() if k in saved and saved[k] != v]
    if state["batch_in_epoch"] and diff:
        raise batching_changed(epoch, ", ".join(diff), "the run's values")
    state["batching"] = now


def batching_changed(epoch: int, changed: str, resume_with: str) -> UserError:
    """The refusal of a resume inside epoch `epoch` (0-based) whose batches would differ."""
    return UserError(
        f"resumed inside epoch {epoch + 1} with {changed}: its batches would differ from the "
        "interrupted run's, skipping some pairs and repeating others; resume with "
        f"{resume_with}, or from a checkpoint at an epoch's end (delete the newer ones)"
    )


def end_of_epoch(model, accelerator, run, state, epoch) -> bool:
    """Validate, log, save last (and best); True if early stopping says to stop."""
    cfg, began = run["cfg"], time.time()
    with averaged(run, model):
        metrics = evaluate(model, accelerator, run) if run["valid"] else {}
    score = metrics.get("valid_bleu") if cfg.best_metric == "bleu" else None
    score = -metrics.get("valid_loss", 0.0) if score is None else score
    is_best = (
        bool(metrics) and math.isfinite(score) and (state["best"] is None or score > state["best"])
    )
    state["best"] = score if is_best else state["best"]
    state["bad_evals"] = 0 if is_best else state["bad_evals"] + 1
    said = " ".join(f"{k} {v:.3f}" for k, v in metrics.items()) or "(no valid_data)"
    run["log"](f"epoch {epoch + 1}: step {state['step']} {said}" + (" (best)" if is_best else ""))
    write_metrics(accelerator, {"epoch": epoch + 1, "step": state["step"], **metrics}, run)
    # the validation counts in the run's time, as it would for a run not resumed from here
    state["train_seconds"] = state.get("train_seconds", 0.0) + time.time() - began
    state["validated_step"] = state["step"]
    record = {"step": state["step"], "epoch": epoch + 1, **metrics}  # as logged
    save(accelerator, model, run, state, best=record if is_best or not run["valid"] else None)
    if cfg.patience and state["bad_evals"] >= cfg.patience:
        run["log"](f"early stopping: no improvement in {cfg.patience} validations")
        return True
    return False


def epochs_end(run: dict, state: dict, epoch: int, steps: int) -> int:
    """About the step at which `epochs` ends the run: this epoch's steps per pair, times the
    pairs left (with bidirectional_epochs, later epochs may hold half as many pairs)."""
    cfg = run["cfg"]
    left = steps - state["batch_in_epoch"] // cfg.grad_accum_steps
    later = range(epoch + 1, cfg.epochs)
    if cfg.bidirectional_epochs:
        both = max(0, cfg.bidirectional_epochs - epoch - 1)  # later epochs still both ways
        pairs = (len(later) + both) * len(run["train_fwd"])
    else:
        pairs = len(later) * len(run["train"])
    return state["step"] + left + round(pairs * steps / len(run["train"]))


PACE_CHECKS = (1 / 20, 1 / 5, 1 / 2)  # fractions of max_minutes; the cooldown starts later


def fit_steps_inactive(cfg: TrainConfig) -> str | None:
    """Why fit_steps_to_time, if on, cannot fit anything: it moves the end of inverse_sqrt's
    cooldown to where max_minutes will stop the run."""
    if not cfg.fit_steps_to_time:
        return None
    if cfg.lr_schedule != "inverse_sqrt":
        return f"it fits inverse_sqrt's cooldown, not lr_schedule {cfg.lr_schedule}'s decay"
    missing = [k for k in ("max_minutes", "max_steps", "cooldown_steps") if not getattr(cfg, k)]
    return f"it needs {' and '.join(missing)}" if missing else None


def check_pace(run: dict, state: dict, last_step: int | None = None) -> None:
    """A twentieth, a fifth and a half into max_minutes: will max_minutes stop training before the
    learning rate reaches 0 at max_steps? A schedule set in steps cannot see the machine's pace,
    which here moved by 1.6x from one day to another; stopped early, it skips its decay. Warn
    with the max_steps that fit, or with fit_steps_to_time set them (either way), as long as the
    cooldown has not begun, so the LR stays continuous. The first steps are the slowest (in two
    Multi30k pairs the first check's pace was 6-9 % and 18-21 % below the whole run's), so a
    later check counts only the steps since the one before. `last_step`: where `epochs` ends
    the run, a bound for a fitted max_steps."""
    cfg, seconds, step = run["cfg"], state["train_seconds"], state["step"]
    decays = cfg.lr_schedule != "inverse_sqrt" or cfg.cooldown_steps
    if not (cfg.max_minutes and cfg.max_steps and decays):
        return
    limit = 60 * cfg.max_minutes
    due = sum(seconds >= limit * f for f in PACE_CHECKS)
    # checks made for another max_minutes (changed on resuming) do not count
    if due <= (state.get("pace_checks", 0) if state.get("pace_minutes") == cfg.max_minutes else 0):
        return
    state["pace_minutes"] = cfg.max_minutes
    # Kept in the state: a resume does not check again (nor fit anew from the whole run's
    # pace). A resume past several points checks once. The pace: since the last check if that
    # was a tenth of max_minutes ago or more (a short span is noisy), else the run's.
    state["pace_checks"], (since_s, since_step) = due, state.get("pace_at", (0.0, 0))
    state["pace_at"] = [seconds, step]
    if seconds - since_s < limit / 10:
        since_s, since_step = 0.0, 0
    if seconds >= limit:  # resumed past max_minutes: it stops at once anyway
        return
    per_minute = (step - since_step) / (seconds - since_s) * 60
    reach = int(step + per_minute * (limit - seconds) / 60)
    fitting = cfg.fit_steps_to_time and not fit_steps_inactive(cfg)
    # 5 % off, rounded down to hundreds
    fit = reach * 95 // 10_000 * 100
    if fitting and last_step:
        fit = min(fit, last_step)
    share = max(cfg.cooldown_steps * fit // cfg.max_steps, 1) if cfg.cooldown_steps else 0
    # the cooldown (or the decay) has begun neither at the old length nor at the new one
    in_time = fit - share > step and cfg.max_steps - cfg.cooldown_steps > step
    if fitting and in_time:
        if fit != cfg.max_steps:
            run["log"](
                f"at {per_minute:.0f} steps/min, {fit:,} steps fit max_minutes "
                f"({cfg.max_minutes:g}){' and epochs' if fit == last_step else ''}: max_steps "
                f"{cfg.max_steps:,} -> {fit:,}, cooldown_steps {cfg.cooldown_steps:,} -> "
                f"{share:,} (fit_steps_to_time)"
            )
            run["cfg"] = dataclasses.replace(cfg, max_steps=fit, cooldown_steps=share)
            # kept for --resume, with the values it was fitted from (the config's)
            config = state.get("plan", {}).get("config", [cfg.max_steps, cfg.cooldown_steps])
            state["plan"] = {"max_steps": fit, "cooldown_steps": share, "config": config}
        return
    if reach >= cfg.max_steps:
        return
    advice = (
        f"to fit: stop (Ctrl-C), then --resume --max_steps {fit}"
        + (f" --cooldown_steps {share}" if share else "")
        if in_time
        else "too late to fit the decay by lowering max_steps"
    )
    run["log"](
        f"warning: at {per_minute:.0f} steps/min, max_minutes ({cfg.max_minutes:g}) stops training "
        f"near step {reach:,}, before the learning rate reaches 0 at max_steps "
        f"({cfg.max_steps:,}); {advice}"
    )


def out_of_time(accelerator, step: int, cfg: TrainConfig, seconds: float) -> bool:
    """max_minutes reached (by the run's training time, as saved: a resume sees the same)?
    Processes decide together, every log_every steps."""
    if not cfg.max_minutes or step % cfg.log_every:
        return False
    return any_process(accelerator, seconds > 60 * cfg.max_minutes)


class Meter:
    """Loss and token counts since the last log line, kept on device (no sync per step). The
    loss is per target token over all of them, as in fairseq: a batch of 40 tokens weighs a
    twenty-fifth of one of 1,000. One meter lasts the run, so a window that spans an epoch's
    end loses no step; a checkpoint stores the loss not yet logged, so that the first line after
    a resume averages the same steps as an uninterrupted run would."""

    def __init__(self, accelerator, saved: dict | None = None):
        if not saved or "counted" not in saved:  # none, or an older checkpoint's mean of means
            saved = {"loss": 0.0, "counted": 0.0}
        # saved by N processes, restored by each of M (an epoch's end may resume with more):
        # each takes N/M of the saved mean, so that their sum is the sums saved
        share = saved.get("processes", accelerator.num_processes) / accelerator.num_processes
        self.loss = torch.tensor(saved["loss"] * share, device=accelerator.device)  # Σ loss×tokens
        self.counted, self.tokens, self.t0 = saved["counted"] * share, 0, time.time()
        self.paused = self.t0  # until the first epoch's batches are ready
        self.drop()

    def pause(self):
        self.paused = time.time()

    def resume(self):
        """The time since pause() (validation, the next epoch's batches) is not training's:
        the logged tokens/s leave it out."""
        self.t0 += time.time() - self.paused

    def state(self, accelerator) -> dict:
        """Collective (a checkpoint is): the sums averaged over processes; each process
        restores them, so their sum over processes is what an uninterrupted run would log."""
        loss, counted = self._sums(accelerator, "mean")
        return {"loss": loss, "counted": counted, "processes": accelerator.num_processes}

    def add(self, loss, tokens: int, all_tokens: int | None = None):
        """A batch of the step under way: counted once the step is known to be finite.
        `all_tokens`: the target tokens of this batch and its peers on the other processes (for
        tokens/s; one process: `tokens`)."""
        self.pending = self.pending + loss.detach().float() * tokens
        self.pending_counted += tokens
        self.tokens += tokens if all_tokens is None else all_tokens

    def commit(self):
        self.loss += self.pending
        self.counted += self.pending_counted
        self.drop()

    def drop(self):
        self.pending, self.pending_counted = 0.0, 0

    def mean_loss(self, accelerator) -> float:
        """Collective: the loss per target token over every process since the last log."""
        loss, counted = self._sums(accelerator, "sum")
        return loss / max(counted, 1.0)

    def _sums(self, accelerator, how: str) -> list[float]:
        both = torch.stack([self.loss, self.loss.new_tensor(float(self.counted))])
        return accelerator.reduce(both, how).tolist()

    def reset(self):
        self.loss.zero_()
        self.counted, self.tokens, self.t0 = 0.0, 0, time.time()


def log_train(accelerator, bar, meter: Meter, scheduler, state, epoch, run):
    """Every log_every steps: loss per target token over all processes, LR, target tokens/s."""
    loss = meter.mean_loss(accelerator)
    tok_s = meter.tokens / (time.time() - meter.t0)  # over all processes
    lr = scheduler.get_last_lr()[0]
    bar.set_postfix(step=state["step"], loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}")
    if bar.disable:  # no terminal: a line for the log (printed by the main process only)
        run["log"](
            f"epoch {epoch + 1}: step {state['step']} train_loss {loss:.3f} lr {lr:.2e} "
            f"tok_s {tok_s:.0f}"
        )
    write_metrics(
        accelerator,
        {"epoch": epoch + 1, "step": state["step"], "train_loss": loss, "lr": lr, "tok_s": tok_s},
        run,
    )
    meter.reset()


def write_metrics(accelerator, record: dict, run: dict):
    out = Path(run["cfg"].output_dir)
    if run["cfg"].log_with:
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
    if accelerator.is_main_process:
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if "valid_loss" in record:
            from plot import plot_metrics

            plot_metrics(out / "metrics.jsonl", out / "curves.png")


def check_bad_step(state: dict, cfg: TrainConfig, log):
    """A non-finite loss/gradient: the step was skipped; too many in a row ends the run."""
    state["bad_steps"] = state.get("bad_steps", 0) + 1
    state["skipped_steps"] += 1
    log(
        f"warning: non-finite gradient, step skipped ({state['bad_steps']} in a row, "
        f"{state['skipped_steps']} in total)"
    )
    if state["bad_steps"] >= cfg.max_bad_steps:
        saved = (Path(cfg.output_dir) / "last").exists()
        kept = "the last good checkpoint is kept" if saved else "no checkpoint was saved yet"
        raise UserError(
            f"{state['bad_steps']} consecutive non-finite losses at step "
            f"{state['step']}: training diverged (try a lower learning_rate or "
            f"more warmup_steps); {kept}"
        )


if __name__ == "__main__":
    cli(main)
