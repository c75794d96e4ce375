"""Every data source form, the errors users see for bad data, the on-disk caches, tokenize's
chunked corpus building, and `python data.py audit`. All offline: Hub paths are exercised with a
local dataset repository laid out like the Hub's wmt/wmt14 (README configs + parquet files)."""

import csv
import dataclasses
import gzip
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

import data
from config import TrainConfig, UserError
from data import (
    encode_sources,
    encode_targets,
    load_pretrained_tokenizer,
    load_text,
    token_batches,
    tokenize,
)
from helpers import ROOT, subprocess_env

EN = ['a small dog runs, "fast"', "the red cat sleeps", "NA", "two birds sing loudly"]
DE = ['ein kleiner Hund rennt, "schnell"', "die rote Katze schläft", "null", "zwei Vögel singen"]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """Each test gets its own datasets cache: nothing lands in ~/.cache, nothing is shared."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.fixture
def cfg() -> TrainConfig:
    return TrainConfig(src_lang="en", tgt_lang="de", dataset_config="de-en")


def write(path: Path, text: str | bytes) -> Path:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def lines(rows: list[str]) -> str:
    return "".join(r + "\n" for r in rows)


def assert_pairs(ds, en=EN, de=DE):
    assert ds.column_names == ["src", "tgt"]
    assert ds["src"] == en and ds["tgt"] == de


def translation_dataset(en=EN, de=DE) -> datasets.Dataset:
    features = datasets.Features({"translation": datasets.Translation(languages=["de", "en"])})
    rows = [{"de": d, "en": e} for e, d in zip(en, de, strict=True)]
    return datasets.Dataset.from_dict({"translation": rows}, features=features)


# ---------------------------------------------------------------------------------------------
# Each source format


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_aligned_text_files(tmp_path, cfg, suffix):
    write(tmp_path / f"train.en{suffix}", lines(EN))
    write(tmp_path / f"train.de{suffix}", lines(DE))
    assert_pairs(load_text(str(tmp_path / f"train.{{lang}}{suffix}"), cfg, "train"))


@pytest.mark.parametrize("name", ["train.jsonl", "train.json", "train.jsonl.gz"])
def test_jsonl_translation_records(tmp_path, cfg, name):
    records = [{"translation": {"en": e, "de": d}} for e, d in zip(EN, DE, strict=True)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    assert_pairs(load_text(str(write(tmp_path / name, text + "\n")), cfg, "train"))


def test_jsonl_language_keys(tmp_path, cfg):
    text = "".join(
        json.dumps({"id": i, "de": d, "en": e}) + "\n"
        for i, (e, d) in enumerate(zip(EN, DE, strict=True))
    )
    assert_pairs(load_text(str(write(tmp_path / "t.jsonl", text)), cfg, "train"))


@pytest.mark.parametrize("translation_column", [True, False])
def test_parquet(tmp_path, cfg, translation_column):
    if translation_column:
        ds = translation_dataset()
    else:
        ds = datasets.Dataset.from_dict({"de": DE, "en": EN, "score": [1.0] * len(EN)})
    ds.to_parquet(str(tmp_path / "t.parquet"))
    assert_pairs(load_text(str(tmp_path / "t.parquet"), cfg, "train"))


def test_columns_that_do_not_name_their_languages_are_refused(tmp_path, cfg):
    # "src"/"tgt" say nothing of direction: a de->en run read them as en->de
    datasets.Dataset.from_dict({"src": EN, "tgt": DE}).to_parquet(str(tmp_path / "t.parquet"))
    datasets.Dataset.from_dict({"src": EN, "tgt": DE}).save_to_disk(str(tmp_path / "saved"))
    for spec in ("t.parquet", "saved"):
        with pytest.raises(UserError, match=r"expected a 'translation' column .*\['src', 'tgt'\]"):
            load_text(str(tmp_path / spec), cfg, "train")


def test_empty_or_damaged_parquet_and_saved_datasets_are_one_line(tmp_path, cfg):
    datasets.Dataset.from_dict({"en": [], "de": []}).to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(UserError, match=r"empty\.parquet: no sentence pairs$"):
        load_text(str(tmp_path / "empty.parquet"), cfg, "train")
    translation_dataset().save_to_disk(str(tmp_path / "saved"))
    for arrow in (tmp_path / "saved").glob("*.arrow"):
        arrow.unlink()
    with pytest.raises(UserError, match=r"saved: cannot load the saved dataset \("):
        load_text(str(tmp_path / "saved"), cfg, "train")


def test_a_csv_field_past_csvs_default_limit_is_read(tmp_path, cfg):
    # csv refuses fields over 131,072 characters by default: the whole load stopped
    write(tmp_path / "t.tsv", f"en\tde\n{'a ' * 70_000}\tb\nx\ty\n")
    assert [len(s) for s in load_text(str(tmp_path / "t.tsv"), cfg, "train")["src"]] == [140_000, 1]


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.csv.gz"])
def test_csv_and_tsv_keep_text_as_written(tmp_path, cfg, name):
    # "NA" and "null" stay strings, quotes and commas survive, columns are found by name.
    path = tmp_path / name
    if ".tsv" in name:
        pairs = enumerate(zip(EN, DE, strict=True))
        rows = ["id\tde\ten"] + [f"{i}\t{d}\t{e}" for i, (e, d) in pairs]
        write(path, lines(rows))
    else:
        with open(tmp_path / "plain.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["en", "de"])
            w.writerows(zip(EN, DE, strict=True))
        write(path, (tmp_path / "plain.csv").read_bytes())
    assert_pairs(load_text(str(path), cfg, "train"))


def test_a_quoted_csv_field_over_two_lines_keeps_its_line_break(tmp_path, cfg):
    # pandas' to_csv writes a sentence holding a newline like this; read line by line, its
    # two halves were glued into one word ("helloworld")
    write(tmp_path / "t.csv", 'en,de\n"hello\nworld",hallo welt\nthe cat,die Katze\n')
    ds = load_text(str(tmp_path / "t.csv"), cfg, "train")
    assert ds["src"] == ["hello\nworld", "the cat"] and ds["tgt"] == ["hallo welt", "die Katze"]


def test_a_rewritten_parquet_file_is_read_anew_even_with_its_old_time(tmp_path, cfg):
    # datasets keys a Parquet file's cache by its mtime alone: `cp -p` or `rsync -t` of new
    # rows over old ones gave the old rows back
    path = tmp_path / "t.parquet"
    datasets.Dataset.from_dict({"en": ["a cat"], "de": ["eine Katze"]}).to_parquet(str(path))
    assert load_text(str(path), cfg, "train")["src"] == ["a cat"]
    stat = path.stat()
    datasets.Dataset.from_dict({"en": ["two dogs", "x"], "de": ["zwei Hunde", "y"]}).to_parquet(
        str(path)
    )
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_text(str(path), cfg, "train")["src"] == ["two dogs", "x"]
    # one cached copy per file: the older version's is gone
    versions = Path(datasets.config.HF_DATASETS_CACHE, "parquet_files").glob("*/*")
    assert len([v for v in versions if v.is_dir()]) == 1


def test_a_file_rewritten_with_its_size_and_time_kept_is_read_anew(tmp_path, cfg):
    # the cache was keyed by size and mtime: `cp -p` of a same-size edit gave the old rows
    write(tmp_path / "t.en", "Two dogs\n")
    write(tmp_path / "t.de", "Zwei Hunde\n")
    assert load_text(str(tmp_path / "t.{lang}"), cfg, "train")["src"] == ["Two dogs"]
    stat = (tmp_path / "t.en").stat()
    write(tmp_path / "t.en", "Tw0 dogs\n")
    os.utime(tmp_path / "t.en", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (tmp_path / "t.en").stat().st_size == stat.st_size
    assert load_text(str(tmp_path / "t.{lang}"), cfg, "train")["src"] == ["Tw0 dogs"]


def test_a_folders_file_rewritten_with_its_size_and_time_kept_is_read_anew(tmp_path, cfg):
    # the folder's cache was keyed by size and mtime too
    cfg = dataclasses.replace(cfg, dataset_config=None)
    (tmp_path / "d").mkdir()
    path = tmp_path / "d" / "train.parquet"
    datasets.Dataset.from_dict({"en": ["Two dogs"], "de": ["Zwei Hunde"]}).to_parquet(str(path))
    assert load_text(str(tmp_path / "d"), cfg, "train")["src"] == ["Two dogs"]
    stat = path.stat()
    datasets.Dataset.from_dict({"en": ["Tw0 dogs"], "de": ["Zwei Hunde"]}).to_parquet(str(path))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    assert load_text(str(tmp_path / "d"), cfg, "train")["src"] == ["Tw0 dogs"]


def test_a_stray_csv_quote_is_an_error_not_merged_lines(tmp_path, cfg):
    write(tmp_path / "q.csv", 'en,de\n"Stop,Halt\nGo.,Geh.\nHe said "no".,Er sagte "nein".\n')
    with pytest.raises(UserError, match=r"q\.csv, line \d+: "):
        load_text(str(tmp_path / "q.csv"), cfg, "train")
    # a quote never closed: named by the line it opens on, not the file's last
    write(tmp_path / "u.csv", 'en,de\na,b\n"Hello,Hallo\nc,d\ne,f\n')
    with pytest.raises(UserError, match=r"u\.csv, line 3: unexpected end of data"):
        load_text(str(tmp_path / "u.csv"), cfg, "train")


def test_a_raw_tab_inside_a_jsonl_sentence_is_text(tmp_path, cfg):
    # not valid JSON, but what many writers produce: refused before as "Invalid control character"
    write(tmp_path / "t.jsonl", '{"translation": {"en": "a\tb", "de": "c"}}\n')
    assert load_text(str(tmp_path / "t.jsonl"), cfg, "train")["src"] == ["a\tb"]


def test_a_jsonl_folder_with_an_irregular_translation_row_says_so(tmp_path, cfg):
    # datasets typed the column as Json, and the error listed ['translation'] as if it lacked one
    rows = [{"translation": {"en": "a", "de": "b"}}] * 3 + [{"translation": {"en": "c"}}]
    (tmp_path / "j").mkdir()
    write(tmp_path / "j" / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"/j: its 'translation' column is not text under 'en' and "
                       r"'de' in every row \(datasets read it as Json\)"):  # fmt: skip
        load_text(str(tmp_path / "j"), dataclasses.replace(cfg, dataset_config=None), "train")
    with pytest.raises(UserError, match=r"train\.jsonl, line 4: "):  # the file itself: its line
        load_text(str(tmp_path / "j" / "train.jsonl"), cfg, "train")


def test_tsv_lines_are_split_on_tabs_alone(tmp_path, cfg):
    # a \r inside a sentence is text, as in plain-text and JSONL files (csv refused the line);
    # a blank line is skipped
    write(tmp_path / "r.tsv", "en\tde\na\rb\tc\n\nthe cat\tdie Katze\n")
    ds = load_text(str(tmp_path / "r.tsv"), cfg, "train")
    assert ds["src"] == ["a\rb", "the cat"] and ds["tgt"] == ["c", "die Katze"]
    # a header naming a language twice: which column is it?
    write(tmp_path / "d.tsv", "en\tde\ten\na\tb\tc\n")
    with pytest.raises(UserError, match=r"d\.tsv: expected a header line naming .* once each"):
        load_text(str(tmp_path / "d.tsv"), cfg, "train")
    # other columns may repeat, or be unnamed (a spreadsheet's trailing delimiters)
    write(tmp_path / "n.tsv", "en\tde\tnote\tnote\na\tb\tx\ty\n")
    write(tmp_path / "n.csv", "en,de,,\na,b,,\n")
    for name in ("n.tsv", "n.csv"):
        ds = load_text(str(tmp_path / name), cfg, "train")
        assert ds["src"] == ["a"] and ds["tgt"] == ["b"]


def test_csv_in_a_dataset_directory_is_refused_for_the_file_itself(tmp_path, cfg):
    # datasets would read it with pandas, whose quoting merged and shifted pairs silently
    for name in ("train.tsv", "train.csv.gz"):
        (tmp_path / name).mkdir()
        write(tmp_path / name / name, 'en\tde\n"Stop\tHalt\nGo.\tGeh.\n')
        with pytest.raises(UserError, match=f"CSV/TSV files in a dataset directory .*/{name}"):
            load_text(str(tmp_path / name), cfg, "train")
    # nor beside datasets' metadata (not data), nor as a config's files in a README's configs
    (tmp_path / "meta").mkdir()
    write(tmp_path / "meta" / "train.tsv", 'en\tde\n"Stop\tHalt\nGo.\tGeh.\n')
    write(tmp_path / "meta" / "dataset_infos.json", "{}\n")
    with pytest.raises(UserError, match="CSV/TSV files in a dataset directory .*/train.tsv"):
        load_text(str(tmp_path / "meta"), dataclasses.replace(cfg, dataset_config=None), "train")
    (tmp_path / "meta" / "dataset_infos.json").unlink()
    write(tmp_path / "meta" / "train.tsv", "en\tde\nStop\tHalt\n")  # what pandas reads
    datasets.Dataset.from_dict({"en": EN, "de": DE}).to_parquet(
        str(tmp_path / "meta" / "p.parquet")
    )
    write(tmp_path / "meta" / "README.md", "---\nconfigs:\n- config_name: tsv\n  data_files:\n"
          "  - split: train\n    path: train.tsv\n- config_name: pq\n  data_files:\n"
          "  - split: train\n    path: p.parquet\n---\n")  # fmt: skip
    with pytest.raises(UserError, match="CSV/TSV files in a dataset directory .*/train.tsv"):
        load_text(str(tmp_path / "meta"), dataclasses.replace(cfg, dataset_config="tsv"), "train")
    # a CSV beside the data files (scores, notes) is not what datasets reads: no refusal
    (tmp_path / "p").mkdir()
    datasets.Dataset.from_dict({"en": EN, "de": DE}).to_parquet(str(tmp_path / "p" / "t.parquet"))
    write(tmp_path / "p" / "scores.csv", "id,score\n1,0.5\n")
    assert_pairs(
        load_text(str(tmp_path / "p"), dataclasses.replace(cfg, dataset_config=None), "train")
    )


def test_a_corrupt_gz_is_one_line_naming_it(tmp_path, cfg):
    write(tmp_path / "z.en.gz", lines(EN))
    raw = bytearray(gzip.compress(lines(DE).encode()))
    raw[12:20] = b"\xff" * 8  # inside the deflate stream
    (tmp_path / "z.de.gz").write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"z\.de\.gz: cannot read"):
        load_text(str(tmp_path / "z.{lang}.gz"), cfg, "train")


def test_a_null_sentence_reads_as_empty_not_none(tmp_path, cfg):
    # train.py's validation BLEU and evaluate.py translate the texts as read: a None crashed
    # them after a whole epoch; as "" it is an empty side, which training drops with a count
    ds = datasets.Dataset.from_dict(
        {"en": ["the cat", None, "a dog"], "de": ["die Katze", "x", None]}
    )
    ds.to_parquet(str(tmp_path / "v.parquet"))
    got = load_text(str(tmp_path / "v.parquet"), cfg, "validation")
    assert got["src"] == ["the cat", "", "a dog"] and got["tgt"] == ["die Katze", "x", ""]
    # columns already named src and tgt take a shorter path
    ds.rename_columns({"en": "src", "de": "tgt"}).to_parquet(str(tmp_path / "w.parquet"))
    named = dataclasses.replace(cfg, src_lang="src", tgt_lang="tgt")
    got = load_text(str(tmp_path / "w.parquet"), named, "validation")
    assert got["src"] == ["the cat", "", "a dog"] and got["tgt"] == ["die Katze", "x", ""]
    # and in JSON Lines (it was "no 'de' text", though the key is there)
    rows = [{"translation": {"en": e, "de": d}} for e, d in zip(ds["en"], ds["de"], strict=True)]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = load_text(str(tmp_path / "v.jsonl"), cfg, "validation")
    assert got["src"] == ["the cat", "", "a dog"] and got["tgt"] == ["die Katze", "x", ""]


def test_saved_dataset_and_dataset_dict(tmp_path, cfg):
    translation_dataset().save_to_disk(str(tmp_path / "one"))
    assert_pairs(load_text(str(tmp_path / "one"), cfg, "train"))
    splits = {"train": translation_dataset(EN[:2], DE[:2]), "test": translation_dataset()}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dict"))
    assert_pairs(load_text(str(tmp_path / "dict"), cfg, "test"))
    with pytest.raises(UserError, match=r"no split 'validation' \(it has train, test\)"):
        load_text(str(tmp_path / "dict"), cfg, "validation")


@pytest.fixture
def wmt14_repo(tmp_path) -> Path:
    """A local stand-in for the Hub's wmt/wmt14: same README configs, file layout and schema."""
    repo = tmp_path / "wmt14"
    (repo / "de-en").mkdir(parents=True)
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: de-en\n  data_files:\n"
        "  - split: train\n    path: de-en/train-*\n"
        "  - split: validation\n    path: de-en/validation-*\n"
        "  - split: test\n    path: de-en/test-*\n---\n# WMT14 stand-in\n"
    )
    for split, n in (("train", 4), ("validation", 2), ("test", 3)):
        ds = translation_dataset(EN[:n], DE[:n])
        ds.to_parquet(str(repo / "de-en" / f"{split}-00000-of-00001.parquet"))
    return repo


