"""Data: load parallel text (Hub or local), tokenize once into a disk cache, filter, batch by
tokens, shard across processes, collate. `python data.py audit|prepare --config C` from a shell.

Sources (`train_data`, `valid_data`, `test_data`), told apart by the path:
  - a Hub dataset, "owner/name" or a known old name ("wmt14" -> "wmt/wmt14"), with config
    `dataset_config` and split `*_split`; a `translation` column or one column per language
  - a directory: written by `save_to_disk` (Dataset or DatasetDict), or a downloaded Hub dataset
    repository (README.md + data files), loaded like the Hub one
  - a Parquet file; a CSV or TSV file with a header naming the language columns; a JSON Lines
    file with {"translation": {"en": ..., "de": ...}} or {"en": ..., "de": ...} per line
    (.jsonl, .json, .csv, .tsv may be gzipped)
  - aligned plain-text files, one sentence per line, plain or gzipped, as one path with a {lang}
    placeholder: "../shared/data/multi30k/train.{lang}.gz"
Every source becomes a `datasets.Dataset` with string columns "src" and "tgt".

Caching: everything is cached in datasets' cache (HF_DATASETS_CACHE, by default
~/.cache/huggingface/datasets). Local files (and a local dataset repository's) are converted
once to Arrow, keyed by their paths, sizes and modification times; token ids are cached by the
text's fingerprint and the tokenizer's files (not max_seq_length or max_length_ratio: filtering
happens after the cache); a tokenizer trained on a cached training split is cached too, so a
second run of the same config tokenizes nothing. A save_to_disk directory is only read (it may
be read-only): its token ids go to the cache too.
"""

import copy
import csv
import gzip
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from accelerate.utils import patch_environment
from datasets.data_files import FILES_TO_IGNORE, DataFilesDict, get_data_patterns
from datasets.fingerprint import Hasher

from config import ArgumentParser, TrainConfig, UserError, cli, load_config, parse_overrides
from model import shift_right

OFFLINE_HINT = (
    "To work offline, run the quick start (bash quickstart.sh) or point train_data/valid_data "
    "(and test_data) at local files (e.g. --train_data '../shared/data/multi30k/train.{lang}.gz'; "
    "evaluate.py: --test_data, or --source and --reference) and use a local or trained tokenizer "
    '(--tokenizer \'{"train": "unigram", "vocab_size": 8000}\').'
)
CACHE_VERSION = "tmt-1"  # part of every cache key: change it when a cached format changes
TEXT_FEATURES = datasets.Features(
    {"src": datasets.Value("string"), "tgt": datasets.Value("string")}
)
IDS_FEATURES = datasets.Features(
    {
        "src_ids": datasets.List(datasets.Value("int32")),
        "tgt_ids": datasets.List(datasets.Value("int32")),
    }
)
# The WMT datasets moved from the Hub's root namespace to the "wmt" organisation.
HUB_ALIASES = {
    name: f"wmt/{name}"
    for name in ("wmt14", "wmt15", "wmt16", "wmt17", "wmt18", "wmt19", "wmt_t2t")
}
FORMATS = (
    "expected a Hub dataset name, a directory (save_to_disk or a dataset repository), a .parquet, "
    ".csv, .tsv, .jsonl or .json file (.gz ok), or aligned text files given as one path with a "
    "{lang} placeholder (e.g. data/train.{lang}.gz)"
)


# ---------------------------------------------------------------------------------------------
# Reading files: UTF-8, line by line, errors that name the file and the line


def _open_bytes(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def decode_lines(raw_lines, name: str):
    """(line number, text) for each line (bytes) of `name`, a file or stdin: UTF-8.

    Only "\\n" ends a line (a "\\r" before it is dropped): U+2028 and friends stay inside the
    line, so aligned files stay aligned. A UTF-8 byte-order mark is dropped.
    """
    for n, raw in enumerate(raw_lines, 1):
        try:
            line = raw.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"{name}, line {n}: not UTF-8 ({e.reason} at byte {e.start + 1} of the line)"
            ) from None
        yield n, line.lstrip("\ufeff") if n == 1 else line


def iter_lines(path: str):
    """(line number, text) for every line of a UTF-8 file, plain or gzipped (decode_lines)."""
    if not os.path.exists(path):
        raise UserError(f"data file not found: {path}")
    try:
        with _open_bytes(path) as f:
            yield from decode_lines(f, path)
    except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .gz
        raise UserError(f"{path}: cannot read ({e})") from None


def read_lines(path: str) -> list[str]:
    """All lines of a text file (evaluate.py's --source, --reference and --compare; stdin "-"
    is translate.read_lines'). An empty file gives []."""
    return [line for _, line in iter_lines(path)]


def read_aligned(src: str, ref: str) -> tuple[list[str], list[str]]:
    """The lines of two files that must pair up line by line (sources and references)."""
    a, b = read_lines(src), read_lines(ref)
    check_aligned(a, b, src, ref)
    return a, b


def check_aligned(a: list[str], b: list[str], src: str, ref: str) -> None:
    """UserError unless the lines `a` of `src` and `b` of `ref` ("-": stdin) pair up."""
    if len(a) != len(b):
        src, ref = ("stdin" if f == "-" else f for f in (src, ref))
        raise UserError(f"misaligned files: {src} has {len(a)} lines, {ref} has {len(b)}")


def _require_content(path: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"data file not found: {path}")
    try:
        with _open_bytes(path) as f:
            empty = not f.read(1)
    except (OSError, EOFError, zlib.error) as e:  # "x.gz" that is not gzip
        raise UserError(f"{path}: cannot read ({e})") from None
    if empty:
        raise UserError(f"{path}: empty file")


# ---------------------------------------------------------------------------------------------
# Loading text


def load_text(spec: str, cfg: TrainConfig, split: str) -> datasets.Dataset:
    """Any supported source -> datasets.Dataset with string columns "src" and "tgt"."""
    src, tgt = cfg.src_lang, cfg.tgt_lang
    # our readers (aligned files, JSONL, CSV) give "src"/"tgt" by language; data that is not
    # ours goes through _as_pairs, which wants its languages named
    if "{lang}" in spec:
        ds = _text_pairs(spec, src, tgt)
    elif os.path.isdir(spec):
        ds = _as_pairs(_directory(spec, cfg, split), spec, src, tgt)
    elif os.path.isfile(spec):
        ds = _file(spec, src, tgt)
    elif _looks_like_path(spec):
        raise UserError(f"data {'file' if _suffix(spec) else 'path'} not found: {spec}")
    else:
        ds = _as_pairs(_load_hub(spec, cfg.dataset_config, split), spec, src, tgt)
    ds = _nulls_as_empty(ds)
    if len(ds) == 0:
        raise UserError(f"{spec}: no sentence pairs")
    return ds


def has_splits(spec: str) -> bool:
    """False for data that is read whole whatever split is asked for: a file, aligned files, a
    save_to_disk of one Dataset."""
    if "{lang}" in spec or os.path.isfile(spec):
        return False
    p = Path(spec)
    return not ((p / "state.json").exists() and not (p / "dataset_dict.json").exists())


def takes_config(spec: str) -> bool:
    """Whether dataset_config applies: a Hub dataset or a local dataset repository, not a file,
    aligned files or a save_to_disk directory."""
    if "{lang}" in spec or os.path.isfile(spec):
        return False
    p = Path(spec)
    return not ((p / "state.json").exists() or (p / "dataset_dict.json").exists())


