"""TrainConfig: every setting of a run, loaded from JSON and overridable from the command line.

The first eleven keys are the ones our users already know (`model_dim`, `hidden_dims`, ...);
their paper names are given in the comments. Unknown keys, then wrong types, then impossible
values: the first of these groups found is reported, all of its problems on one line (UserError
-> exit code 2).
"""

import argparse
import dataclasses
import errno
import json
import math
import os
import re
import signal
import sys
import textwrap
import threading
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class UserError(Exception):
    """A problem with what the user gave us (config, data, checkpoint): one line, exit 2."""


@contextmanager
def signals_unwind():
    """SIGTERM (`timeout`, a scheduler) and SIGHUP (the terminal closed) exit 128 + the signal
    through Python's unwinding while an output is being written, so that its temporary file or
    folder is removed, not left behind (their default ends the process where it stands)."""
    if threading.current_thread() is not threading.main_thread():  # signal.signal's rule
        yield
        return
    # not a signal the process was started to ignore (`nohup` ignores SIGHUP: the job goes on)
    caught = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {s: signal.signal(s, lambda signum, frame: sys.exit(128 + signum)) for s in caught}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, with a usage error in one line, exit code 2 (its own prints the usage
    first), and no abbreviated options (--resum must not pass as --resume, --check as
    --checkpoint)."""

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs):
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    @classmethod
    def of_tool(cls, doc: str, epilog_from: str) -> "ArgumentParser":
        """A tool's parser: its module docstring's first line describes it; the docstring
        from `epilog_from` on ends its --help, as written."""
        return cls(
            description=doc.splitlines()[0],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=doc[doc.index(epilog_from) :],
        )

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def cli(main):
    """Run `main()`; a UserError becomes one line on stderr and exit code 2, not a traceback."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`translate.py ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        sys.exit(141)  # 128 + SIGPIPE, what `cat` reports
    except OSError as e:
        if e.errno not in WRITE_ERRORS:  # anything else is a bug to see whole
            raise
        where = f" {e.filename}" if e.filename else ""  # None: stdout, or a stream's buffer
        print(f"error: cannot write{where}: {e.strerror}", file=sys.stderr)
        sys.exit(2)
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        first = (str(e).strip().splitlines() or [""])[0]
        if not isinstance(e, MemoryError) and not re.search(
            r"out of memory|can't allocate memory", first, re.IGNORECASE
        ):
            raise
        # where it ran out says little, and torch's traceback is dozens of lines
        print(
            f"error: out of memory ({type(e).__name__}: {first[:200]}): lower batch_size or "
            "max_tokens (translate.py, evaluate.py: --batch_size, --beam)",
            file=sys.stderr,
        )
        sys.exit(1)


# What a full disk, a quota, a read-only or failing device raise on a write (outputs are staged:
# none is left half-written)
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


PATH_KEYS = ("train_data", "valid_data", "test_data", "tokenizer", "output_dir", "init_from")