def test_dataset_repository_with_config_and_split_names(wmt14_repo, cfg):
    train = load_text(str(wmt14_repo), cfg, "train")
    assert_pairs(train)
    # the same fingerprint every time, so its tokenization is cached across runs
    assert load_text(str(wmt14_repo), cfg, "train")._fingerprint == train._fingerprint
    assert_pairs(load_text(str(wmt14_repo), cfg, "validation"), EN[:2], DE[:2])
    assert_pairs(load_text(str(wmt14_repo), cfg, "test"), EN[:3], DE[:3])


def test_dataset_repository_wrong_config_or_split(wmt14_repo, cfg):
    with pytest.raises(
        UserError,
        match=r"split 'valid'.*Unknown split.*\*_split; evaluate.py: --hub_config, --split\)$",
    ):
        load_text(str(wmt14_repo), cfg, "valid")
    bad = TrainConfig(src_lang="en", tgt_lang="de", dataset_config="fr-en")
    with pytest.raises(UserError, match=r"config 'fr-en'.*not found.*dataset_config"):
        load_text(str(wmt14_repo), bad, "train")


def test_a_dataset_repository_rewritten_with_its_old_times_is_read_anew(wmt14_repo, cfg):
    # datasets keys a repository's files by their mtimes alone, as it keys a Parquet file
    assert_pairs(load_text(str(wmt14_repo), cfg, "test"), EN[:3], DE[:3])
    path = wmt14_repo / "de-en" / "test-00000-of-00001.parquet"
    stat = path.stat()
    translation_dataset(EN[:1], DE[:1]).to_parquet(str(path))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert_pairs(load_text(str(wmt14_repo), cfg, "test"), EN[:1], DE[:1])