def _looks_like_path(spec: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else is meant as a local path.
    return (
        spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", spec)
        or _suffix(spec) in (".gz", ".txt", ".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow")
    )


def _suffix(path: str) -> str:
    """The format suffix: ".jsonl" for "x.jsonl.gz", ".gz" for "x.en.gz", "" for none."""
    name = Path(path).name
    if name.endswith(".gz") and Path(name[:-3]).suffix in (".jsonl", ".json", ".csv", ".tsv"):
        name = name[:-3]
    return Path(name).suffix.lower()


def _file(path: str, src: str, tgt: str) -> datasets.Dataset:
    kind = _suffix(path)
    if kind in (".jsonl", ".json"):
        return _generate(_jsonl_pairs, [path], [src, tgt])
    if kind in (".csv", ".tsv"):
        return _generate(_delimited_pairs, [path], [src, tgt])
    if kind == ".parquet":
        cache = _stamped_cache("parquet_files", path, [Path(path)])
        try:
            if pq.ParquetFile(path).metadata.num_rows == 0:  # datasets' error would not say so
                raise UserError(f"{path}: no sentence pairs")
            ds = datasets.Dataset.from_parquet(path, cache_dir=str(cache))
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
        return _as_pairs(ds, path, src, tgt)
    if kind in ("", ".txt", ".gz", f".{src}", f".{tgt}"):
        example = re.sub(rf"\.({src}|{tgt})(?=(\.gz)?$)", ".{lang}", path)
        example = example if "{lang}" in example else "data/train.{lang}.gz"
        raise UserError(
            f"{path}: a plain-text file holds one language; give the source and target files "
            f"as one path with a {{lang}} placeholder, e.g. {example}"
        )
    raise UserError(f"{path}: cannot tell the data format from the name ({FORMATS})")


def _file_stamp(path) -> tuple:
    """What changes when a file's contents may have: its size, mtime and ctime in ns. datasets
    keys local files by their mtime alone, and a file rewritten with its time kept (cp -p,
    rsync -t, touch -r) gave the old rows; the ctime no tool can set back (a chmod or a copy
    changes it too: the cache is made again)."""
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _stamped_cache(kind: str, path: str, files: list[Path]) -> Path:
    """A cache_dir for datasets keyed by `files`' stamps (_file_stamp). One per `path`: the
    caches of its older versions are removed."""
    cache = Path(datasets.config.HF_DATASETS_CACHE) / kind / Hasher.hash(os.path.realpath(path))
    stamp = Hasher.hash([CACHE_VERSION, [_file_stamp(f) for f in sorted(files)]])
    for old in cache.glob("*") if cache.exists() else []:
        if old.name != stamp:
            shutil.rmtree(old, ignore_errors=True)
    return cache / stamp


def _directory(path: str, cfg: TrainConfig, split: str) -> datasets.Dataset:
    p = Path(path)
    if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        try:
            ds = datasets.load_from_disk(path)
        except Exception as e:  # a file missing or cut short: not ours to trace back
            raise UserError(f"{path}: cannot load the saved dataset ({_first_line(e)})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise UserError(
                    f"{path}: no split '{split}' (it has {', '.join(ds)}); set "
                    f"train_split/valid_split/test_split (evaluate.py: --split)"
                )
            ds = ds[split]
        return ds
    data_files = (".parquet", ".arrow", ".jsonl", ".json", ".csv", ".tsv", ".txt")
    everything = list(p.rglob("*"))
    files = [f for f in everything if f.is_file() and not any(
        part.startswith(".") for part in f.relative_to(p).parts)]  # fmt: skip
    delimited = sorted(f for f in files if _suffix(f.name) in (".csv", ".tsv"))
    others = [  # datasets' own metadata files (dataset_infos.json, ...) are not data
        f
        for f in files
        if _suffix(f.name) in (".parquet", ".arrow", ".jsonl", ".json")
        and f.name not in FILES_TO_IGNORE
    ]
    # datasets would parse them with pandas: quotes and a stray \r merge or shift lines
    refused = UserError(
        f"{path}: CSV/TSV files in a dataset directory are not read (pandas would merge or "
        f"shift lines); give the file itself, e.g. {delimited[0] if delimited else '*.tsv'}"
    )
    if delimited and not others:
        raise refused  # found before reading
    if (p / "README.md").exists() or any(f.suffix in data_files for f in everything):
        _check_repository_files(path, others, readme=(p / "README.md").exists())
        cache = _stamped_cache("local_repositories", path, files)  # a dataset repository
        ds = _load_dataset(path, cfg.dataset_config, split, hub=False, cache_dir=cache)
        if ds.info.builder_name == "csv":  # the config or the files' majority chose them
            raise refused
        return ds
    raise UserError(
        f"{path}: not a dataset directory (expected dataset_dict.json or state.json "
        f"written by save_to_disk, or a dataset repository with README.md or data "
        f"files)"
    )


def _check_repository_files(path: str, files: list[Path], readme: bool) -> None:
    """UserError for data files datasets would not read as data: Git LFS pointers (a clone
    without git-lfs), and, in a folder without a README.md to say which file is which split,
    files that datasets' split names leave out of every split (with a train-*.parquet beside
    them, a europarl.parquet is silently not read)."""
    for f in files:
        with open(f, "rb") as fh:
            if fh.read(24) == b"version https://git-lfs.":
                raise UserError(f"{f}: a Git LFS pointer, not the data: run git lfs pull in {path}")
    if readme and "configs:" in _front_matter(Path(path) / "README.md"):
        return  # its configs say which files are which split and config
    try:
        splits = DataFilesDict.from_patterns(get_data_patterns(path), path)
    except Exception:  # datasets says what is wrong when it loads the folder
        return
    read = {os.path.realpath(f) for names in splits.values() for f in names}
    left = sorted(str(f.relative_to(path)) for f in files if os.path.realpath(f) not in read)
    if left:
        raise UserError(
            f"{path}: datasets takes the splits from the file names "
            f"({', '.join(map(str, splits))}), "
            f"which leaves out {len(left)} data file(s): {', '.join(left[:3])}"
            f"{', ...' if len(left) > 3 else ''}; name each file by its split (train-*, "
            "validation-*, test-*) or give a folder of one split's files"
        )


def _front_matter(readme: Path) -> str:
    """A dataset card's YAML header (between its first two --- lines), or ""."""
    text = readme.read_text(encoding="utf-8", errors="replace")
    return text.split("---", 2)[1] if text.startswith("---") and text.count("---") >= 2 else ""


def _text_pairs(spec: str, src: str, tgt: str) -> datasets.Dataset:
    if _suffix(spec.replace("{lang}", "x")) in (".jsonl", ".json", ".csv", ".tsv", ".parquet"):
        raise UserError(
            f"{spec}: a {{lang}} placeholder is for aligned plain-text files; this "
            f"format holds both languages in one file: drop the placeholder"
        )
    return _generate(_aligned_pairs, [spec.replace("{lang}", src), spec.replace("{lang}", tgt)])


def _generate(reader, files: list[str], langs: list[str] = ()) -> datasets.Dataset:
    """Run one of the readers below into an on-disk Arrow dataset in datasets' cache, keyed by
    the files' stamps (_file_stamp): a second run reads the cache, not the files."""
    for path in files:
        _require_content(path)
    stamp = [_file_stamp(p) for p in files]
    key = Hasher.hash([CACHE_VERSION, reader.__name__, stamp, list(langs)])
    # one string argument: datasets would treat a list in gen_kwargs as shards
    args = "\t".join([*files, *langs])
    try:
        return datasets.Dataset.from_generator(
            reader, features=TEXT_FEATURES, fingerprint=key, gen_kwargs={"args": args}
        )
    except ValueError as e:  # datasets refuses a split with no rows (a header, blank lines)
        if "corresponds to no data" not in str(e):
            raise
        raise UserError(f"{files[0]}: no sentence pairs") from None
    except datasets.exceptions.DatasetGenerationError as e:
        cause = e
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__
            if isinstance(cause, UserError):
                raise UserError(str(cause)) from None
        raise UserError(f"{files[0]}: {_first_line(cause)}") from None


def _aligned_pairs(args: str):
    src_path, tgt_path = args.split("\t")
    src_lines, tgt_lines = iter_lines(src_path), iter_lines(tgt_path)
    n = 0
    while True:
        s, t = next(src_lines, None), next(tgt_lines, None)
        if s is None or t is None:
            break
        n += 1
        yield {"src": s[1], "tgt": t[1]}
    if s is not None or t is not None:  # one file ended first: count the rest of the other
        n_src = n + (s is not None) + sum(1 for _ in src_lines)
        n_tgt = n + (t is not None) + sum(1 for _ in tgt_lines)
        raise UserError(f"misaligned files: {src_path} has {n_src} lines, {tgt_path} has {n_tgt}")


def _jsonl_pairs(args: str):
    path, src, tgt = args.split("\t")
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line, strict=False)  # a raw tab in a sentence: let be
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}, line {n}: not JSON ({e.msg}); expected JSON Lines, one "
                f'{{"translation": {{"{src}": ..., "{tgt}": ...}}}} per line'
            ) from None
        pair = record.get("translation", record) if isinstance(record, dict) else None
        if not isinstance(pair, dict):
            raise UserError(
                f'{path}, line {n}: expected an object like {{"translation": '
                f'{{"{src}": ..., "{tgt}": ...}}}}'
            )
        for lang in (src, tgt):
            if lang not in pair:
                raise UserError(
                    f"{path}, line {n}: no '{lang}' text (keys: {', '.join(pair) or 'none'})"
                )
            if not isinstance(pair[lang], str | None):
                raise UserError(
                    f"{path}, line {n}: '{lang}' is {type(pair[lang]).__name__}, not text"
                )
            try:  # a lone surrogate escape ("\ud800") is valid JSON but no UTF-8 text
                (pair[lang] or "").encode("utf-8")
            except UnicodeEncodeError as e:
                raise UserError(
                    f"{path}, line {n}: '{lang}' holds {pair[lang][e.start]!r}, half of a "
                    "UTF-16 surrogate pair, not a character"
                ) from None
        # a null is a missing sentence: _nulls_as_empty makes it an empty side, as in Parquet
        yield {"src": pair[src], "tgt": pair[tgt]}