@dataclass(frozen=True)
class TrainConfig:
    # --- keys documented to users since the first release ---
    train_data: str = "wmt/wmt14"  # Hub dataset, local JSONL/dir, or text pair "path.{lang}[.gz]"
    valid_data: str | None = "wmt/wmt14"  # same forms; None = no validation
    epochs: int = 1  # passes over train_data
    batch_size: int = 128  # max sentences per batch (a cap next to max_tokens)
    # peak LR, reached after warmup_steps. Not the paper's formula d_model^-0.5·warmup^-0.5,
    # which this default (7e-4) equals only at d_model 512, warmup 4000: set it with the model.
    learning_rate: float = 7e-4
    model_dim: int = 512  # d_model
    hidden_dims: int = 2048  # d_ff
    num_heads: int = 8  # h
    num_layers: int = 6  # N (encoder and decoder each)
    dropout: float = 0.1  # P_drop
    max_seq_length: int = 256  # longer pairs (in tokens, either side) are dropped from training
    # --- data ---
    test_data: str | None = None  # used by evaluate.py defaults only, never for training
    dataset_config: str | None = "de-en"  # Hub dataset config name
    train_split: str = "train"
    valid_split: str = "validation"
    test_split: str = "test"
    # Not in the paper: training pairs whose longer side has more than this many times the tokens
    # of the shorter are dropped and counted (fairseq's WMT14 preparation: 1.5, Moses'
    # clean-corpus-n on its BPE tokens; here </s> counts too). null = keep them all.
    max_length_ratio: float | None = None
    src_lang: str = "en"
    tgt_lang: str = "de"
    # Hub name / local directory of a tokenizer, or {"train": "unigram"|"bpe", "vocab_size": N}
    # to train one on the training split (saved with every checkpoint).
    tokenizer: str | dict = "Helsinki-NLP/opus-mt-en-de"
    max_tokens: int | None = 8192  # max padded tokens per batch, source or target side
    # Subword regularisation (Kudo 2018, not in the paper): > 0 encodes every training pair with
    # a segmentation sampled from the trained Unigram tokenizer, anew each epoch, with smoothing
    # alpha (lower = more varied and longer; 1.0 = the model's own distribution). 0 = off (not
    # the uniform limit).
    # Validation, translation and evaluation always use the single best segmentation.
    subword_alpha: float = 0.0
    # Bidirectional training (BiT, Ding et al. 2021; not in the paper): the first N epochs train
    # on every pair both ways, source->target and target->source, with no language tag, then
    # the rest on source->target only. Needs a tokenizer trained here (one joint model). 0 = off.
    bidirectional_epochs: int = 0
    # --- model (beyond the documented keys) ---
    attn_dropout: float = 0.0  # on attention weights (not in the paper; fairseq has it)
    act_dropout: float = 0.0  # feed-forward's hidden activations (not in the paper; fairseq's)
    word_dropout: float = 0.0  # whole source tokens (not in the paper; Nematus's dropout_source)
    pre_norm: bool = False  # post-LN as in the paper; pre-LN if True
    # decoder layers when not num_layers (not the paper's): e.g. a deep encoder, shallow decoder
    decoder_layers: int | None = None
    # source/target/output share one matrix (paper §3.4); false: a separate source table, the
    # output layer still tied to the target embedding
    share_embeddings: bool = True
    # --- optimisation (paper §5.3, §5.4) ---
    warmup_steps: int = 4000
    # "inverse_sqrt" (paper §5.3), or "linear" / "cosine": warmup, then decay to 0 at max_steps
    # (not the paper's; for a fixed step budget. On Multi30k it tied inverse sqrt within noise).
    lr_schedule: str = "inverse_sqrt"
    # inverse_sqrt only (not the paper's): fall linearly to 0 over the last cooldown_steps of
    # max_steps, as warmup-stable-decay schedules end. 0 = no cooldown.
    cooldown_steps: int = 0
    label_smoothing: float = 0.1
    # R-Drop (Liang et al. 2021, not in the paper): > 0 runs every batch twice, with independent
    # dropout, and adds rdrop_alpha x half the symmetric KL between the two predictions, against
    # the cross-entropy of both passes (the paper's and fairseq's weighting). Twice the compute
    # and activation memory per step; train_loss then includes the KL term.
    rdrop_alpha: float = 0.0
    # Not in the paper (fairseq's --ema-decay): > 0 keeps an exponential moving average of the
    # weights, updated after every optimizer step (not skipped ones), with the decay ramped as
    # min(ema_decay, (1 + n) / (10 + n)) at the n-th; validation, `best` and every checkpoint's
    # model hold the average (the trained weights stay in the checkpoint's state/). 0 = off.
    ema_decay: float = 0.0
    # AdamW's decoupled decay, on weight matrices and embeddings only (not LayerNorm, biases);
    # not in the paper, whose Adam has none. 0 = Adam.
    weight_decay: float = 0.0
    # max global gradient norm; 0 = no clipping (not in the paper, which does not clip;
    # fairseq's --clip-norm)
    clip_norm: float = 1.0
    grad_accum_steps: int = 1
    # "no", "bf16" or "fp16" autocast (accelerate's mixed_precision; weights and AdamW stay fp32);
    # null = the launcher's (accelerate launch --mixed_precision, ACCELERATE_MIXED_PRECISION).
    # On CPU bf16 pays only with bf16 instructions (AVX512-BF16 or AMX; docs/speed.md), and
    # fp16 is refused there (accelerate would silently run fp32).
    mixed_precision: str | None = None
    max_steps: int | None = None  # stop after this many optimizer steps (None = run all epochs)
    max_minutes: float | None = None  # stop (validate, save) once training has run this long
    # Not the paper's: at 1/20, 1/5 and 1/2 of max_minutes, set max_steps to the steps that fit
    # max_minutes at the pace since the previous check (5 % off, rounded down to hundreds), and
    # cooldown_steps in proportion, if the cooldown has begun neither at the old length nor at
    # the new one. The schedule then follows the machine's speed (the step count differs from
    # run to run). Only with max_minutes and an inverse_sqrt cooldown_steps; false = only warn.
    fit_steps_to_time: bool = False
    max_bad_steps: int = 10  # stop after this many consecutive non-finite losses (steps skipped)
    # --- checkpoints and early stopping ---
    output_dir: str = "runs/wmt14"
    save_every: int | None = None  # also save every N steps (resume mid-epoch); epoch ends always
    keep_last: int = 5  # step snapshots kept in output_dir/checkpoints (for `average.py`)
    patience: int | None = None  # stop after this many validations without improvement
    best_metric: str = "bleu"  # "bleu" (valid sacreBLEU, higher is better) or "loss"
    # Fine-tuning (fairseq's --finetune-from-model): start from this checkpoint's weights (a
    # model directory, or a run's output_dir: its best, else its last), with its tokenizer and
    # model shape (model_dim, hidden_dims, num_heads, num_layers, decoder_layers, pre_norm,
    # share_embeddings: they replace this config's), and a new optimizer, schedule, step count
    # and best. Dropout and the rest are this config's. A resume continues from the run's own
    # checkpoint instead.
    init_from: str | None = None
    # --- logging ---
    seed: int = 1234
    log_every: int = 20  # steps between loss reads (each read is a host sync)
    log_with: str | None = "tensorboard"  # accelerate tracker (tensorboard, wandb, ...) or null
    valid_bleu_samples: int = 500  # validation sentences decoded for BLEU each epoch (0 = none)
    decode_batch_size: int = 200  # sentences per batch when decoding for validation BLEU

    def __post_init__(self):
        for key in PATH_KEYS:  # "~/data" in a JSON config, which no shell expands
            if isinstance(value := getattr(self, key), str) and value.startswith("~"):
                object.__setattr__(self, key, os.path.expanduser(value))
        problems = [p for f in dataclasses.fields(self) if (p := _type_error(self, f))]
        if not problems:
            problems = self._value_errors()
        if problems:
            raise UserError("config: " + "; ".join(problems))

    def _value_errors(self) -> list[str]:
        # JSON and the command line both accept NaN and Infinity, which every comparison below
        # lets through (NaN <= 0 is False): a NaN clip_norm would apply NaN updates
        bad = [
            f"{f.name} must be a finite number (got {v})"
            for f in dataclasses.fields(self)
            if isinstance(v := getattr(self, f.name), float) and not math.isfinite(v)
        ]
        if bad:
            return bad
        for key in (
            "epochs",
            "batch_size",
            "model_dim",
            "hidden_dims",
            "num_heads",
            "num_layers",
            "max_seq_length",
            "grad_accum_steps",
            "log_every",
            "decode_batch_size",
        ):
            if getattr(self, key) <= 0:
                bad.append(f"{key} must be > 0 (got {getattr(self, key)})")
        for key in (
            "max_tokens",
            "max_steps",
            "save_every",
            "patience",
            "max_minutes",
            "decoder_layers",
        ):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                bad.append(f"{key} must be > 0 or null (got {getattr(self, key)})")
        if not 0 <= self.seed < 2**32:  # what the generators take (set_seed, numpy)
            bad.append(f"seed must be in [0, 2**32) (got {self.seed})")
        text = ("train_data", "valid_data", "test_data", "train_split", "valid_split",
                "test_split", "src_lang", "tgt_lang", "tokenizer", "init_from")  # fmt: skip
        for key in text:  # "" would be the working directory, or no language at all
            if isinstance(getattr(self, key), str) and not getattr(self, key).strip():
                bad.append(f"{key} must not be empty")
        drops = ("dropout", "attn_dropout", "act_dropout", "word_dropout")
        for key in (*drops, "label_smoothing", "ema_decay"):
            if not 0 <= getattr(self, key) < 1:
                bad.append(f"{key} must be in [0, 1) (got {getattr(self, key)})")
        if self.max_length_ratio is not None and self.max_length_ratio < 1:  # NaN, inf: _type_error
            bad.append(f"max_length_ratio must be >= 1 or null (got {self.max_length_ratio})")
        if not 0 <= self.subword_alpha <= 1:
            bad.append(f"subword_alpha must be in [0, 1] (got {self.subword_alpha})")
        if not self.init_from:  # else the checkpoint's tokenizer: train.py checks it then
            bad += self.tokenizer_errors()
        if self.bidirectional_epochs < 0:
            bad.append(f"bidirectional_epochs must be >= 0 (got {self.bidirectional_epochs})")
        elif self.bidirectional_epochs and self.bidirectional_epochs >= self.epochs:
            bad.append(
                f"bidirectional_epochs ({self.bidirectional_epochs}) must be < epochs "
                f"({self.epochs}): the last epochs train source->target alone"
            )
        elif self.bidirectional_epochs and self.subword_alpha:
            bad.append("bidirectional_epochs cannot be combined with subword_alpha")
        for key in ("learning_rate",):
            if getattr(self, key) <= 0:
                bad.append(f"{key} must be > 0 (got {getattr(self, key)})")
        for key in (
            "warmup_steps",
            "weight_decay",
            "clip_norm",
            "valid_bleu_samples",
            "keep_last",
            "max_bad_steps",
            "rdrop_alpha",
        ):
            if getattr(self, key) < 0:
                bad.append(f"{key} must be >= 0 (got {getattr(self, key)})")
        if self.rdrop_alpha > 0 and not any(getattr(self, key) for key in drops):
            bad.append(
                "rdrop_alpha needs dropout, attn_dropout, act_dropout or word_dropout > 0 "
                "(two identical passes)"
            )
        if self.num_heads > 0 and self.model_dim % self.num_heads:
            bad.append(f"num_heads ({self.num_heads}) must divide model_dim ({self.model_dim})")
        if self.max_tokens is not None and self.max_tokens < self.max_seq_length:
            bad.append(
                f"max_tokens ({self.max_tokens}) must be >= max_seq_length "
                f"({self.max_seq_length}) so that every kept pair fits in a batch"
            )
        if self.lr_schedule not in ("inverse_sqrt", "linear", "cosine"):
            bad.append(
                f'lr_schedule must be "inverse_sqrt", "linear" or "cosine" '
                f"(got {self.lr_schedule!r})"
            )
        elif self.lr_schedule != "inverse_sqrt" and not self.max_steps:
            bad.append(f'lr_schedule "{self.lr_schedule}" decays to 0 at max_steps: set max_steps')
        elif self.lr_schedule != "inverse_sqrt" and self.warmup_steps >= self.max_steps:
            bad.append(
                f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps}): "
                f'lr_schedule "{self.lr_schedule}" would never reach its peak nor decay'
            )
        if self.cooldown_steps < 0:
            bad.append(f"cooldown_steps must be >= 0 (got {self.cooldown_steps})")
        elif self.cooldown_steps and self.lr_schedule != "inverse_sqrt":
            bad.append(f'cooldown_steps is for "inverse_sqrt"; "{self.lr_schedule}" decays already')
        elif self.cooldown_steps and not (self.max_steps and self.cooldown_steps < self.max_steps):
            bad.append(
                f"cooldown_steps ({self.cooldown_steps}) falls to 0 at max_steps: "
                f"set max_steps above it (got {self.max_steps}), or cooldown_steps 0 for a "
                "trial run"
            )
        if self.mixed_precision not in (None, "no", "bf16", "fp16"):
            bad.append(
                'mixed_precision must be "no", "bf16", "fp16" or null '
                f"(got {self.mixed_precision!r})"
            )
        if self.best_metric not in ("bleu", "loss"):
            bad.append(f'best_metric must be "bleu" or "loss" (got {self.best_metric!r})')
        if self.src_lang == self.tgt_lang:
            bad.append("src_lang and tgt_lang must differ")
        if isinstance(self.tokenizer, dict):
            unknown = set(self.tokenizer) - {"train", "vocab_size"}
            if unknown or self.tokenizer.get("train") not in ("unigram", "bpe"):
                bad.append(
                    'tokenizer must be a name/path or {"train": "unigram"|"bpe", "vocab_size": N}'
                )
            elif not _positive_int(size := self.tokenizer.get("vocab_size", 8000)) or size >= 2**31:
                # ids are stored as int32 (and the trainers take a C long)
                bad.append("tokenizer.vocab_size must be a positive integer below 2**31")
        return bad

    def training_errors(self) -> list[str]:
        """What only training needs, checked by train.py, not here: a checkpoint saved before
        a rule existed must still load for decoding (load_model builds its config)."""
        bad = []
        if not self.output_dir.strip():  # --output_dir "$UNSET": the working directory
            bad.append("output_dir must not be empty")
        if self.patience is not None and not self.valid_data:
            bad.append("patience counts validations: it needs valid_data")
        for key in ("keep_last", "max_bad_steps"):  # 0 would act as 1
            if getattr(self, key) < 1:
                bad.append(f"{key} must be >= 1 (got {getattr(self, key)})")
        return bad

    def tokenizer_errors(self) -> list[str]:
        """What subword_alpha and bidirectional_epochs need of the tokenizer setting."""
        bad = []
        if 0 < self.subword_alpha <= 1 and (
            not isinstance(self.tokenizer, dict) or self.tokenizer.get("train") != "unigram"
        ):
            bad.append(
                'subword_alpha needs a tokenizer trained here: {"train": "unigram", ...} '
                f"(got {self.tokenizer!r})"
            )
        if self.bidirectional_epochs > 0 and not isinstance(self.tokenizer, dict):
            bad.append(
                "bidirectional_epochs needs a joint tokenizer trained here: "
                f'{{"train": "unigram"|"bpe", ...}} (got {self.tokenizer!r})'
            )
        return bad

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _type_error(cfg: TrainConfig, f: dataclasses.Field) -> str | None:
    value = getattr(cfg, f.name)
    allowed = _allowed_types(f.type)
    if isinstance(value, bool) and bool not in allowed:  # bool is an int in Python: refuse it
        return f"{f.name} must be {_type_name(f.type)} (got {value!r})"
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        try:
            object.__setattr__(cfg, f.name, float(value))  # 1 is a fine learning rate
        except OverflowError:
            return f"{f.name} must be {_type_name(f.type)} (got an integer too large for one)"
        return None
    if not isinstance(value, allowed):
        return f"{f.name} must be {_type_name(f.type)} (got {value!r})"
    return None