def test_a_bad_file_in_a_dataset_repository_is_named_in_one_line(tmp_path):
    # datasets logs the file and row to stderr (its logger's handlers), then raises an error
    # that names neither: the error names them, and nothing else is printed
    repo = tmp_path / "repo"
    repo.mkdir()
    write(repo / "train.jsonl", '{"translation": {"en": "a", "de": "b"}}\n{"translation": {\n')
    printed, handler = [], logging.Handler()
    handler.emit = lambda record: printed.append(record.getMessage())
    logging.getLogger("datasets").addHandler(handler)
    cfg = TrainConfig(src_lang="en", tgt_lang="de", dataset_config=None)
    try:
        with pytest.raises(UserError, match=r"repo: cannot load the dataset repository: .*train"):
            load_text(str(repo), cfg, "train")
    finally:
        logging.getLogger("datasets").removeHandler(handler)
    assert printed == []


def test_files_that_no_split_takes_are_refused_not_skipped(tmp_path):
    cfg = TrainConfig(src_lang="en", tgt_lang="de", dataset_config=None)
    # datasets takes splits from file names: beside a train-*.parquet, europarl.parquet and
    # newstest2013.parquet belong to no split, and were silently not read
    repo = tmp_path / "mix"
    repo.mkdir()
    translation_dataset(EN[:3], DE[:3]).to_parquet(str(repo / "train-commoncrawl.parquet"))
    translation_dataset(EN, DE).to_parquet(str(repo / "europarl.parquet"))
    translation_dataset(EN[:1], DE[:1]).to_parquet(str(repo / "newstest2013.parquet"))
    with pytest.raises(UserError, match=r"mix: .* \(train\), which leaves out 2 data file\(s\): "
                       r"europarl.parquet, newstest2013.parquet; name each file"):  # fmt: skip
        load_text(str(repo), cfg, "train")
    (repo / "europarl.parquet").rename(repo / "train-europarl.parquet")
    (repo / "newstest2013.parquet").rename(repo / "validation-newstest2013.parquet")
    (repo / "dataset_infos.json").write_text("{}\n")  # datasets' own metadata: not data
    assert len(load_text(str(repo), cfg, "train")) == 3 + len(EN)
    assert_pairs(load_text(str(repo), cfg, "validation"), EN[:1], DE[:1])
    # a README.md without configs leaves the splits to the file names too
    readme = tmp_path / "readme"
    readme.mkdir()
    (readme / "README.md").write_text("# my corpus\n")
    translation_dataset(EN[:3], DE[:3]).to_parquet(str(readme / "train-cc.parquet"))
    translation_dataset(EN, DE).to_parquet(str(readme / "europarl.parquet"))
    with pytest.raises(UserError, match=r"leaves out 1 data file\(s\): europarl.parquet;"):
        load_text(str(readme), cfg, "train")
    other = tmp_path / "other"  # files without split names: all of them are train
    other.mkdir()
    translation_dataset(EN[:3], DE[:3]).to_parquet(str(other / "europarl.parquet"))
    translation_dataset(EN[3:], DE[3:]).to_parquet(str(other / "commoncrawl.parquet"))
    assert len(load_text(str(other), cfg, "train")) == len(EN)