def _delimited_pairs(args: str):
    path, src, tgt = args.split("\t")
    lines = iter_lines(path)
    if _suffix(path) == ".tsv":  # fields are never quoted (sentences contain quotes and \r)
        rows = ((n, line.split("\t") if line else []) for n, line in lines)
    else:  # CSV: standard quoting, where a quoted field may span lines
        rows = _csv_rows(path, lines)
    n, header = next(rows, (1, []))
    if header.count(src) != 1 or header.count(tgt) != 1:
        raise UserError(
            f"{path}: expected a header line naming the columns '{src}' and '{tgt}' once each, "
            f"found {header}"
        )
    i, j = header.index(src), header.index(tgt)
    for n, row in rows:
        if not row:  # a blank line
            continue
        if len(row) != len(header):
            raise UserError(f"{path}, line {n}: {len(row)} fields, the header has {len(header)}")
        yield {"src": row[i], "tgt": row[j]}


def _csv_rows(path: str, lines):
    """(the line a record starts on, its fields) for a CSV file read by `iter_lines`."""
    csv.field_size_limit(sys.maxsize)  # a long line is filtered by max_seq_length, with a count
    reader = csv.reader(
        (line + "\n" for _, line in lines),  # a quoted field may span lines: keep their breaks
        strict=True,  # a stray quote is an error, not lines merged into one field
    )
    start = 1
    try:
        for row in reader:
            yield start, row
            start = reader.line_num + 1
    except csv.Error as e:  # named by the line its record starts on: where a quote opened
        raise UserError(f"{path}, line {start}: {e}") from None


def _as_pairs(ds: datasets.Dataset, spec: str, src: str, tgt: str) -> datasets.Dataset:
    """A `translation` column or one column per language -> "src", "tgt" (no copy)."""
    if "translation" in ds.column_names:
        kind = ds.features["translation"]
        ds = ds.flatten()
        columns = [f"translation.{src}", f"translation.{tgt}"]
        if not all(c in ds.column_names for c in columns) and type(kind).__name__ == "Json":
            # datasets types rows of other keys or values as one Json column, not a struct
            raise UserError(
                f"{spec}: its 'translation' column is not text under '{src}' and '{tgt}' in "
                "every row (datasets read it as Json): a row lacks one, holds "
                "other keys or a non-text value; give the .jsonl file itself, read line by line "
                "(other keys are let be, a bad line named)"
            )
    else:
        columns = [src, tgt]
    if not all(c in ds.column_names for c in columns):
        raise UserError(
            f"{spec}: expected a 'translation' column with '{src}' and '{tgt}', or "
            f"columns '{src}' and '{tgt}'; found {ds.column_names}"
        )
    ds = ds.select_columns(columns).rename_columns(dict(zip(columns, ["src", "tgt"], strict=True)))
    text = ("string", "large_string")
    if any(getattr(ds.features[c], "dtype", None) not in text for c in ("src", "tgt")):
        raise UserError(
            f"{spec}: the '{src}'/'{tgt}' columns must hold text, found {dict(ds.features)}"
        )
    return ds  # load_text then reads its nulls as empty sides


def _nulls_as_empty(ds: datasets.Dataset) -> datasets.Dataset:
    """A missing sentence (null in Parquet/Arrow) reads as an empty side: training drops its
    pair with a count, as any empty one; scoring and validation BLEU see ""."""
    if not any(ds.data.column(c).null_count for c in ("src", "tgt")):
        return ds  # no copy
    key = Hasher.hash([CACHE_VERSION, "nulls-as-empty", ds._fingerprint])
    return ds.map(
        lambda b: {c: [s or "" for s in b[c]] for c in ("src", "tgt")},
        batched=True,
        desc="nulls as empty sentences",
        new_fingerprint=key,
        **_in_the_cache(ds, key),
    )


def _quiet_hub():
    """The Hub client logs each retry; our one-line error says it all."""
    import huggingface_hub

    huggingface_hub.utils.logging.set_verbosity_error()


def _load_hub(name: str, config: str | None, split: str) -> datasets.Dataset:
    return _load_dataset(name, config, split, hub=True)


@contextmanager
def _datasets_log():
    """The messages datasets logs, kept from stderr: for a file it cannot read it logs the
    file's name and row, then raises an error that names neither."""
    logged, handler = [], logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())
    lib = logging.getLogger("datasets")
    kept = lib.handlers[:], lib.propagate
    lib.handlers, lib.propagate = [handler], False
    try:
        yield logged
    finally:
        lib.handlers, lib.propagate = kept


def _load_dataset(
    name: str, config: str | None, split: str, hub: bool, cache_dir: Path | None = None
) -> datasets.Dataset:
    """datasets.load_dataset for a Hub name or a local dataset repository."""
    _quiet_hub()
    repo = HUB_ALIASES.get(name, name) if hub else name
    shown = f"'{name}'" + (f" (= '{repo}')" if repo != name else "")
    logged = []
    try:
        with _datasets_log() as logged:
            return datasets.load_dataset(repo, config, split=split, cache_dir=cache_dir)
    except ValueError as e:  # found, but no such config or split
        if re.match(r"(BuilderConfig .* not found|Unknown split|Config name is missing)", str(e)):
            # "Config name is missing" lists the configs on its second line
            why = _first_line(e) + "".join(f" {x.strip()}" for x in str(e).splitlines()[1:2])
            raise UserError(
                f"dataset {shown}, config {config!r}, split {split!r}: {why} (train.py: "
                "dataset_config, *_split; evaluate.py: --hub_config, --split)"
            ) from None
        if not hub:
            why = logged[-1].splitlines()[0][:300] if logged else _first_line(e)
            raise UserError(f"{name}: {why}") from None
        err = e
    except Exception as e:  # network, offline mode, missing repo: all end the same way for users
        if not hub:
            why = logged[-1].splitlines()[0][:300] if logged else _first_line(e)
            raise UserError(f"{name}: cannot load the dataset repository: {why}") from None
        err = e
    # "data/wmt14" where data/ exists: meant as a local folder, in another working directory
    meant = "/" in name and os.path.isdir(name.split("/")[0])
    local = f" (nor is there a local directory {name} here)" if meant else ""
    raise UserError(
        f"cannot load dataset {shown} ({config}, {split}) from the Hugging Face Hub{local}: "
        f"{_first_line(err)}. {OFFLINE_HINT}"
    ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300].rstrip(".")


