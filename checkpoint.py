"""A checkpoint directory holds everything translation needs, and nothing that runs code:

    model.safetensors   weights (tied copies stored once)
    config.json         the resolved training config (a valid --config for train.py)
    model_config.json   ModelConfig + the special token ids
    tokenizer files     whatever tokenizer.save_pretrained wrote (AutoTokenizer loads them)

Writes go to a temporary directory that is renamed into place, so an interrupted save never
leaves a half-written checkpoint under the real name.
"""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from config import TrainConfig, UserError, signals_unwind
from data import SpecialIds, _first_line, open_tokenizer
from model import ModelConfig, Transformer

WEIGHTS = "model.safetensors"


def tied_keys(cfg: ModelConfig) -> list[str]:
    """State-dict keys that alias another tensor (paper §3.4 weight sharing)."""
    return ["out_proj.weight"] + (["tgt_embed.tokens.weight"] if cfg.share_embeddings else [])


def write_error(e: BaseException) -> str | None:
    """What failed, if `e` is a failure to write a file, else None. A full disk is an OSError
    from Python, but a SafetensorError from safetensors ("I/O error: No space left on
    device") and a RuntimeError from torch.save's zip writer ("[enforce fail at
    inline_container.cc:...] unexpected pos ..."), which says no more than that."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    if isinstance(e, SafetensorError):
        return _first_line(e)
    if isinstance(e, RuntimeError) and "inline_container" in str(e):
        return f"torch.save could not write a file, a full disk? ({_first_line(e)})"
    return None


def _remove(path: Path) -> None:
    """Remove a directory tree, or a link (rmtree leaves a link where it is, silently)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(tmp: Path, final: Path, old: Path | None = None) -> None:
    """Move a finished directory into place; the old one is removed only after the rename (as
    `old`, by default `final`.old)."""
    old = old or final.with_name(final.name + ".old")
    _remove(old)
    if final.exists() or final.is_symlink():
        final.rename(old)
    tmp.rename(final)
    _remove(old)


def as_umask_allows(path: Path) -> None:
    """Give `path` the permissions a new file or directory gets here (the umask's), and a
    directory's files too: mkdtemp makes a directory only its owner can enter and safetensors
    writes 0600 files, where the tools' other outputs are readable by those the folder is
    shared with."""
    umask = os.umask(0)
    os.umask(umask)
    if path.is_dir():
        path.chmod(0o777 & ~umask)
        files = [f for f in path.iterdir() if f.is_file() and not f.is_symlink()]
    else:
        files = [path]
    for f in files:
        f.chmod(0o666 & ~umask)


