"""Multi30k training end to end: train.py next to transformers' Seq2SeqTrainer, same network.

    python bench/end_to_end.py [--minutes 5] [--json bench/end_to_end.json]

Each trains from scratch on Multi30k train, in its own process, one after the other, for
--minutes of training (then stops), and the figure is non-padding target tokens trained per
second of the whole process (start to exit: imports, loading and tokenizing, validation, saving)
and per second of the training loop (ours includes its validation every epoch; the
Trainer's does not validate). The network is the same: d_model 256, 3+3 layers, 4 heads,
d_ff 1024, GELU, shared embeddings, the joint 8k unigram vocabulary of configs/multi30k.json
(trained once by data.py and cached), dropout 0.3, label smoothing 0.1.

  ours  python train.py --config configs/multi30k.json with those sizes: token buckets of the
        recipe's max_tokens, inverse-sqrt warmup 1,000, validation loss and BLEU each epoch.
  HF    MarianMTModel built from the same ModelConfig (export.marian_config) trained by
        Seq2SeqTrainer: 64 sentences per batch in random order, AdamW 5e-4 (0.9, 0.98),
        inverse-sqrt warmup 1,000, no evaluation; the setup of ../shared/notes/peers.md, which
        measured about 790 tokens/s for it over an hour on this machine kind.

Both run with torch's default threads (all cores) and keep freed memory
(cpu_memory.keep_freed_memory, glibc's mallopt; peers.md's 790 was measured without it). About
2 x --minutes + 1 minute.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = "configs/multi30k.json"
SIZES = {"model_dim": 256, "hidden_dims": 1024, "num_heads": 4, "num_layers": 3}
REGULARISATION = {"dropout": 0.3, "attn_dropout": 0.0, "label_smoothing": 0.1}
PEERS_TOK_S = 790  # Seq2SeqTrainer over an hour on this machine kind (../shared/notes/peers.md)


def run_ours(minutes: float, out: Path) -> dict:
    overrides = {**SIZES, **REGULARISATION, "learning_rate": 0.001, "warmup_steps": 1000}
    args = [f"--{k}={v}" for k, v in overrides.items()]
    cmd = [sys.executable, "train.py", "--config", CONFIG, *args, "--max_minutes", str(minutes)]
    # the whole time at the config's schedule, as the peer trains: no fitted cooldown
    cmd += ["--output_dir", str(out), "--log_with", "null", "--keep_last", "1"]
    cmd += ["--fit_steps_to_time", "false"]
    t0 = time.time()
    done = subprocess.run(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if done.returncode:
        sys.exit(f"train.py failed:\n{done.stderr[-2000:]}")
    wall = time.time() - t0
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    return {
        "steps": state["step"],
        "tokens": state["target_tokens"],
        "train_s": state["train_seconds"],
        "wall_s": wall,
    }


def run_hf(minutes: float, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--hf_worker", str(out), "--minutes", str(minutes)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the Seq2SeqTrainer worker failed:\n{proc.stderr[-2000:]}")
    wall = time.time() - t0
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": wall}


def hf_worker(minutes: float, out: Path) -> None:
    """Seq2SeqTrainer on MarianMTModel; prints one JSON line: steps, tokens, train_s."""
    from cpu_memory import keep_freed_memory

    keep_freed_memory()  # as train.py does on CPU, so both sides run on the same allocator settings
    import datasets
    import transformers
    from transformers import (
        DataCollatorForSeq2Seq,
        MarianMTModel,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        TrainerCallback,
    )

    from config import load_config
    from data import SpecialIds, load_text, load_tokenizer
    from export import marian_config
    from train import model_config

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    cfg = load_config(ROOT / CONFIG, {**SIZES, **REGULARISATION, "output_dir": str(out)})
    train = load_text(cfg.train_data, cfg, "train")
    tok = load_tokenizer(cfg, train_texts=train, log=lambda *a: None)
    ids = SpecialIds.of(tok)
    ds = train.map(
        lambda b: tok(b["src"], text_target=b["tgt"], truncation=True, max_length=128),
        batched=True,
        remove_columns=train.column_names,
    )
    model = MarianMTModel(marian_config(model_config(cfg, tok, ids), ids))
    collate = DataCollatorForSeq2Seq(tok, model=model)
    counted = []  # each batch's non-padding target tokens, in the order they are collated

    def counting_collate(features):
        batch = collate(features)
        counted.append(int((batch["labels"] != -100).sum()))
        return batch

    class TimeLimit(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()

        def on_step_end(self, args, state, control, **kw):
            # accelerate's loader collates one batch ahead of the one it yields: count the
            # first global_step batches (one per step), not every batch collated so far
            self.train_s, self.tokens = time.time() - self.t0, sum(counted[: state.global_step])
            control.should_training_stop = self.train_s > 60 * minutes

    limit = TimeLimit()
    args = Seq2SeqTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=64,
        learning_rate=5e-4,
        adam_beta2=0.98,
        warmup_steps=1000,
        lr_scheduler_type="inverse_sqrt",
        label_smoothing_factor=REGULARISATION["label_smoothing"],
        num_train_epochs=1000,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
        seed=1,
    )
    trainer = Seq2SeqTrainer(
        model=model, args=args, train_dataset=ds, data_collator=counting_collate, callbacks=[limit]
    )
    steps = trainer.train().global_step
    print(json.dumps({"steps": steps, "tokens": limit.tokens, "train_s": limit.train_s}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="training minutes of each")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--hf_worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hf_worker:
        return hf_worker(args.minutes, Path(args.hf_worker))
    res = {}
    with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        for name, fn in (("ours", run_ours), ("hf", run_hf)):
            r = fn(args.minutes, Path(tmp) / name)
            r["tok_s_wall"] = r["tokens"] / r["wall_s"]
            r["tok_s_train"] = r["tokens"] / r["train_s"]
            res[name] = r
            print(f"{name}: {json.dumps(r)}", file=sys.stderr, flush=True)
    ours, hf = res["ours"], res["hf"]
    print(f"Multi30k train, d_model 256 3+3, dropout 0.3, {args.minutes:g} training minutes each\n")
    print(f"{'':34s}{'train.py':>12s}{'Seq2SeqTrainer':>16s}{'ratio':>8s}")
    for label, key, fmt in (
        ("optimizer steps", "steps", ",.0f"),
        ("non-padding target tokens", "tokens", ",.0f"),
        ("process wall time, s", "wall_s", ".0f"),
        ("target tok/s, whole process", "tok_s_wall", ",.0f"),
        ("target tok/s, training loop", "tok_s_train", ",.0f"),
    ):
        ratio = f"{ours[key] / hf[key]:.2f}" if key.startswith("tok_s") else ""
        print(f"{label:34s}{ours[key]:>12{fmt}}{hf[key]:>16{fmt}}{ratio:>8s}")
    x = ours["tok_s_wall"] / PEERS_TOK_S
    verdict = "MET" if x >= 2.5 else "NOT MET"
    print(f"\ntarget: train.py >= 2.5x peers.md's {PEERS_TOK_S} tok/s: {x:.2f}  {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"minutes": args.minutes, **res}, indent=2) + "\n")


if __name__ == "__main__":
    main()