# ---------------------------------------------------------------------------------------------
# Tokenizer


def load_tokenizer(
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    train_texts=None,
    reuse: bool = False,
    log=print,
    saved_in: str | Path | None = None,
):
    """The tokenizer named in the config, or one trained on the training split, or the one saved
    in the checkpoint directory `saved_in` (init_from: the model's ids are its ids).

    `train_texts` is the training split (a Dataset with "src"/"tgt": the trained tokenizer is
    then cached by its fingerprint, so the same data and settings train once) or a function
    returning an iterator of strings (always trains). A trained tokenizer is saved in
    out_dir/tokenizer, a directory AutoTokenizer loads; with `reuse` (a resumed run, a process
    other than the main one) the one already saved there is loaded instead.
    """

    if saved_in is not None or not isinstance(cfg.tokenizer, dict):
        tok = load_pretrained_tokenizer(str(saved_in or cfg.tokenizer))
        check_direction(tok, cfg)
        return tok
    saved = Path(out_dir) / "tokenizer" if out_dir else None
    if reuse and saved and (saved / "tokenizer.json").exists():
        return open_tokenizer(saved)
    kind, vocab_size = cfg.tokenizer["train"], cfg.tokenizer.get("vocab_size", 8000)
    cached = None
    if isinstance(train_texts, datasets.Dataset) and train_texts.cache_files:
        # "ids-2": tokenizers cached before canonical_unigram ordered their ids by chance;
        # "-3": before they collapsed whitespace; "-4": before they dropped invisible characters
        key = Hasher.hash([CACHE_VERSION, "ids-4", train_texts._fingerprint, kind, vocab_size])
        cached = Path(datasets.config.HF_DATASETS_CACHE) / "trained_tokenizers" / key
    if cached and (cached / "tokenizer.json").exists():
        tok = open_tokenizer(cached)
        log(f"tokenizer: {kind} {len(tok)} trained earlier on the same data ({cached})")
    else:
        texts = _texts(train_texts) if isinstance(train_texts, datasets.Dataset) else train_texts()
        started = time.time()
        tok = train_tokenizer(texts, kind, vocab_size)
        got = "" if len(tok) == vocab_size else f" (asked for {vocab_size})"
        log(f"tokenizer: {kind} {len(tok)} trained on train in {time.time() - started:.1f} s{got}")
        if cached:  # written aside and renamed: a reader never sees half a tokenizer
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=cached.parent))
            tok.save_pretrained(tmp)
            try:
                tmp.rename(cached)
            except OSError:  # another process cached it first
                shutil.rmtree(tmp, ignore_errors=True)
    if saved:
        tok.save_pretrained(saved)
    return tok


def init_checkpoint(cfg: TrainConfig) -> Path | None:
    """The checkpoint directory init_from names (its tokenizer is the run's), else None."""
    if not cfg.init_from:
        return None
    from checkpoint import resolve  # which imports this module

    try:
        return resolve(cfg.init_from)
    except UserError as e:
        raise UserError(f"init_from: {e}") from None


# The ISO 639-2/3 codes (both forms where they differ) of the languages with the most OPUS-MT
# models, after their ISO 639-1 code
_ISO_639 = (
    "ar ara, bg bul, ca cat, cs ces cze, da dan, de deu ger, el ell gre, en eng, es spa, et est, "
    "eu eus baq, fa fas per, fi fin, fr fra fre, he heb, hi hin, hr hrv, hu hun, id ind, "
    "is isl ice, it ita, ja jpn, ko kor, lt lit, lv lav, nl nld dut, no nor, pl pol, pt por, "
    "ro ron rum, ru rus, sk slk slo, sl slv, sr srp, sv swe, tr tur, uk ukr, vi vie, zh zho chi"
)
ISO_639_1 = {c: two for row in _ISO_639.split(", ") for two, *three in [row.split()] for c in three}


def check_direction(tok, cfg: TrainConfig, other_languages: bool = False) -> None:
    """UserError for a Marian tokenizer that does not fit this run: separate source and target
    vocabularies (the model has one), one made for the other direction (each side would be cut
    by the other language's SentencePiece model), or, unless `other_languages` (fine-tuning a
    checkpoint for another pair, which init_from warns about), one for other languages."""
    name = cfg.tokenizer
    if getattr(tok, "separate_vocabs", False):
        raise UserError(
            f"tokenizer {name}: separate source and target vocabularies (separate_vocabs) are not "
            "supported: the model has one vocabulary for both sides"
        )
    given = [str(getattr(tok, k, None)) for k in ("source_lang", "target_lang")]
    # two-letter codes on both sides are compared, three-letter ones of common languages
    # (Tatoeba's OPUS-MT models: "eng", "deu") as their two-letter codes; others ("mul") cannot
    # be: let be
    pair = tuple(ISO_639_1.get(c.lower(), c.lower()) for c in given)
    run = tuple(ISO_639_1.get(c.lower(), c.lower()) for c in (cfg.src_lang, cfg.tgt_lang))
    same_form = all(len(c) == 2 for c in pair + run)
    if pair == run[::-1] or (same_form and pair != run and not other_languages):
        raise UserError(
            f"tokenizer {name} is for {given[0]}->{given[1]} (a SentencePiece model per side), "
            f"this run translates {cfg.src_lang}->{cfg.tgt_lang}: use a tokenizer for that "
            f"direction (e.g. Helsinki-NLP/opus-mt-{cfg.src_lang}-{cfg.tgt_lang}'s)"
        )


def _texts(ds: datasets.Dataset):
    for batch in ds.iter(1000):
        yield from (s for s in batch["src"] + batch["tgt"] if s)


def load_pretrained_tokenizer(name: str):

    _quiet_hub()
    if not os.path.exists(name) and _looks_like_path(name):  # not a Hub id: do not blame the Hub
        raise UserError(f"tokenizer directory not found: {name}")
    try:
        return open_tokenizer(name)
    except Exception as e:
        if not os.path.exists(name):
            raise UserError(
                f"cannot load tokenizer '{name}' from the Hugging Face Hub: {_first_line(e)}. "
                f"{OFFLINE_HINT}"
            ) from None
        marian = [f for f in ("source.spm", "target.spm", "vocab.json")
                  if not (Path(name) / f).exists()]  # fmt: skip
        if os.path.isdir(name) and len(marian) < 3 and {"source.spm", "target.spm"} - set(marian):
            why = f"a Marian tokenizer without {', '.join(marian)}"
        elif not os.path.isdir(name):
            why = "a file: give the tokenizer's directory"
        else:
            why = _first_line(e)
        raise UserError(f"cannot load tokenizer '{name}' (local): {why}") from None


def open_tokenizer(name: str | Path):
    """AutoTokenizer.from_pretrained without transformers' warnings that do not apply here:
    Marian's advice to install sacremoses (used by its own pre-processing only), and "sequence
    longer than the model's maximum" (train.py drops such pairs and translate.py truncates
    them, each with its own count or warning)."""
    from transformers import AutoTokenizer

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
        tok = AutoTokenizer.from_pretrained(str(name))
    tok.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    return tok