def test_a_readme_says_which_file_is_which_split(tmp_path):
    # no split names in the files: the README's configs map them, and every file is read
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        "  - split: train\n    path: europarl.parquet\n"
        "  - split: test\n    path: newstest.parquet\n---\n"
    )
    translation_dataset().to_parquet(str(repo / "europarl.parquet"))
    translation_dataset(EN[:1], DE[:1]).to_parquet(str(repo / "newstest.parquet"))
    cfg = TrainConfig(src_lang="en", tgt_lang="de", dataset_config="default")
    assert_pairs(load_text(str(repo), cfg, "train"))
    assert_pairs(load_text(str(repo), cfg, "test"), EN[:1], DE[:1])


def test_a_git_lfs_pointer_is_named_as_one(wmt14_repo, cfg):
    # a Hub dataset cloned without git-lfs: its Parquet files are small text pointers
    path = wmt14_repo / "de-en" / "test-00000-of-00001.parquet"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    with pytest.raises(UserError, match=r"test-00000-of-00001.parquet: a Git LFS pointer, not the "
                       r"data: run git lfs pull in .*wmt14$"):  # fmt: skip
        load_text(str(wmt14_repo), cfg, "train")


def test_a_damaged_parquet_file_in_a_repository_is_named(wmt14_repo, cfg):
    path = wmt14_repo / "de-en" / "test-00000-of-00001.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match=r"wmt14: .*test-00000-of-00001.parquet") as e:
        load_text(str(wmt14_repo), cfg, "test")
    assert "\n" not in str(e.value)


def test_a_repository_of_several_configs_names_them_when_none_is_given(wmt14_repo, tmp_path):
    readme = (wmt14_repo / "README.md").read_text()
    (wmt14_repo / "fr-en").mkdir()
    for split in ("train", "validation", "test"):
        ds = datasets.Dataset.from_dict({"translation": [{"en": "a", "fr": "b"}]})
        ds.to_parquet(str(wmt14_repo / "fr-en" / f"{split}-00000-of-00001.parquet"))
    fr = readme.replace("de-en", "fr-en").split("---\n")[1].replace("configs:\n", "")
    (wmt14_repo / "README.md").write_text(readme.replace("---\n# WMT14", fr + "---\n# WMT14"))
    none = TrainConfig(src_lang="en", tgt_lang="de", dataset_config=None)
    with pytest.raises(UserError, match=r"missing.*'de-en', 'fr-en'.*\(train.py: dataset_config"):
        load_text(str(wmt14_repo), none, "train")


