"""Data: load parallel text (Hub or local), tokenize, filter, batch by tokens, collate.

Sources (`train_data`, `valid_data`, ...):
  - a Hub dataset name, e.g. "wmt/wmt14" with `dataset_config` "de-en" (its `translation` column)
  - a local JSON Lines file: {"translation": {"en": ..., "de": ...}} per line
  - a directory written by `datasets.Dataset.save_to_disk`
  - aligned plain-text files, optionally gzipped, as one path with a {lang} placeholder:
    "../shared/data/multi30k/train.{lang}.gz"
Every source becomes a `datasets.Dataset` with text columns "src" and "tgt".
"""

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from config import TrainConfig, UserError
from model import shift_right

OFFLINE_HINT = (
    "To work offline, run the quick start (bash quickstart.sh) or point train_data/valid_data at "
    "local files (e.g. --train_data '../shared/data/multi30k/train.{lang}.gz') and use a local "
    "or trained tokenizer (--tokenizer '{\"train\": \"unigram\", \"vocab_size\": 8000}')."
)


# ---------------------------------------------------------------------------------------------
# Loading text


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def _read_lines(path: str) -> list[str]:
    if not os.path.exists(path):
        raise UserError(f"data file not found: {path}")
    try:
        with _open_text(path) as f:
            return [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None


LOCAL_SUFFIXES = (".gz", ".txt", ".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow")


def load_text(spec: str, cfg: TrainConfig, split: str):
    """Any supported source -> datasets.Dataset with string columns "src" and "tgt"."""
    src, tgt = cfg.src_lang, cfg.tgt_lang
    if "{lang}" in spec:
        paths = {lang: spec.format(lang=lang) for lang in (src, tgt)}
        lines = {lang: _read_lines(p) for lang, p in paths.items()}
        if len(lines[src]) != len(lines[tgt]):
            raise UserError(f"misaligned files: {paths[src]} has {len(lines[src])} lines, "
                            f"{paths[tgt]} has {len(lines[tgt])}")
        return datasets.Dataset.from_dict({"src": lines[src], "tgt": lines[tgt]})
    if spec.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        if not os.path.exists(spec):
            raise UserError(f"data file not found: {spec}")
        ds = datasets.load_dataset("json", data_files=spec, split="train")
    elif os.path.isdir(spec):
        ds = datasets.load_from_disk(spec)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    elif spec.startswith((".", "/", "~")) or spec.endswith(LOCAL_SUFFIXES):
        raise UserError(f"data path not found: {spec}")
    else:  # "owner/name" or "name": a Hub dataset
        ds = _load_hub(spec, cfg.dataset_config, split)
    if "translation" not in ds.column_names:
        raise UserError(f"{spec}: expected a 'translation' column, found {ds.column_names}")
    return ds.map(
        lambda b: {"src": [t[src] for t in b["translation"]], "tgt": [t[tgt] for t in b["translation"]]},
        batched=True, remove_columns=ds.column_names, desc=f"reading {split}",
    )


def _quiet_hub():
    """The Hub client logs each retry; our one-line error says it all."""
    import huggingface_hub

    huggingface_hub.utils.logging.set_verbosity_error()


def _load_hub(name: str, config: str | None, split: str):
    _quiet_hub()
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, offline mode, missing repo: all end the same way for users
        raise UserError(f"cannot load dataset '{name}' ({config}, {split}) from the Hugging Face "
                        f"Hub: {_first_line(e)}. {OFFLINE_HINT}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300].rstrip(".")


# ---------------------------------------------------------------------------------------------
# Tokenizer


def load_tokenizer(cfg: TrainConfig, out_dir: str | Path | None = None, train_texts=None,
                   reuse: bool = False):
    """The tokenizer named in the config, or one trained on `train_texts` and saved in out_dir.

    A trained tokenizer is saved as a directory that AutoTokenizer loads (PreTrainedTokenizerFast);
    with `reuse` (a resumed run) the one already in out_dir is loaded instead of trained again.
    """
    from transformers import AutoTokenizer

    if isinstance(cfg.tokenizer, dict):
        saved = Path(out_dir) / "tokenizer" if out_dir else None
        if reuse and saved and (saved / "tokenizer.json").exists():
            return AutoTokenizer.from_pretrained(saved)
        tok = train_tokenizer(train_texts(), cfg.tokenizer["train"], cfg.tokenizer.get("vocab_size", 8000))
        if saved:
            tok.save_pretrained(saved)
        return tok
    return load_pretrained_tokenizer(cfg.tokenizer)


def load_pretrained_tokenizer(name: str):
    from transformers import AutoTokenizer

    _quiet_hub()
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as e:
        where = "local directory" if os.path.isdir(name) else "Hugging Face Hub"
        raise UserError(f"cannot load tokenizer '{name}' from the {where}: {_first_line(e)}. "
                        f"{OFFLINE_HINT}") from None


def train_tokenizer(texts, kind: str, vocab_size: int):
    """Train a joint source+target subword tokenizer (SentencePiece-style, via HF tokenizers).

    Like Marian's, it appends </s> to every sequence and has no BOS in the input; decoding
    starts from <s>.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    if kind == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                          unk_token="<unk>", show_progress=False)
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      show_progress=False)
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainer=trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


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
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.pad_token_id
        return cls(pad=tok.pad_token_id, eos=tok.eos_token_id, start=start)


def encode_sources(tok, texts: list[str]) -> list[list[int]]:
    return tok(texts, add_special_tokens=True)["input_ids"]


def encode_targets(tok, texts: list[str]) -> list[list[int]]:
    # text_target= selects the target-side model of tokenizers that have two (Marian).
    return tok(text_target=texts, add_special_tokens=True)["input_ids"]


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
        return (self.src[self.src_off[i] : self.src_off[i + 1]],
                self.tgt[self.tgt_off[i] : self.tgt_off[i + 1]])


def tokenize(ds, tok, max_len: int, name: str, log=print) -> Corpus:
    """Tokenize text pairs in batches; drop empty and overlong pairs and say how many."""
    n = len(ds)
    ds = ds.filter(lambda b: [bool(s.strip()) and bool(t.strip()) for s, t in zip(b["src"], b["tgt"])],
                   batched=True, desc=f"{name}: dropping empty pairs")
    n_empty = n - len(ds)
    ds = ds.map(lambda b: {"src_ids": encode_sources(tok, b["src"]), "tgt_ids": encode_targets(tok, b["tgt"])},
                batched=True, remove_columns=ds.column_names, desc=f"{name}: tokenizing")
    ds = ds.filter(lambda b: [len(s) <= max_len and len(t) <= max_len for s, t in zip(b["src_ids"], b["tgt_ids"])],
                   batched=True, desc=f"{name}: dropping long pairs")
    n_long = n - n_empty - len(ds)
    if n_empty or n_long:
        log(f"{name}: dropped {n_empty} empty pairs and {n_long} pairs longer than {max_len} "
            f"tokens; {len(ds)} of {n} remain")
    if len(ds) == 0:
        raise UserError(f"{name}: no usable sentence pairs")
    table = ds.with_format("arrow")[:]

    def flat(col):
        arr = table.column(col).combine_chunks()
        return arr.values.to_numpy().astype(np.int32), arr.offsets.to_numpy().astype(np.int64)

    return Corpus(*flat("src_ids"), *flat("tgt_ids"))


# ---------------------------------------------------------------------------------------------
# Batching


def token_batches(lengths: np.ndarray, max_tokens: int | None, max_sentences: int, seed: int,
                  epoch: int, shuffle: bool = True) -> list[np.ndarray]:
    """Group pairs of similar length so a batch holds at most max_tokens padded tokens per side.

    Pairs are sorted by length (ties broken at random from seed+epoch), cut into batches greedily,
    and the batches shuffled: little padding, a different order every epoch.
    """
    rng = np.random.default_rng([seed, epoch])
    tiebreak = rng.random(len(lengths)) if shuffle else np.arange(len(lengths))
    order = np.lexsort((tiebreak, lengths))
    cap = max_tokens or np.iinfo(np.int64).max
    batches, start = [], 0
    sorted_len = lengths[order]
    while start < len(order):
        # sorted ascending, so the batch's padded width is the length of its last pair
        end = start + 1
        while (end < len(order) and end - start < max_sentences
               and (end - start + 1) * sorted_len[end] <= cap):
            end += 1
        batches.append(order[start:end])
        start = end
    if shuffle:
        rng.shuffle(batches)
    return batches


def shard(batches: list, rank: int, world: int) -> list:
    """This process's share of an epoch: every world-th batch, equal counts on every rank."""
    usable = len(batches) - len(batches) % world if len(batches) >= world else len(batches)
    return batches[rank:usable:world]


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
    for index in batches:
        batch = collate(corpus, index, ids)
        yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