def train_tokenizer(texts, kind: str, vocab_size: int):
    """Train a joint source+target subword tokenizer (SentencePiece-style, via HF tokenizers).

    Like Marian's, it appends </s> to every sequence and has no BOS in the input; decoding
    starts from <s>.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    if kind == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False
        )
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False
        )
    # Runs of whitespace as one space and none at the ends, as SentencePiece's default
    # normaliser does (Marian's): else every extra space or a tab becomes a token of its own.
    # Invisible characters (zero-width ones, a BOM inside a file, U+FFFD, separators) as a
    # space and control characters dropped, as SentencePiece's nmt_nfkc does: else each is an
    # <unk>. Zero-width non-joiners stay (they shape Persian and Indic words).
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Replace(Regex("[\u200b\u200e\u200f\ufeff\ufffd\x1c-\x1f]"), " "),
            normalizers.Replace(Regex("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]"), ""),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    try:
        tok.train_from_iterator(texts, trainer=trainer)
    except Exception as e:  # tokenizers raises a bare Exception
        if "not large enough" not in str(e):
            raise
        raise UserError(
            f"tokenizer vocab_size {vocab_size} is too small to hold every character of the "
            "training text (a Unigram model must): raise it"
        ) from None
    if kind == "unigram":
        tok.model = canonical_unigram(tok, specials)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def canonical_unigram(tok, specials: list[str]):
    """A trained Unigram model with its scores rounded and its pieces in a fixed order.

    HF tokenizers' Unigram training is not deterministic, even on one thread: on the same text
    its runs here gave the same pieces, but scores that differ in their last bits (pieces whose
    scores nearly tie then swap ids), and the rare characters at the end in another order
    (docs/data.md: Caches). Runs of one config got different ids, so their checkpoints could not
    decode as an ensemble. With the scores rounded to 8 decimals (far below what segmentation
    notices), the pieces ordered by score, then piece, and those last characters in character
    order, the same pieces get the same ids (unless noise crosses a rounding boundary: rare, and
    ensemble.py refuses vocabularies that differ). The special tokens stay first.
    """
    from tokenizers import models

    state = json.loads(tok.to_str())["model"]
    head = [(p, s) for p, s in state["vocab"] if p in specials]
    rest = sorted(
        ((p, round(s, 8)) for p, s in state["vocab"] if p not in specials),
        key=lambda ps: (-ps[1], ps[0]),
    )
    # The rare single characters at the end (scores 1e-4 apart, as the trainer appends the ones
    # it must keep) come in another order each run: the same scores, in character order.
    n = len(rest)
    while n and len(rest[n - 1][0]) == 1:
        n -= 1
    tail = rest[n:]
    rest[n:] = zip(sorted(p for p, _ in tail), (s for _, s in tail), strict=True)
    vocab = head + rest
    unk_id = state["unk_id"]
    if unk_id is not None:
        unk_id = [p for p, _ in vocab].index(state["vocab"][unk_id][0])
    return models.Unigram(vocab, unk_id=unk_id, byte_fallback=state.get("byte_fallback", False))


@dataclass(frozen=True)
class SpecialIds:
    """Ids taken from the tokenizer, never hard-coded."""

    pad: int
    eos: int
    start: int  # first decoder input: BOS if the tokenizer has one, else pad (Marian's choice)

    @classmethod
    def of(cls, tok) -> "SpecialIds":
        if tok.pad_token_id is None or tok.eos_token_id is None:
            raise UserError("the tokenizer needs a pad and an eos token")
        if tok.pad_token_id == tok.eos_token_id:  # (pad_token = eos_token, a causal-LM idiom)
            raise UserError(
                f"the tokenizer's pad token is its eos token ({tok.eos_token!r}): the loss "
                "ignores padding, so </s> would never be learned, and the encoder would mask "
                "it as padding; give it a pad token of its own"
            )
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.pad_token_id
        return cls(pad=tok.pad_token_id, eos=tok.eos_token_id, start=start)


def encode_sources(tok, texts: list[str]) -> list[list[int]]:
    """Ids with the tokenizer's own additions (</s>); [] for a text blank to the tokenizer."""
    ids = _literal_specials_as_unk(tok, tok(texts, add_special_tokens=True)["input_ids"], False)
    return _blank_as_empty(tok, ids)


def encode_targets(tok, texts: list[str]) -> list[list[int]]:
    # text_target= selects the target-side model of tokenizers that have two (Marian: separate
    # source.spm and target.spm over one vocabulary). Encoding targets as sources is a silent bug.
    ids = _literal_specials_as_unk(
        tok, tok(text_target=texts, add_special_tokens=True)["input_ids"], True
    )
    # Tokenizers that begin every sequence with BOS (BART's, RoBERTa's) would make the labels
    # start with the decoder's start token, which shift_right already feeds it: "<s> <s> w ..."
    # in, "<s> w ..." out, and decoding, which never emits the start token, would begin off
    # the path it was trained on. The labels are the words and </s> only.
    start = SpecialIds.of(tok).start
    return _blank_as_empty(tok, [seq[1:] if seq[:1] == [start] else seq for seq in ids])


def _blank_as_empty(tok, seqs: list[list[int]]) -> list[list[int]]:
    """A text of zero-width or control characters passes str.strip() but the normalizer removes
    all of it: its ids are the added </s> alone. That is an empty line, as "" is: [] (training
    drops the pair with a count, translate.py leaves the line empty), not a sentence."""
    special = set(tok.all_special_ids) - {tok.unk_token_id}  # <unk> is a word's
    return [seq if not special.issuperset(seq) else [] for seq in seqs]


def _literal_specials_as_unk(tok, seqs: list[list[int]], target: bool) -> list[list[int]]:
    """The text "</s>" or "<pad>" in a sentence is a word, not the control token: as those
    ids it would end the source early or be masked as padding (and the trained tokenizers'
    vocabularies hold the pieces, so split_special_tokens cannot stop it). Any special id
    inside the text's own ids becomes <unk>; those the tokenizer adds around them stay."""
    unk = tok.unk_token_id
    if unk is None:  # byte-level tokenizers: nothing to map to
        return seqs
    special = set(tok.all_special_ids) - {unk}
    # what the tokenizer adds before and after a text's ids (Marian's, ours: only </s> after)
    added = [
        t in special for t in tok(**{"text_target" if target else "text": ["a"]})["input_ids"][0]
    ]
    before, after = added.index(False), added[::-1].index(False)
    for seq in seqs:
        end = len(seq) - after
        if not special.isdisjoint(seq[before:end]):
            seq[before:end] = [unk if t in special else t for t in seq[before:end]]
    return seqs


def check_targets_hold_eos(tok, name) -> None:
    """Training needs labels that hold </s>: a tokenizer with an eos token that does not
    append it (GPT-2's) would teach the model never to stop, and decoding would run every
    sentence to its length limit."""
    ids = SpecialIds.of(tok)
    probe = encode_targets(tok, ["a"])[0]
    if ids.eos not in probe:  # not necessarily last: mBART puts a language code after it
        raise UserError(
            f"tokenizer {name}: targets do not hold its eos token {tok.eos_token!r} ('a' is "
            f"{probe}), so the model would never learn to stop; use one that appends it "
            "(Marian's, T5's, BART's, or one trained here)"
        )


# Keys of a saved tokenizer_config.json that say where it was loaded from, not how it encodes.
_PROVENANCE = set(
    "is_local local_files_only name_or_path _name_or_path _commit_hash cache_dir revision token "
    "subfolder".split()
)