def test_language_missing_from_the_dataset(tmp_path, cfg):
    translation_dataset().save_to_disk(str(tmp_path / "ds"))
    fr = TrainConfig(src_lang="en", tgt_lang="fr")
    with pytest.raises(UserError, match=r"expected a 'translation' column with 'en' and 'fr'"):
        load_text(str(tmp_path / "ds"), fr, "train")


# ---------------------------------------------------------------------------------------------
# Hub names, offline


@pytest.mark.parametrize(
    ("name", "shown"),
    [("wmt14", "'wmt14' (= 'wmt/wmt14')"), ("someone/corpus", "'someone/corpus'")],
)
def test_hub_names_offline_give_one_clear_line(tmp_path, monkeypatch, cfg, name, shown):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        load_text(name, cfg, "train")
    message = str(e.value)
    assert message.startswith(f"cannot load dataset {shown} (de-en, train) from the Hugging Face")
    assert "To work offline" in message and "\n" not in message
    assert "--source and --reference" in message  # evaluate.py's flags too, not train.py's alone
    assert "nor is there a local directory" not in message
    if "/" in name:  # an owner/name whose owner is a local folder was meant as a local path
        (tmp_path / name.split("/")[0]).mkdir()
        with pytest.raises(UserError, match=f"Hub \\(nor is there a local directory {name} here"):
            load_text(name, cfg, "train")


@pytest.mark.parametrize("spec", ["data/multi30k/train", "./train", "corpus.tsv", "x.en.gz"])
def test_paths_are_never_sent_to_the_hub(tmp_path, monkeypatch, cfg, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=f"^data (file|path) not found: {spec}$"):
        load_text(spec, cfg, "train")


@pytest.mark.parametrize("spec", ["runs/multi30k/tokenizer", "./tok", "/nowhere/tok"])
def test_a_missing_tokenizer_directory_is_not_blamed_on_the_hub(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=f"^tokenizer directory not found: {spec}$"):
        load_pretrained_tokenizer(spec)


def test_a_tokenizer_file_or_an_incomplete_marian_folder_is_not_blamed_on_the_hub(tmp_path):
    (tmp_path / "tok").mkdir()
    for name in ("source.spm", "vocab.json", "tokenizer_config.json"):  # no target.spm
        write(tmp_path / "tok" / name, "{}")
    with pytest.raises(UserError, match=r"^cannot load tokenizer .*tok' \(local\): a Marian "
                       r"tokenizer without target.spm$"):  # fmt: skip
        load_pretrained_tokenizer(str(tmp_path / "tok"))
    with pytest.raises(UserError, match=r"source.spm' \(local\): a file: give the tokenizer's"):
        load_pretrained_tokenizer(str(tmp_path / "tok" / "source.spm"))
    (tmp_path / "empty").mkdir()  # no Marian file at all: not called an incomplete Marian one
    (tmp_path / "gpt").mkdir()  # a vocab.json, as GPT-2's, but no SentencePiece model
    write(tmp_path / "gpt" / "vocab.json", "{}")
    for name in ("empty", "gpt"):
        with pytest.raises(UserError, match=rf"{name}' \(local\): ") as e:
            load_pretrained_tokenizer(str(tmp_path / name))
        assert "Marian" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Errors in the data itself: one line naming the file (and the line)


@pytest.mark.parametrize(("en", "de"), [(EN, DE[:3]), (EN[:3], DE), ([""], DE[:2])])
def test_misaligned_files_name_both_files_and_counts(tmp_path, cfg, en, de):
    write(tmp_path / "t.en", lines(en))
    write(tmp_path / "t.de", lines(de))
    with pytest.raises(UserError) as e:
        load_text(str(tmp_path / "t.{lang}"), cfg, "train")
    assert str(e.value) == (
        f"misaligned files: {tmp_path / 't.en'} has {len(en)} lines, "
        f"{tmp_path / 't.de'} has {len(de)}"
    )


def test_crlf_and_byte_order_mark_are_dropped(tmp_path, cfg):
    write(tmp_path / "t.en", "\ufeff" + "".join(e + "\r\n" for e in EN))
    write(tmp_path / "t.de", "".join(d + "\r\n" for d in DE))
    assert_pairs(load_text(str(tmp_path / "t.{lang}"), cfg, "train"))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_non_utf8_names_file_and_line(tmp_path, cfg, suffix):
    write(tmp_path / f"t.en{suffix}", lines(EN[:2]).encode() + b"caf\xe9 au lait\n" + b"x\n")
    write(tmp_path / f"t.de{suffix}", lines(DE))
    with pytest.raises(UserError, match=r"t\.en(\.gz)?, line 3: not UTF-8 \(invalid .* byte 4 "):
        load_text(str(tmp_path / f"t.{{lang}}{suffix}"), cfg, "train")


@pytest.mark.parametrize("name", ["t.{lang}", "t.{lang}.gz", "t.jsonl", "t.csv"])
def test_empty_file_is_a_clear_error(tmp_path, cfg, name):
    for lang in ("en", "de"):
        write(tmp_path / name.replace("{lang}", lang), b"")
    with pytest.raises(UserError, match=r"t\.(en|jsonl|csv)(\.gz)?: empty file$"):
        load_text(str(tmp_path / name), cfg, "train")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("{not json", r"line 2: not JSON \(Expecting property name"),
        ('{"translation": {"en": "x"}}', r"line 2: no 'de' text \(keys: en\)"),
        ('{"translation": {"en": "x", "de": 5}}', r"line 2: 'de' is int, not text"),
        ('["en", "de"]', r"line 2: expected an object like"),
        ('{"en": "x\\ud800", "de": "y"}', r"line 2: 'en' holds '\\ud800', half of a UTF-16"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, cfg, line, error):
    good = json.dumps({"translation": {"en": "a", "de": "b"}})
    path = write(tmp_path / "t.jsonl", f"{good}\n{line}\n{good}\n")
    with pytest.raises(UserError, match=f"t.jsonl, {error}"):
        load_text(str(path), cfg, "train")