def _allowed_types(tp) -> tuple[type, ...]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return tuple(a for a in typing.get_args(tp))
    return (tp,)


def _type_name(tp) -> str:
    return " or ".join("null" if a is type(None) else a.__name__ for a in _allowed_types(tp))


class _Repeated(Exception):
    pass


def _no_repeats(pairs: list[tuple]) -> dict:
    keys = [k for k, _ in pairs]
    if repeated := next((k for k in keys if keys.count(k) > 1), None):
        raise _Repeated(repeated)
    return dict(pairs)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """JSON file (optional) + overrides -> validated TrainConfig."""
    values = {}
    if path is not None:
        try:
            values = json.loads(Path(path).read_text(), object_pairs_hook=_no_repeats)
        except FileNotFoundError:
            raise UserError(f"config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 ({e.reason})") from None
        except _Repeated as e:  # json would keep the last silently
            raise UserError(f"{path}: {e.args[0]!r} is given twice") from None
        except (ValueError, RecursionError) as e:  # a 5,000-digit number, nesting 100,000 deep
            raise UserError(f"{path}: not a config ({type(e).__name__}: {str(e)[:100]})") from None
        except OSError as e:  # a directory (a checkpoint's, not its config.json), no permission
            raise UserError(f"cannot read config {path!r} ({e.strerror})") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: expected a JSON object of settings")
    values.update(overrides or {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f" in {path}" if path else ""
        raise UserError(
            f"unknown config key{'s' if len(unknown) > 1 else ''}{where}: " + ", ".join(unknown)
        )
    return TrainConfig(**values)


def _number(text: str) -> int | float | None:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


def parse_overrides(args: list[str]) -> dict:
    """['--epochs', '2', '--output_dir', 'runs/x'] -> {'epochs': 2, 'output_dir': 'runs/x'}.

    Values are parsed as JSON when they can be (numbers, true/false, null, objects), else kept
    as strings; the dataclass then checks the types.
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument: {arg}")
        key, sep, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in known:
            raise UserError(f"unknown config key: {key} (from {arg})")
        if not sep:
            if i + 1 >= len(args):
                raise UserError(f"missing value for --{key}")
            value, i = args[i + 1], i + 1
        try:
            parsed = json.loads(value, object_pairs_hook=_no_repeats)
        except json.JSONDecodeError:  # Python's numbers too (.001, 1., +1e-3), not JSON's
            parsed = _number(value)
            parsed = value if parsed is None else parsed
        except _Repeated as e:  # as in a config file: json would keep the last silently
            raise UserError(f"--{key}: {e.args[0]!r} is given twice") from None
        except (ValueError, RecursionError) as e:  # a 5,000-digit number, nesting 100,000 deep
            raise UserError(f"--{key}: {type(e).__name__}: {str(e)[:100]}") from None
        # "--output_dir 2024" is a path, not a number
        str_field = str in _allowed_types(TrainConfig.__dataclass_fields__[key].type)
        out[key] = (
            value if str_field and not isinstance(parsed, (str, dict, type(None))) else parsed
        )
        i += 1
    return out


def config_from_argv(
    argv: list[str] | None, description: str
) -> tuple[argparse.Namespace, TrainConfig]:
    """`--config FILE` and `--resume`, then any config key as `--key value`."""
    keys = " ".join(f"{f.name}={json.dumps(f.default)}" for f in dataclasses.fields(TrainConfig))
    parser = ArgumentParser(
        description=description,
        epilog=textwrap.fill(
            "Any config key can be overridden: --epochs 2 --output_dir runs/x. The keys, with "
            "their defaults (--config's file sets its own; config.py says what each does):",
            96,
        )
        + "\n"
        + textwrap.fill(
            keys, 96, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False
        ),  # a value stays whole
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", default="config.json", help="JSON config (default: config.json)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/last")
    args, rest = parser.parse_known_args(argv)
    return args, load_config(args.config, parse_overrides(rest))