def fresh_tmp(final: str | Path) -> Path:
    """An empty sibling directory to write into before `replace_dir`."""
    tmp = Path(final).with_name(Path(final).name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


@contextmanager
def staged_dir(final: str | Path, private: bool = False):
    """Yield an empty sibling directory to write into; on success it replaces `final`, on any
    failure it is removed, and `final` stays as it was. `private`: a new hidden name of its own
    for it (and for `final` on its way out), not `final`.tmp and `final`.old, which in a run's
    checkpoints/ are this code's leftovers to clear, but beside a user's --out may be theirs."""
    final = Path(final)
    if private:
        if not final.parent.exists():  # (a file there: mkdtemp's "Not a directory")
            final.parent.mkdir(parents=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    else:
        tmp = fresh_tmp(final)
    try:
        yield tmp
        if private:
            as_umask_allows(tmp)
        replace_dir(tmp, final, tmp.with_suffix(".old") if private else None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def staged_output(final: str | Path):
    """staged_dir for the command-line tools (average.py, export.py): a failure to write (no
    such folder, no permission, a full disk) is a one-line UserError, not a traceback, and
    SIGTERM or SIGHUP removes what was staged."""
    try:
        with signals_unwind(), staged_dir(final, private=True) as tmp:
            yield tmp
    except (OSError, SafetensorError, RuntimeError) as e:
        if (problem := write_error(e)) is None:
            raise
        raise UserError(f"cannot write {final} ({problem})") from None


def check_replaceable(
    out: str | Path, inputs: list[Path], flag: str = "--out", kind: str = "ours"
) -> None:
    """UserError unless `out` can be replaced whole: not an input nor a folder holding one, not a
    training run's output_dir or its checkpoints/ (replacing it would delete them) nor one of
    the checkpoints train.py writes and reads back (best/, last, a step), and if it exists,
    empty or a model directory of the `kind` the tool writes (model_kind: an earlier output,
    rewritten; an export never replaces one of our checkpoints, nor an average an export)."""
    if Path(out).name in ("", ".", ".."):
        raise UserError(f"{flag} {out}: give the new directory's name")
    given, out = Path(out).absolute(), Path(out).resolve()  # `last` is a link to a step
    for d in inputs:
        d = Path(d).resolve()
        if out == d or out in d.parents:
            raise UserError(f"{flag} {out} would replace {d}, which it is made from")
    for path in (given, out):  # what train.py writes and reads back: its best/ and last
        if (path.parent.name == "checkpoints" and path.name.startswith("step-")) or (
            path.name in ("best", "last") and (path.parent / "checkpoints").is_dir()
        ):
            raise UserError(f"{flag} {path} is a training run's checkpoint; name a new one")
    if (out / "checkpoints").is_dir() or step_dirs(out):
        raise UserError(f"{flag} {out} holds a training run's checkpoints; name a new one")
    if out.exists() and not is_model_dir(out):
        raise UserError(
            f"{flag} {out} exists and is not a model directory (replacing it would delete what "
            "it holds); name a new one"
        )
    if out.exists() and (held := model_kind(out)) not in (None, kind):
        raise UserError(
            f"{flag} {out} holds {MODEL_KINDS[held]}, which this would replace with "
            f"{MODEL_KINDS[kind]}; name a new one"
        )


MODEL_KINDS = {  # model_kind -> what it is, in an error message
    "ours": "a checkpoint of this repository",
    "transformers": "a transformers model",
    "ctranslate2": "a CTranslate2 model",
}


def model_kind(path: Path) -> str | None:
    """Which tool wrote a model directory (None: empty, or none of them)."""
    if (path / "model_config.json").exists():
        return "ours"
    if (path / "model.bin").exists():  # beside CTranslate2's own config.json
        return "ctranslate2"
    if (path / "config.json").exists():
        return "transformers"
    return None


def is_model_dir(path: Path) -> bool:
    """Empty, or one model as our tools write it: a weights file, no folders but hidden ones
    (a cache that Hugging Face's upload or download tools leave); a folder that holds other
    models or anything else is not replaced whole."""
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    model_files = ("model.safetensors", "model.bin")  # ours and Hugging Face's; CTranslate2's
    folders = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    return not entries or (any(e.name in model_files for e in entries) and not folders)


def save_model_dir(
    path: str | Path,
    state_dict: dict,
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    ids: SpecialIds,
    tokenizer,
    extra_files: dict | None = None,
) -> None:
    """Write a self-contained model directory atomically (see module docstring)."""
    with staged_dir(path) as tmp:
        write_model_dir(tmp, state_dict, cfg, model_cfg, ids, tokenizer, extra_files)


def write_model_dir(
    tmp: Path,
    state_dict: dict,
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    ids: SpecialIds,
    tokenizer,
    extra_files: dict | None = None,
) -> None:
    skip = set(tied_keys(model_cfg))
    weights = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k not in skip}
    save_file(weights, tmp / WEIGHTS, metadata={"format": "pt"})
    as_umask_allows(tmp / WEIGHTS)
    cfg.save(tmp / "config.json")
    meta = {**model_cfg.to_dict(), "special_ids": vars(ids)}
    (tmp / "model_config.json").write_text(json.dumps(meta, indent=2) + "\n")
    tokenizer.save_pretrained(tmp)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)


def copy_model_dir(src: Path, final: Path, extra: dict[str, str] | None = None) -> None:
    """Copy a checkpoint's model files (not its optimizer state) to `final`, atomically, with
    `extra` files (name: text)."""
    with staged_dir(final) as tmp:
        for f in src.iterdir():
            if f.is_file() and f.name != "trainer_state.json":
                shutil.copy2(f, tmp / f.name)
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)


def step_dirs(checkpoints: Path) -> list[Path]:
    """Complete step-N checkpoint directories, oldest first."""
    dirs = [d for d in checkpoints.glob("step-*") if d.name.split("-")[1].isdigit()]
    return sorted(dirs, key=lambda d: int(d.name.split("-")[1]))


def latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint under out/checkpoints that can be resumed from."""
    for d in reversed(step_dirs(out / "checkpoints")):
        if (d / "trainer_state.json").exists() and (d / "state").is_dir():
            return d
    return None


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    """Delete all but the newest `keep` step directories, each renamed first (a kill while
    deleting leaves no half checkpoint under a step's name), and whatever a kill left: staged
    (.tmp), replaced (.old) and half-deleted (.del) directories, each a checkpoint's size.
    Called once every process has finished writing, so no .tmp is still being written."""
    for d in step_dirs(checkpoints)[: -max(keep, 1)]:
        try:
            d.rename(d.with_name(d.name + ".del"))  # deleted with the leftovers below
        except OSError:  # a .del that would not go away: delete in place, as before
            shutil.rmtree(d, ignore_errors=True)
    for left in checkpoints.glob("step-*.*"):
        if left.suffix in (".tmp", ".old", ".del"):
            shutil.rmtree(left, ignore_errors=True)


def resolve(path: str | Path) -> Path:
    """A model directory, or a run's output_dir (then its best checkpoint, else its last)."""
    path = Path(path)
    for candidate in (path, path / "best", path / "last"):
        if (candidate / WEIGHTS).exists():
            return candidate
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    raise UserError(f"{path}: no {WEIGHTS} here or in {path}/best or {path}/last")


def load_model(
    path: str | Path, device="cpu"
) -> tuple[Transformer, object, SpecialIds, TrainConfig]:
    """Checkpoint directory -> (model in eval mode, tokenizer, special ids, training config)."""
    path = resolve(path)
    if not (path / "model_config.json").exists():  # model.safetensors alone: not ours
        raise UserError(
            f"{path}: not a checkpoint of this repository (no model_config.json; an export.py "
            "directory loads with transformers)"
        )
    try:
        meta = json.loads((path / "model_config.json").read_text())
        ids = SpecialIds(**meta.pop("special_ids"))
        model_cfg = ModelConfig(**meta)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as e:
        # ArithmeticError: n_heads 0 (d_model % n_heads); AttributeError: not a JSON object
        raise UserError(f"{path / 'model_config.json'}: unreadable ({e})") from None
    try:
        cfg = TrainConfig(**json.loads((path / "config.json").read_text()))
    except (OSError, ValueError, TypeError, UserError) as e:
        raise UserError(f"{path / 'config.json'}: unreadable ({e})") from None
    vocab = min(model_cfg.src_vocab_size, model_cfg.tgt_vocab_size)
    bad = {k: v for k, v in vars(ids).items() if not (isinstance(v, int) and 0 <= v < vocab)}
    if bad or model_cfg.pad_id != ids.pad:
        raise UserError(
            f"{path / 'model_config.json'}: special_ids {vars(ids)} and pad_id "
            f"{model_cfg.pad_id} do not fit a vocabulary of {vocab}"
        )
    try:
        weights = load_file(path / WEIGHTS)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path / WEIGHTS}: corrupt or truncated weights ({e})") from None
    model = Transformer(model_cfg)
    expected = set(model.state_dict()) - set(tied_keys(model_cfg))
    if set(weights) != expected:
        diff = sorted(set(weights) ^ expected)[:3]
        raise UserError(f"{path / WEIGHTS}: weights do not match model_config.json (e.g. {diff})")
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        raise UserError(
            f"{path / WEIGHTS}: weights do not match model_config.json "
            f"({str(e).splitlines()[-1].strip()})"
        ) from None
    tokenizer = checkpoint_tokenizer(path)
    if len(tokenizer) > vocab:  # its ids would index past the embedding table
        raise UserError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens, the model's vocabulary "
            f"{vocab}: they do not belong together"
        )
    return model.to(device).eval(), tokenizer, ids, cfg


def checkpoint_tokenizer(path: Path):
    """The tokenizer saved in a checkpoint directory; a clear error if it is missing."""
    try:
        return open_tokenizer(path)
    except Exception as e:
        raise UserError(
            f"{path}: cannot load the tokenizer saved with the checkpoint ({_first_line(e)}); "
            f"the directory needs the files tokenizer.save_pretrained wrote (tokenizer.json, "
            f"tokenizer_config.json, ...)"
        ) from None