def test_bad_csv_names_file_and_line(tmp_path, cfg):
    write(tmp_path / "a.csv", "english,german\nx,y\n")
    with pytest.raises(UserError, match=r"a\.csv: expected a header line naming the columns 'en'"):
        load_text(str(tmp_path / "a.csv"), cfg, "train")
    write(tmp_path / "b.tsv", "en\tde\nx\ty\nx\ty\tz\n")
    with pytest.raises(UserError, match=r"b\.tsv, line 3: 3 fields, the header has 2"):
        load_text(str(tmp_path / "b.tsv"), cfg, "train")


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("train.xlsx", r"cannot tell the data format from the name \(expected a Hub"),
        ("train.en", r"a plain-text file holds one language; .* e\.g\. .*/train\.\{lang\}$"),
        ("train.de.gz", r"a plain-text file holds one language; .* e\.g\. .*/train\.\{lang\}\.gz$"),
        ("train.txt", r"a plain-text file holds one language; .* e\.g\. data/train\.\{lang\}\.gz$"),
    ],
)
def test_unknown_or_ambiguous_format(tmp_path, cfg, name, error):
    path = write(tmp_path / name, "x\n")
    with pytest.raises(UserError, match=f"{path.name}: {error}"):
        load_text(str(path), cfg, "train")


def test_lang_placeholder_on_a_two_language_format(tmp_path, cfg):
    with pytest.raises(UserError, match=r"placeholder is for aligned plain-text files"):
        load_text(str(tmp_path / "train.{lang}.jsonl"), cfg, "train")


def test_directory_that_is_not_a_dataset(tmp_path, cfg):
    write(tmp_path / "train.en.gz", "x\n")
    with pytest.raises(UserError, match="not a dataset directory"):
        load_text(str(tmp_path), cfg, "train")


# ---------------------------------------------------------------------------------------------
# Caches: text read once, tokenized once


def test_text_files_are_read_once_then_served_from_the_cache(tmp_path, cfg, monkeypatch):
    write(tmp_path / "t.en", lines(EN))
    write(tmp_path / "t.de", lines(DE))
    first = load_text(str(tmp_path / "t.{lang}"), cfg, "train")
    assert first.cache_files  # an on-disk Arrow dataset, so map() results are cached too

    def no_reading(path):
        raise AssertionError(f"read {path} again")

    monkeypatch.setattr(data, "iter_lines", no_reading)
    again = load_text(str(tmp_path / "t.{lang}"), cfg, "train")
    assert_pairs(again)
    assert again._fingerprint == first._fingerprint
    monkeypatch.undo()
    os.utime(tmp_path / "t.de", ns=(1, 1))  # the file changed: read it again
    write(tmp_path / "t.de", lines([d.upper() for d in DE]))
    assert load_text(str(tmp_path / "t.{lang}"), cfg, "train")["tgt"][1] == DE[1].upper()


@pytest.fixture(scope="module")
def tokenizer():
    texts = EN + DE + ["the dog and the cat", "der Hund und die Katze"] * 5
    return data.train_tokenizer(iter(texts * 3), "bpe", 90)


@pytest.mark.parametrize("null", [False, True])  # a null is read as "" by a map of its own
def test_a_saved_dataset_folder_is_only_read(tmp_path, cfg, tokenizer, null):
    # datasets.map writes its cache beside a save_to_disk dataset's files: a read-only folder
    # failed ("cannot write ...: Read-only file system"), a shared one filled with cache files
    en, de = [*EN, None if null else "a line"], [*DE, "eine Zeile"]
    datasets.Dataset.from_dict({"en": en, "de": de}).save_to_disk(str(tmp_path / "ds"))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "ds").rglob("*"))
    for _ in range(2):  # the second time from the cache
        log = []
        ds = load_text(str(tmp_path / "ds"), cfg, "train")
        assert len(tokenize(ds, tokenizer, 64, "train", log.append)) == 5 - null
    assert "loaded from the cache" in log[0]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "ds").rglob("*")) == before


def test_tokenize_second_run_uses_the_cache(tmp_path, cfg, tokenizer, monkeypatch):
    write(tmp_path / "t.en", lines(EN))
    write(tmp_path / "t.de", lines(DE))
    ds = load_text(str(tmp_path / "t.{lang}"), cfg, "train")
    first_log, second_log = [], []
    first = tokenize(ds, tokenizer, 64, "train", first_log.append)
    assert len(first_log) == 1 and first_log[0].startswith("train: tokenized 4 pairs in")

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(data, "_encode_batch", no_tokenizing)
    again = tokenize(
        load_text(str(tmp_path / "t.{lang}"), cfg, "train"),
        tokenizer,
        64,
        "train",
        second_log.append,
    )
    assert second_log[0].startswith("train: token ids of 4 pairs loaded from the cache")
    assert second_log[0].endswith("nothing tokenized")
    for a, b in zip(
        (first.src, first.src_off, first.tgt, first.tgt_off),
        (again.src, again.src_off, again.tgt, again.tgt_off),
        strict=True,
    ):
        assert np.array_equal(a, b)
    # The same tokenizer loaded back from disk has the same fingerprint: still cached.
    tokenizer.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert data.tokenizer_fingerprint(reloaded) == data.tokenizer_fingerprint(tokenizer)
    tokenize(ds, reloaded, 64, "train", second_log.append)
    assert "loaded from the cache" in second_log[-1]