def tokenizer_fingerprint(tok) -> str:
    """A hash of the files the tokenizer saves: equal for equal tokenizers across processes and
    runs, wherever they were loaded from. (datasets' own hash of a tokenizer object changes when
    the tokenizer is used, which would defeat the cache.)"""
    digest = hashlib.sha256(type(tok).__name__.encode())
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        for f in sorted(Path(d).iterdir()):
            data = f.read_bytes()
            if f.suffix == ".json" and f.name != "tokenizer.json":
                obj = json.loads(data)
                if isinstance(obj, dict):
                    obj = {k: v for k, v in obj.items() if k not in _PROVENANCE}
                data = json.dumps(obj, sort_keys=True).encode()
            digest.update(f.name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Tokenized corpus: flat int32 arrays + offsets, no per-sentence Python objects


@dataclass
class Corpus:
    src: np.ndarray  # all source ids, concatenated
    src_off: np.ndarray  # sentence i is src[src_off[i]:src_off[i+1]]
    tgt: np.ndarray
    tgt_off: np.ndarray

    def __len__(self) -> int:
        return len(self.src_off) - 1

    def lengths(self) -> np.ndarray:
        """Padded cost of each pair: the longer of its two sides."""
        return np.maximum(np.diff(self.src_off), np.diff(self.tgt_off))

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return (
            self.src[self.src_off[i] : self.src_off[i + 1]],
            self.tgt[self.tgt_off[i] : self.tgt_off[i + 1]],
        )

    def save(self, path: Path) -> None:
        """Written aside and renamed: a reader never sees half a file."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, src=self.src, src_off=self.src_off, tgt=self.tgt, tgt_off=self.tgt_off)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Corpus":
        with np.load(path) as z:
            return cls(z["src"], z["src_off"], z["tgt"], z["tgt_off"])


def both_ways(corpus: Corpus) -> Corpus:
    """Every pair twice: source->target, then target->source (bidirectional_epochs). Exact only
    for a tokenizer that encodes both sides alike (one joint model, trained here)."""
    return Corpus(
        np.concatenate([corpus.src, corpus.tgt]),
        np.concatenate([corpus.src_off, corpus.tgt_off[1:] + corpus.src_off[-1]]),
        np.concatenate([corpus.tgt, corpus.src]),
        np.concatenate([corpus.tgt_off, corpus.src_off[1:] + corpus.tgt_off[-1]]),
    )


def default_num_proc(n_pairs: int) -> int:
    """Worker processes for tokenizing: starting them costs seconds, so only for big corpora."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 1 if n_pairs < 200_000 else max(1, min(4, cpus or 1))


def _encode_batch(batch: dict, tok) -> dict:
    """Ids of both sides; a blank side gets [] (and is dropped later with its pair)."""
    out = {}
    for side, encode in (("src", encode_sources), ("tgt", encode_targets)):
        texts = batch[side]
        todo = [i for i, t in enumerate(texts) if t is not None and t.strip()]
        ids = [[] for _ in texts]
        if todo:
            for i, seq in zip(todo, encode(tok, [texts[i] for i in todo]), strict=True):
                ids[i] = seq
        out[f"{side}_ids"] = ids
    return out


def _in_the_cache(ds: datasets.Dataset, key: str) -> dict:
    """map()'s cache file for a dataset whose own files lie outside datasets' cache (a
    save_to_disk folder: maybe read-only, or shared, and not ours to write into), there;
    nothing for the others (datasets then writes beside their files, in the cache already)."""
    cache = Path(datasets.config.HF_DATASETS_CACHE).resolve()
    files = [Path(f["filename"]).resolve() for f in ds.cache_files]
    if not files or all(cache in f.parents for f in files):
        return {}
    (cache / "mapped").mkdir(parents=True, exist_ok=True)
    return {"cache_file_name": str(cache / "mapped" / f"{key}.arrow")}


def encode(
    ds: datasets.Dataset, tok, name: str = "data", log=print, num_proc: int | None = None
) -> datasets.Dataset:
    """Token ids of every pair ("src_ids", "tgt_ids", int32), through datasets.map: cached on disk
    by (text fingerprint, tokenizer files), so the same data and tokenizer are tokenized once."""
    num_proc = default_num_proc(len(ds)) if num_proc is None else num_proc
    # "targets-2": since the labels drop a leading start token (encode_targets); "-3": since
    # special tokens written out in the text are <unk> (_literal_specials_as_unk); "-4": since
    # a text blank to the tokenizer is [] (_blank_as_empty)
    key = Hasher.hash([CACHE_VERSION, "targets-4", ds._fingerprint, tokenizer_fingerprint(tok)])
    started = time.time()
    # Forked workers each tokenize a shard; Rust threads inside each would oversubscribe the
    # cores (and tokenizers warns about forking after it used threads).
    parallel = patch_environment(TOKENIZERS_PARALLELISM="false") if num_proc > 1 else nullcontext()
    with parallel:
        out = ds.map(
            _encode_batch,
            batched=True,
            fn_kwargs={"tok": tok},
            features=IDS_FEATURES,
            remove_columns=ds.column_names,
            num_proc=num_proc if num_proc > 1 else None,
            new_fingerprint=key,
            desc=f"{name}: tokenizing",
            **_in_the_cache(ds, key),
        )
    files = [f["filename"] for f in out.cache_files]  # none for an in-memory dataset: no cache
    if files and all(os.path.getmtime(f) < started for f in files):
        log(
            f"{name}: token ids of {len(out):,} pairs loaded from the cache "
            f"({os.path.dirname(files[0])}), nothing tokenized"
        )
    elif files:
        log(
            f"{name}: tokenized {len(out):,} pairs in {time.time() - started:.1f} s with "
            f"{num_proc} process{'es' if num_proc > 1 else ''}, cached in "
            f"{os.path.dirname(files[0])}"
        )
    return out


def tokenize(
    ds, tok, max_len: int, name: str, log=print, num_proc: int | None = None, max_ratio=None
) -> Corpus:
    """Tokenize text pairs (cached, see `encode`); drop empty and overlong pairs (and, with
    `max_ratio`, pairs whose longer side has more than max_ratio x the tokens of the shorter)
    and say how many.

    Filtering works on arrays of lengths and the corpus is built chunk by chunk from the Arrow
    cache into flat int32 arrays: memory is the kept token ids, not Python lists of the corpus.
    """
    table = encode(ds, tok, name, log, num_proc).with_format("arrow")[:]
    src_len = pc.list_value_length(table.column("src_ids")).to_numpy()
    tgt_len = pc.list_value_length(table.column("tgt_ids")).to_numpy()
    keep, dropped = _usable(src_len, tgt_len, max_len, name, max_ratio)
    if not keep.all():
        log(f"{name}: {dropped}")
    return Corpus(
        *_flat(table.column("src_ids"), keep, src_len),
        *_flat(table.column("tgt_ids"), keep, tgt_len),
    )


def _usable(
    src_len, tgt_len, max_len: int, name: str, max_ratio: float | None = None
) -> tuple[np.ndarray, str]:
    """Pairs to keep (neither side empty nor longer than max_len, nor with a longer side of
    more than max_ratio x the tokens of the shorter), and what was dropped (each pair counted
    once, under the first of these that drops it)."""
    empty = (src_len == 0) | (tgt_len == 0)
    long = ~empty & ((src_len > max_len) | (tgt_len > max_len))
    keep = ~empty & ~long
    counts = [
        f"{int(empty.sum())} empty pairs",
        f"{int(long.sum())} pairs longer than {max_len} tokens",
    ]
    if max_ratio is not None:
        uneven = keep & (np.maximum(src_len, tgt_len) > max_ratio * np.minimum(src_len, tgt_len))
        keep &= ~uneven
        counts.append(
            f"{int(uneven.sum())} pairs with one side over {max_ratio:g}x the other's tokens"
        )
    said = ", ".join(counts[:-1]) + " and " + counts[-1]
    if not keep.any():
        raise UserError(f"{name}: no usable sentence pairs ({len(keep)} read: {said})")
    return keep, f"dropped {said}; {int(keep.sum())} of {len(keep)} remain"


def sample_segmentations(
    ds: datasets.Dataset, tok, alpha: float, max_len: int, name: str, log=print, max_ratio=None
) -> Corpus:
    """Subword regularisation (Kudo 2018): every pair of `ds` encoded with a segmentation sampled
    from the Unigram model of `tok` (a tokenizer trained here: one model for both sides), with
    smoothing `alpha`. Blank, overlong (and uneven) pairs are dropped as in `tokenize`, and
    counted."""
    sampler = copy.deepcopy(tok)  # `tok` keeps the single best segmentation
    model = sampler.backend_tokenizer.model
    if type(model).__name__ != "Unigram":
        raise UserError(f"subword_alpha needs a Unigram tokenizer, not {type(model).__name__}")
    model.alpha = alpha
    started, values, lengths = time.time(), {}, {}
    for batch in ds.iter(10_000):  # int32 chunks: no Python lists of the whole corpus
        for side, rows in _encode_batch(batch, sampler).items():
            values.setdefault(side, []).append(
                np.fromiter(itertools.chain.from_iterable(rows), np.int32)
            )
            lengths.setdefault(side, []).append(np.fromiter(map(len, rows), np.int64, len(rows)))
    src_len, tgt_len = (np.concatenate(lengths[side]) for side in ("src_ids", "tgt_ids"))
    keep, dropped = _usable(src_len, tgt_len, max_len, name, max_ratio)
    arrays = []
    for side, length in (("src_ids", src_len), ("tgt_ids", tgt_len)):
        arrays += [np.concatenate(values[side])[np.repeat(keep, length)], _offsets(length[keep])]
    corpus = Corpus(*arrays)
    log(
        f"{name}: segmentations sampled (subword_alpha {alpha}) in {time.time() - started:.1f} s, "
        f"{len(corpus.tgt):,} target tokens; {dropped}"
    )
    return corpus


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """Row lengths -> int64 offsets: row i is values[offsets[i]:offsets[i+1]]."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _flat(column, keep: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kept rows of a chunked list<int32> column -> (values int32, offsets int64)."""
    offsets = _offsets(lengths[keep].astype(np.int64))
    values = np.empty(offsets[-1], dtype=np.int32)
    row = pos = 0
    for chunk in column.chunks:
        rows = slice(row, row + len(chunk))
        flat = chunk.flatten().to_numpy()  # zero-copy view of the (memory-mapped) chunk
        if not keep[rows].all():
            flat = flat[np.repeat(keep[rows], lengths[rows])]
        values[pos : pos + len(flat)] = flat
        pos, row = pos + len(flat), rows.stop
    return values, offsets


# ---------------------------------------------------------------------------------------------
# Batching


def token_batches(
    lengths: np.ndarray,
    max_tokens: int | None,
    max_sentences: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[np.ndarray]:
    """Group pairs of similar length so a batch holds at most max_tokens padded tokens per side.

    Pairs are sorted by length (ties broken at random from seed+epoch), cut into batches greedily,
    and the batches shuffled: little padding, a different order every epoch.
    """
    rng = np.random.default_rng([seed, epoch])
    tiebreak = rng.random(len(lengths)) if shuffle else np.arange(len(lengths))
    order = np.lexsort((tiebreak, lengths))
    cap = max_tokens or np.iinfo(np.int64).max
    sorted_len = lengths[order]
    batches, start, n = [], 0, len(order)
    while start < n:
        # The batch order[start:end] is padded to sorted_len[end - 1], so its cost
        # (end - start) * sorted_len[end - 1] grows with end: bisect for the largest end that
        # fits (at least one pair). Python work per batch, not per pair.
        lo, hi = start + 1, min(n, start + max_sentences)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if (mid - start) * int(sorted_len[mid - 1]) <= cap:
                lo = mid
            else:
                hi = mid - 1
        batches.append(order[start:lo])
        start = lo
    if shuffle:
        rng.shuffle(batches)
    return batches


def shard(batches: list, rank: int, world: int) -> list:
    """This process's share of an epoch: disjoint from the other ranks', together the whole
    epoch, and the same number of batches on every rank (DDP/FSDP collectives need that).

    Rank r takes batches r, r + world, ...; the last len % world batches are cut into `world`
    smaller pieces (each a part of one batch, so within the token cap), one more per rank. If
    those hold fewer than `world` pairs in all, pairs are repeated to give every rank one.
    Items that are not index arrays cannot be cut: then the remainder is dropped.
    """
    full = len(batches) - len(batches) % world
    mine = list(batches[rank:full:world])
    rest = [np.asarray(b) for b in batches[full:]]
    if rest and all(b.ndim == 1 for b in rest):
        mine.append(_cut(rest, world)[rank])
    return mine


def _cut(rest: list[np.ndarray], world: int) -> list[np.ndarray]:
    """Split fewer than `world` batches into exactly `world` non-empty pieces."""
    total = sum(len(b) for b in rest)
    if total < world:
        pairs = np.concatenate(rest)
        return [pairs[[k % total]] for k in range(world)]
    parts = [1] * len(rest)  # pieces per batch: give the next piece to the largest pieces
    for _ in range(world - len(rest)):
        i = max(
            (i for i in range(len(rest)) if parts[i] < len(rest[i])),
            key=lambda i: len(rest[i]) / parts[i],
        )
        parts[i] += 1
    return [piece for b, k in zip(rest, parts, strict=True) for piece in np.array_split(b, k)]


def collate(corpus: Corpus, index: np.ndarray, ids: SpecialIds) -> dict:
    """Pairs -> padded tensors: src (B, S), tgt_in (B, T) = start + labels[:-1], labels (B, T)."""
    pairs = [corpus.pair(i) for i in index]
    s_len = max(len(s) for s, _ in pairs)
    t_len = max(len(t) for _, t in pairs)
    src = np.full((len(pairs), s_len), ids.pad, dtype=np.int64)
    labels = np.full((len(pairs), t_len), ids.pad, dtype=np.int64)
    for row, (s, t) in enumerate(pairs):
        src[row, : len(s)] = s
        labels[row, : len(t)] = t
    labels = torch.from_numpy(labels)
    return {
        "src": torch.from_numpy(src),
        "tgt_in": shift_right(labels, ids.start, ids.pad),
        "labels": labels,
        "n_tokens": int(sum(len(t) for _, t in pairs)),  # non-padding target tokens
    }


def batch_iter(corpus: Corpus, batches: list, ids: SpecialIds, device):
    # To a GPU from pinned memory without blocking: a copy from pageable memory waits for the
    # GPU to finish (a host sync per step). The next batch is collated when the loop asks for
    # it, after the step's one host sync: not overlapped with the GPU's work (0.3-0.8 ms a
    # batch on this CPU; a prefetching thread would hide it, not done).
    cuda = torch.device(device).type == "cuda"

    def move(v: torch.Tensor) -> torch.Tensor:
        return v.pin_memory().to(device, non_blocking=True) if cuda else v.to(device)

    for index in batches:
        batch = collate(corpus, index, ids)
        yield {k: move(v) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Audit and command line: python data.py audit|prepare --config C [--key value ...]

RATIO = 3.0  # a pair is a length-ratio outlier when one side has more than RATIO x the tokens
# (or max_length_ratio, when the config sets it: then the audit counts what training drops)


def audit(cfg: TrainConfig, whitespace: bool = False, log=print) -> None:
    """Print, per split: pairs, empty lines, duplicate pairs, length percentiles per side,
    length-ratio outliers, pairs over max_seq_length, and valid/test sources (and pairs) that
    also occur in training."""
    splits = {"train": (cfg.train_data, cfg.train_split)}
    if cfg.valid_data:
        splits["valid"] = (cfg.valid_data, cfg.valid_split)
    if cfg.test_data:
        splits["test"] = (cfg.test_data, cfg.test_split)
    texts = {name: load_text(spec, cfg, split) for name, (spec, split) in splits.items()}
    if whitespace:
        tok, unit = None, "words"
        log("lengths: whitespace-separated words")
    else:
        init = init_checkpoint(cfg)
        tok = load_tokenizer(cfg, None, texts["train"], log=lambda _: None, saved_in=init)
        unit, name = "tokens", f"{init}'s (init_from)" if init else cfg.tokenizer
        if isinstance(name, dict):
            name = (
                f"{cfg.tokenizer['train']} {cfg.tokenizer.get('vocab_size', 8000)} trained on train"
            )
        log(f"lengths: tokens including </s>, tokenizer {name}")
    log("duplicates, overlap: exact match of whitespace-trimmed text")
    ratio = cfg.max_length_ratio or RATIO
    dropped = " (max_length_ratio: training drops them)" if cfg.max_length_ratio else ""
    log(f"length ratio: longer side / shorter side > {ratio:g}{dropped}, pairs with an empty side "
        f"or longer than {cfg.max_seq_length} left out")  # fmt: skip
    # training drops such a pair as empty, and counts it so
    log(f"longer than {cfg.max_seq_length}: pairs with an empty side left out, as in training")
    for name, (spec, split) in splits.items():
        log(f"{name}: {spec}" + (f" [{split}]" if has_splits(spec) else ""))
    stats = {
        name: _split_stats(ds, tok, name, ratio, cfg.max_seq_length) for name, ds in texts.items()
    }
    train, src, tgt, max_len = stats["train"], cfg.src_lang, cfg.tgt_lang, cfg.max_seq_length
    table = {  # row label -> one cell per split
        "pairs": [f"{s['n']:,}" for s in stats.values()],
        f"empty lines {src} / {tgt}": [
            f"{s['empty'][0]} / {s['empty'][1]}" for s in stats.values()
        ],
        "duplicate pairs": [f"{s['dups']:,}" for s in stats.values()],
        f"{src} length p50/p90/p99/max": [s["pct"][0] for s in stats.values()],
        f"{tgt} length p50/p90/p99/max": [s["pct"][1] for s in stats.values()],
        f"length ratio > {ratio:g}": [f"{s['ratio']:,}" for s in stats.values()],
        f"longer than {max_len} {unit}": [f"{s['long']:,}" for s in stats.values()],
        "sources also in train": [
            "-"
            if s is train
            else f"{(np.isin(s['src_hash'], train['src_hash']) & s['has_src']).sum():,}"
            for s in stats.values()
        ],
        "pairs also in train": [
            "-"
            if s is train
            else f"{(np.isin(s['pair_hash'], train['pair_hash']) & s['both']).sum():,}"
            for s in stats.values()
        ],
    }
    width = max(map(len, table))
    log("")
    log(" " * width + "".join(f"{name:>14}" for name in stats))
    for label, cells in table.items():
        log(f"{label:{width}}" + "".join(f"{cell:>14}" for cell in cells))


def _split_stats(ds: datasets.Dataset, tok, name: str, ratio: float, max_len: int) -> dict:
    """Lengths, hashes and counts of one split, in batches (no Python list of the corpus)."""
    src_len, tgt_len, src_hash, pair_hash = [], [], [], []
    if tok is not None:
        ids = encode(ds, tok, name, log=lambda _: None).with_format("arrow")[:]
        src_len = [pc.list_value_length(ids.column("src_ids")).to_numpy()]
        tgt_len = [pc.list_value_length(ids.column("tgt_ids")).to_numpy()]
    for batch in ds.iter(10_000):
        src = [s.strip() if s else "" for s in batch["src"]]
        tgt = [t.strip() if t else "" for t in batch["tgt"]]
        src_hash.append(np.fromiter((hash(s) for s in src), np.int64, len(src)))
        pair_hash.append(
            np.fromiter((hash((s, t)) for s, t in zip(src, tgt, strict=True)), np.int64, len(src))
        )
        if tok is None:
            src_len.append(np.fromiter((len(s.split()) for s in src), np.int64, len(src)))
            tgt_len.append(np.fromiter((len(t.split()) for t in tgt), np.int64, len(tgt)))
    src_len, tgt_len = np.concatenate(src_len), np.concatenate(tgt_len)
    # empty as training sees it: no tokens (a line of zero-width characters has none)
    empty = [int((src_len == 0).sum()), int((tgt_len == 0).sum())]
    pair_hash = np.concatenate(pair_hash)
    both = (src_len > 0) & (tgt_len > 0)
    # counted as training counts them (_usable): a pair with an empty side as empty, not as too
    # long; a pair too long as that, not as uneven
    long = both & ((src_len > max_len) | (tgt_len > max_len))
    fits = both & ~long
    longer, shorter = np.maximum(src_len, tgt_len)[fits], np.minimum(src_len, tgt_len)[fits]

    def percentiles(x) -> str:  # of the non-empty lines
        x = x[x > 0]
        if len(x) == 0:
            return "-"
        return "/".join(
            str(int(v)) for v in [*np.percentile(x, [50, 90, 99], method="higher"), x.max()]
        )

    return {
        "n": len(ds),
        "empty": empty,
        "dups": int(both.sum()) - len(np.unique(pair_hash[both])),  # empty ones count as empty
        "pct": (percentiles(src_len), percentiles(tgt_len)),
        "ratio": int((longer > ratio * shorter).sum()),
        "long": int(long.sum()),
        "src_hash": np.concatenate(src_hash),
        "pair_hash": pair_hash,
        "has_src": src_len > 0,  # empty lines are not counted as overlap
        "both": both,
    }


def prepare(cfg: TrainConfig, log=print) -> None:
    """What train.py does before it builds a model: read, tokenize (filling the caches), filter,
    batch one epoch. Times each step and reports the peak memory."""
    import resource

    started = time.time()
    train = load_text(cfg.train_data, cfg, cfg.train_split)
    log(f"train: {len(train):,} pairs read in {time.time() - started:.1f} s")
    t = time.time()
    tok = load_tokenizer(cfg, None, train, log=log, saved_in=init_checkpoint(cfg))
    check_targets_hold_eos(tok, cfg.tokenizer)  # as train.py, before tokenizing it all
    log(f"tokenizer ready in {time.time() - t:.1f} s")
    corpus = tokenize(train, tok, cfg.max_seq_length, "train", log, max_ratio=cfg.max_length_ratio)
    if cfg.valid_data:
        valid = load_text(cfg.valid_data, cfg, cfg.valid_split)
        tokenize(valid, tok, cfg.max_seq_length, "valid", log)
    t = time.time()
    lengths = corpus.lengths()
    batches = token_batches(lengths, cfg.max_tokens, cfg.batch_size, cfg.seed, 0)
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    log(
        f"train: {len(corpus):,} pairs, {len(corpus.src) + len(corpus.tgt):,} tokens, "
        f"{len(batches):,} batches in {time.time() - t:.1f} s "
        f"({100 * (1 - lengths.sum() / padded):.1f}% padding on the longer side)"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    log(f"done in {time.time() - started:.1f} s, peak memory (max RSS) {peak:.2f} GiB")


def main(argv=None):
    parser = ArgumentParser(
        prog="python data.py",
        description="Inspect or prepare the data of a config.",
        epilog="Any config key can be overridden: --train_data 'data/train.{lang}.gz'",
    )
    parser.add_argument(
        "command",
        choices=["audit", "prepare"],
        help="audit: statistics per split; prepare: fill the caches",
    )
    parser.add_argument(
        "--config", default="config.json", help="JSON config (default: config.json)"
    )
    parser.add_argument(
        "--whitespace",
        action="store_true",
        help="audit: count whitespace-separated words, no tokenizer",
    )
    args, rest = parser.parse_known_args(argv)
    cfg = load_config(args.config, parse_overrides(rest))
    if not sys.stderr.isatty():  # datasets' bars ("Generating train split"): none in a log
        datasets.disable_progress_bars()
    if args.command == "audit":
        audit(cfg, args.whitespace)
    else:
        prepare(cfg)


if __name__ == "__main__":
    cli(main)