def test_trained_tokenizer_is_cached_by_the_data_and_loads_with_autotokenizer(
    tmp_path, cfg, monkeypatch
):
    from transformers import AutoTokenizer

    write(tmp_path / "t.en", lines(EN * 5))
    write(tmp_path / "t.de", lines(DE * 5))
    ds = load_text(str(tmp_path / "t.{lang}"), cfg, "train")
    tok_cfg = TrainConfig(tokenizer={"train": "unigram", "vocab_size": 60})
    said = []
    first = data.load_tokenizer(tok_cfg, tmp_path / "run1", ds, log=said.append)
    n = len(first)  # the size it got: 54 of the 60 asked for, on this little text
    assert re.fullmatch(
        rf"tokenizer: unigram {n} trained on train in \d+\.\d s \(asked for 60\)", said[0]
    )
    saved = AutoTokenizer.from_pretrained(tmp_path / "run1" / "tokenizer")
    assert encode_sources(saved, EN) == encode_sources(first, EN)
    assert data.SpecialIds.of(saved) == data.SpecialIds.of(first)

    def no_training(*args):
        raise AssertionError("trained again")

    monkeypatch.setattr(data, "train_tokenizer", no_training)
    messages = []
    second = data.load_tokenizer(tok_cfg, tmp_path / "run2", ds, log=messages.append)
    assert messages[0].startswith(f"tokenizer: unigram {n} trained earlier on the same data (")
    assert data.tokenizer_fingerprint(second) == data.tokenizer_fingerprint(first)
    assert (tmp_path / "run2" / "tokenizer" / "tokenizer.json").exists()
    # the size asked for is said once only where it differs
    monkeypatch.undo()
    said = []
    exact = TrainConfig(tokenizer={"train": "unigram", "vocab_size": n})
    assert len(data.load_tokenizer(exact, tmp_path / "run3", ds, log=said.append)) == n
    assert re.fullmatch(rf"tokenizer: unigram {n} trained on train in \d+\.\d s", said[0])


def test_tokenize_with_worker_processes_matches_one_process(tmp_path, cfg, tokenizer):
    write(tmp_path / "t.en", lines(EN * 3))
    write(tmp_path / "t.de", lines(DE * 3))
    ds = load_text(str(tmp_path / "t.{lang}"), cfg, "train")
    one = tokenize(ds, tokenizer, 64, "a", lambda _: None, num_proc=1)
    datasets.config.HF_DATASETS_CACHE = tmp_path / "other_cache"  # undone by the fixture
    two = tokenize(
        load_text(str(tmp_path / "t.{lang}"), cfg, "train"),
        tokenizer,
        64,
        "b",
        lambda _: None,
        num_proc=2,
    )
    assert np.array_equal(one.src, two.src) and np.array_equal(one.tgt_off, two.tgt_off)


def test_default_num_proc(monkeypatch):
    # worker processes only for big corpora (starting them costs seconds), at most 4, at most
    # one per core this process may use
    for cores, big in ((8, 4), (2, 2), (1, 1)):
        monkeypatch.setattr(data.os, "sched_getaffinity", lambda _, n=cores: set(range(n)))
        assert data.default_num_proc(199_999) == 1
        assert data.default_num_proc(200_000) == data.default_num_proc(4_500_000) == big


def test_tokenize_builds_the_corpus_chunk_by_chunk(tokenizer):
    # Several Arrow chunks, dropped pairs in the middle of a chunk and at chunk edges.
    src = ["the dog", "", "a cat sleeps", " ".join(["dog"] * 30), "two birds", "the red cat"]
    tgt = ["der Hund", "x", "", "ein Hund", " ".join(["Hund"] * 30), "die rote Katze"]
    parts = [
        datasets.Dataset.from_dict({"src": src[i : i + 2], "tgt": tgt[i : i + 2]})
        for i in range(0, 6, 2)
    ]
    ds = datasets.concatenate_datasets(parts)
    assert ds.with_format("arrow")[:].column("src").num_chunks == 3
    messages = []
    corpus = tokenize(ds, tokenizer, 20, "t", messages.append)
    kept = [0, 5]
    assert messages == ["t: dropped 2 empty pairs and 2 pairs longer than 20 tokens; 2 of 6 remain"]
    assert corpus.src.dtype == np.int32 and corpus.src_off.dtype == np.int64
    for i, j in enumerate(kept):
        s, t = corpus.pair(i)
        assert s.tolist() == encode_sources(tokenizer, [src[j]])[0]
        assert t.tolist() == encode_targets(tokenizer, [tgt[j]])[0]


def reference_batches(lengths, max_tokens, max_sentences, seed, epoch, shuffle=True):
    """The foundation's pair-by-pair loop, kept here to check the bisecting version."""
    rng = np.random.default_rng([seed, epoch])
    tiebreak = rng.random(len(lengths)) if shuffle else np.arange(len(lengths))
    order = np.lexsort((tiebreak, lengths))
    cap = max_tokens or np.iinfo(np.int64).max
    batches, start, sorted_len = [], 0, lengths[order]
    while start < len(order):
        end = start + 1
        while (
            end < len(order)
            and end - start < max_sentences
            and (end - start + 1) * sorted_len[end] <= cap
        ):
            end += 1
        batches.append(order[start:end])
        start = end
    if shuffle:
        rng.shuffle(batches)
    return batches


@pytest.mark.parametrize(
    ("max_tokens", "max_sentences"), [(64, 8), (1000, 1000), (None, 7), (40, 1)]
)
def test_token_batches_match_the_pair_by_pair_reference(max_tokens, max_sentences):
    lengths = np.random.default_rng(3).integers(1, 40, size=2000)
    for shuffle in (True, False):
        got = token_batches(lengths, max_tokens, max_sentences, 5, 2, shuffle)
        want = reference_batches(lengths, max_tokens, max_sentences, 5, 2, shuffle)
        assert [b.tolist() for b in got] == [b.tolist() for b in want]


# ---------------------------------------------------------------------------------------------
# Audit


def audit_table(out: str) -> dict[str, list[str]]:
    """The audit's table: row label -> cells per split (columns 14 characters wide)."""
    lines = out.splitlines()
    h = next(i for i, line in enumerate(lines) if line.split() == ["train", "valid"])
    width = lines[h].index("train") + len("train") - 14
    return {
        line[:width].strip(): [line[width:][i : i + 14].strip() for i in (0, 14)]
        for line in lines[h + 1 :]
    }


def test_audit_counts(tmp_path, capsys):
    # the two blank pairs are empty lines, not duplicates
    train_en = ["a b c", "a b c", "", "one two three four five six seven", "x y", "p q r", "", "",
                "one two three four"]  # fmt: skip
    train_de = ["A B C", "A B C", "leer", "eins", "X Y", "P Q R", "", "", "eins"]
    write(tmp_path / "train.en", lines(train_en))
    write(tmp_path / "train.de", lines(train_de))
    write(tmp_path / "valid.en", lines(["x y", "", " a b c "]))
    # an empty source with an over-long target: training counts it as empty, so must the audit
    write(tmp_path / "valid.de", lines(["X Y", "ganz neu und viel zu lang", "anders"]))
    cfg = TrainConfig(
        train_data=str(tmp_path / "train.{lang}"),
        valid_data=str(tmp_path / "valid.{lang}"),
        max_seq_length=4,
    )
    data.audit(cfg, whitespace=True)
    out = capsys.readouterr().out
    assert out.startswith("lengths: whitespace-separated words\n")
    assert f"train: {tmp_path / 'train.{lang}'}" in out
    table = audit_table(out)
    assert table["pairs"] == ["9", "3"]
    assert table["empty lines en / de"] == ["3 / 2", "1 / 0"]
    assert table["duplicate pairs"] == ["1", "0"]
    assert table["en length p50/p90/p99/max"] == ["3/7/7/7", "3/3/3/3"]
    # four words against one; seven against one is longer than 4, as training counts it
    assert table["length ratio > 3"] == ["1", "0"]
    assert table["longer than 4 words"] == ["1", "0"]
    # "x y" and " a b c " (trimmed) occur in train; the empty line does not count
    assert table["sources also in train"] == ["-", "2"]
    assert table["pairs also in train"] == ["-", "1"]
    # with max_length_ratio, the threshold training drops at; at 1.0 every unequal pair: train's
    # four words against one, valid's "a b c" against "anders" (an empty side never counts)
    data.audit(dataclasses.replace(cfg, max_length_ratio=1.0), whitespace=True)
    out = capsys.readouterr().out
    assert "> 1 (max_length_ratio: training drops them)" in out
    assert audit_table(out)["length ratio > 1"] == ["1", "1"]


def test_audit_names_the_split_of_data_that_has_splits(wmt14_repo, tmp_path, capsys):
    write(tmp_path / "t.en", lines(EN))
    write(tmp_path / "t.de", lines(DE))
    cfg = TrainConfig(train_data=str(wmt14_repo), valid_data=str(tmp_path / "t.{lang}"))
    data.audit(dataclasses.replace(cfg, test_data=str(wmt14_repo)), whitespace=True)
    out = capsys.readouterr().out  # a local repository, as a Hub name: which split was read
    assert f"train: {wmt14_repo} [train]\n" in out and f"test: {wmt14_repo} [test]\n" in out
    assert f"valid: {tmp_path / 't.{lang}'}\n" in out  # aligned files: read whole


def test_audit_with_the_tokenizer_counts_tokens(tmp_path, capsys):
    write(tmp_path / "t.en", lines(EN * 3))
    write(tmp_path / "t.de", lines(DE * 3))
    spec = str(tmp_path / "t.{lang}")
    cfg = TrainConfig(
        train_data=spec, valid_data=spec, tokenizer={"train": "bpe", "vocab_size": 80}
    )
    data.audit(cfg)
    out = capsys.readouterr().out
    assert "lengths: tokens including </s>, tokenizer bpe 80 trained on train" in out
    table = audit_table(out)
    tok = data.load_tokenizer(cfg, None, load_text(spec, cfg, "train"), log=lambda _: None)
    longest = max(len(ids) for ids in encode_sources(tok, EN))
    assert table["en length p50/p90/p99/max"][0].endswith(f"/{longest}")
    assert table["duplicate pairs"] == ["8", "8"]
    assert table["sources also in train"] == ["-", "12"]


def test_audit_command_line_on_text_files(tmp_path):
    write(tmp_path / "t.en", lines(EN))
    write(tmp_path / "t.de", lines(DE))
    env = subprocess_env(HF_DATASETS_CACHE=str(tmp_path / "hf"))
    args = [
        "audit",
        "--config",
        "configs/tiny.json",
        "--train_data",
        str(tmp_path / "t.{lang}"),
        "--valid_data",
        "null",
        "--whitespace",
    ]
    proc = subprocess.run(
        [sys.executable, "data.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pairs" in proc.stdout and "duplicate pairs" in proc.stdout
    assert "Generating" not in proc.stderr and "examples/s" not in proc.stderr  # no bars in a log
    bad = subprocess.run(
        [sys.executable, "data.py", "audit", "--train_data", "nope.{lang}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.strip() == "error: data file not found: nope.en"


def test_dataset_config_applies_to_the_hub_and_dataset_repositories_only(tmp_path):
    from data import has_splits, takes_config

    (tmp_path / "test.en").write_text("a\n")
    repo = tmp_path / "repo"  # a dataset repository (a clone of the Hub's): configs, splits
    repo.mkdir()
    (repo / "README.md").write_text("---\n---\n")
    datasets.DatasetDict({"test": datasets.Dataset.from_list([{"x": 1}])}).save_to_disk(
        tmp_path / "dict"
    )
    datasets.Dataset.from_list([{"x": 1}]).save_to_disk(tmp_path / "one")
    specs = ["wmt/wmt14", str(repo), str(tmp_path / "dict"), str(tmp_path / "one"),
             str(tmp_path / "test.{lang}"), str(tmp_path / "test.en")]  # fmt: skip
    assert [takes_config(s) for s in specs] == [True, True, False, False, False, False]
    assert [has_splits(s) for s in specs] == [True, True, True, False, False, False]


def test_delimited_files_skip_blank_lines_and_tsv_keeps_quotes(tmp_path, cfg):
    write(tmp_path / "b.csv", "en,de\na,b\n\nc,d\n")
    assert load_text(str(tmp_path / "b.csv"), cfg, "train")["src"] == ["a", "c"]
    # TSV fields are never quoted: a sentence that begins with a quote keeps it
    write(tmp_path / "q.tsv", 'en\tde\n"Hi" she said\t"Hallo" sagte sie\n')
    ds = load_text(str(tmp_path / "q.tsv"), cfg, "train")
    assert ds["src"] == ['"Hi" she said'] and ds["tgt"] == ['"Hallo" sagte sie']


def test_columns_of_numbers_are_not_text(tmp_path, cfg):
    datasets.Dataset.from_dict({"en": [1, 2], "de": [3, 4]}).to_parquet(str(tmp_path / "n.parquet"))
    with pytest.raises(UserError, match="columns must hold text"):
        load_text(str(tmp_path / "n.parquet"), cfg, "train")
