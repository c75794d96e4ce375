"""Tests for data.py: loading every kind of source, the trained tokenizer, tokenize's filters,
the flat corpus, token batching, sharding and collation."""

import gzip
import json

import datasets
import numpy as np
import pytest
import torch

from config import TrainConfig, UserError
from data import (
    Corpus,
    SpecialIds,
    both_ways,
    canonical_unigram,
    collate,
    encode_sources,
    encode_targets,
    load_text,
    load_tokenizer,
    sample_segmentations,
    shard,
    token_batches,
    tokenize,
    train_tokenizer,
)

EN = ["a small dog runs", "the red cat sleeps", "two birds sing loudly"]
DE = ["ein kleiner Hund rennt", "die rote Katze schläft", "zwei Vögel singen laut"]

SENTENCES = [
    f"{a} {n} {v} {p}"
    for a, n, v, p in zip(
        ["the", "a", "one", "every", "no", "some"] * 6,
        ["dog", "cat", "bird", "house", "tree", "river"] * 6,
        ["sees", "likes", "finds", "paints", "hears", "follows", "knows", "meets", "calls"] * 4,
        ["today.", "again!", "at night", "in the park", "by the river", "slowly", "quickly"] * 6,
    )
] + ["der Hund sieht die Katze", "die Katze mag den Vogel", "ein Vogel singt im Baum"] * 4


@pytest.fixture
def cfg() -> TrainConfig:
    return TrainConfig(src_lang="en", tgt_lang="de")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iter(SENTENCES), "bpe", 120)


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_trained_tokenizers_collapse_whitespace_and_read_written_specials_as_words(kind):
    tok = train_tokenizer(iter(SENTENCES), kind, 120)
    ids = SpecialIds.of(tok)
    plain = encode_sources(tok, ["der Hund sieht die Katze"])
    assert encode_sources(tok, ["  der  Hund\tsieht die Katze \u3000"]) == plain
    # invisible characters (a BOM inside a file, zero-width ones, controls) are not <unk>s
    assert encode_sources(tok, ["\ufeffder Hund\u200bsieht die\x00 Katze\x85"]) == plain
    assert encode_sources(tok, ["der\x0cHund\x1fsieht die Katze"]) == plain  # separators
    for encode in (encode_sources, encode_targets):
        (seq,) = encode(tok, ["der </s> Hund <pad> sieht <s>"])
        # only the </s> the tokenizer appends ends the sentence; the written ones are words
        assert seq[-1] == ids.eos and seq.count(tok.unk_token_id) == 3
        assert not {ids.pad, ids.eos, ids.start} & set(seq[:-1])


def test_a_unigram_vocabulary_smaller_than_the_alphabet_is_one_line():
    with pytest.raises(UserError, match="vocab_size 10 is too small to hold every character"):
        train_tokenizer(iter(SENTENCES), "unigram", 10)


def write_lines(path, lines: list[str], newline: str = "\n"):
    data = "".join(line + newline for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


# ---------------------------------------------------------------------------------------------
# Loading text


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_aligned_text_files(tmp_path, cfg, suffix):
    write_lines(tmp_path / f"train.en{suffix}", EN)
    write_lines(tmp_path / f"train.de{suffix}", DE)
    ds = load_text(str(tmp_path / f"train.{{lang}}{suffix}"), cfg, "train")
    assert ds.column_names == ["src", "tgt"]
    assert ds["src"] == EN and ds["tgt"] == DE


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_crlf_line_ends_are_stripped(tmp_path, cfg, suffix):
    write_lines(tmp_path / f"t.en{suffix}", EN, newline="\r\n")
    write_lines(tmp_path / f"t.de{suffix}", DE, newline="\r\n")
    ds = load_text(str(tmp_path / f"t.{{lang}}{suffix}"), cfg, "train")
    assert ds["src"] == EN and ds["tgt"] == DE


def test_unicode_line_separators_do_not_split_lines(tmp_path, cfg):
    # str.splitlines() would cut these lines in two and misalign the files.
    en = ["one\u2028two", "form\x0cfeed", "next\x85line"]
    write_lines(tmp_path / "t.en", en)
    write_lines(tmp_path / "t.de", DE)
    assert load_text(str(tmp_path / "t.{lang}"), cfg, "train")["src"] == en


def test_misaligned_files_name_both_files_and_counts(tmp_path, cfg):
    write_lines(tmp_path / "t.en", EN)
    write_lines(tmp_path / "t.de", DE[:2])
    with pytest.raises(UserError) as e:
        load_text(str(tmp_path / "t.{lang}"), cfg, "train")
    message = str(e.value)
    assert str(tmp_path / "t.en") in message and str(tmp_path / "t.de") in message
    assert "has 3 lines" in message and "has 2" in message


def test_missing_text_file_is_named(tmp_path, cfg):
    write_lines(tmp_path / "t.en", EN)
    with pytest.raises(UserError, match=f"data file not found: {tmp_path / 't.de'}"):
        load_text(str(tmp_path / "t.{lang}"), cfg, "train")


@pytest.fixture
def private_datasets_cache(tmp_path, monkeypatch):
    """load_dataset("json") writes an Arrow cache: keep it out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def test_jsonl_translation_records(tmp_path, cfg, private_datasets_cache):
    path = tmp_path / "train.jsonl"
    records = [{"translation": {"en": e, "de": d}} for e, d in zip(EN, DE)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    ds = load_text(str(path), cfg, "train")
    assert ds.column_names == ["src", "tgt"]
    assert ds["src"] == EN and ds["tgt"] == DE


def test_missing_jsonl_is_named(tmp_path, cfg):
    with pytest.raises(UserError, match=f"data file not found: {tmp_path / 'nope.jsonl'}"):
        load_text(str(tmp_path / "nope.jsonl"), cfg, "train")


def translations(en: list[str], de: list[str]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"translation": [{"en": e, "de": d} for e, d in zip(en, de)]})


def test_saved_dataset_directory(tmp_path, cfg):
    translations(EN, DE).save_to_disk(str(tmp_path / "ds"))
    ds = load_text(str(tmp_path / "ds"), cfg, "train")
    assert ds.column_names == ["src", "tgt"]
    assert ds["src"] == EN and ds["tgt"] == DE


def test_saved_dataset_dict_selects_the_split(tmp_path, cfg):
    splits = {"train": translations(EN[:2], DE[:2]), "validation": translations(EN[2:], DE[2:])}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "ds"))
    ds = load_text(str(tmp_path / "ds"), cfg, "validation")
    assert ds["src"] == EN[2:] and ds["tgt"] == DE[2:]


def test_saved_dataset_dict_missing_split_is_a_user_error(tmp_path, cfg):
    datasets.DatasetDict({"train": translations(EN, DE)}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(UserError, match="test"):
        load_text(str(tmp_path / "ds"), cfg, "test")


def test_dataset_without_translation_column(tmp_path, cfg):
    datasets.Dataset.from_dict({"text": EN}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(UserError, match="expected a 'translation' column"):
        load_text(str(tmp_path / "ds"), cfg, "train")


def assert_offline_hub_error(name: str, cfg: TrainConfig):
    with pytest.raises(UserError) as e:
        load_text(name, cfg, "train")
    message = str(e.value)
    assert f"cannot load dataset '{name}'" in message and "Hugging Face Hub" in message
    assert "To work offline" in message and "--train_data" in message
    assert "\n" not in message and e.value.__suppress_context__  # one line, no chained traceback


@pytest.mark.parametrize("name", ["wmt/wmt14", "wmt14"])
def test_hub_name_offline_is_a_user_error(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # no local directory of that name can interfere
    assert_offline_hub_error(name, TrainConfig(src_lang="en", tgt_lang="de"))


@pytest.mark.parametrize("spec", ["./missing/train", "/nonexistent/corpus.jsonl.gz", "x.txt"])
def test_missing_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch, cfg, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_text(spec, cfg, "train")


# ---------------------------------------------------------------------------------------------
# Tokenizer


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_trained_tokenizer(tmp_path, kind):
    from transformers import AutoTokenizer

    tok = train_tokenizer(iter(SENTENCES), kind, 120)
    assert (tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token) == (
        "<pad>",
        "<unk>",
        "<s>",
        "</s>",
    )
    ids = SpecialIds.of(tok)
    assert ids.start == tok.bos_token_id != ids.pad
    sources, targets = encode_sources(tok, SENTENCES), encode_targets(tok, SENTENCES)
    for seq in sources + targets:
        assert seq[-1] == ids.eos and ids.start not in seq and ids.pad not in seq
    assert sources == targets  # one joint model: bidirectional_epochs can swap the sides
    # Decoding gives the text back (Metaspace pre-tokenizer and decoder).
    assert tok.decode(sources[0], skip_special_tokens=True) == SENTENCES[0]

    tok.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert SpecialIds.of(loaded) == ids
    assert encode_sources(loaded, SENTENCES) == sources
    assert encode_targets(loaded, SENTENCES) == targets
    # pad_token = eos_token (a causal-LM idiom): the loss would ignore every </s> label
    loaded.pad_token = loaded.eos_token
    with pytest.raises(UserError, match="pad token is its eos token .* give it a pad token"):
        SpecialIds.of(loaded)


def test_unigram_ids_do_not_depend_on_the_trainers_float_noise():
    """Scores a few ulps apart, near-ties and the last characters in another order (as two
    training runs give) make the same tokenizer once canonical_unigram has put them in order."""
    from tokenizers import Tokenizer

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    tok = train_tokenizer(iter(SENTENCES), "unigram", 120)
    state = json.loads(tok.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    noisy = [[p, s * (1 + 1e-15 * (i % 3 - 1))] for i, (p, s) in enumerate(vocab)]
    noisy[10], noisy[11] = noisy[11], noisy[10]  # two pieces swap ids
    tail = next(i for i in range(len(vocab), 0, -1) if len(vocab[i - 1][0]) > 1)
    assert len(vocab) - tail >= 2  # the single characters the trainer appends last
    chars = [p for p, _ in noisy[tail:]]
    for entry, char in zip(noisy[tail:], chars[1:] + chars[:1]):  # in another order
        entry[0] = char
    state["model"]["vocab"] = noisy
    other = Tokenizer.from_str(json.dumps(state))
    assert other.get_vocab() != tok.get_vocab()
    other.model = canonical_unigram(other, specials)
    assert other.get_vocab() == tok.get_vocab()
    assert other.to_str() == tok.backend_tokenizer.to_str()
    assert [other.token_to_id(t) for t in specials] == [0, 1, 2, 3]  # the specials stay first
    # Two pieces whose scores tie exactly get the same ids whatever order they come in.
    tied = [[p, vocab[10][1] if i in (10, 11) else s] for i, (p, s) in enumerate(vocab)]
    orders = []
    for pieces in (tied, tied[:10] + [tied[11], tied[10]] + tied[12:]):
        state["model"]["vocab"] = pieces
        t = Tokenizer.from_str(json.dumps(state))
        t.model = canonical_unigram(t, specials)
        orders.append(t.get_vocab())
    assert orders[0] == orders[1]


def test_canonical_unigram_segments_as_the_trainer_did(monkeypatch):
    """Rounding the scores and reordering the pieces changes no segmentation."""
    from tokenizers import Tokenizer

    import data

    monkeypatch.setattr(data, "canonical_unigram", lambda tok, specials: tok.model)
    raw = train_tokenizer(iter(SENTENCES), "unigram", 120).backend_tokenizer  # as trained
    monkeypatch.undo()
    canonical = Tokenizer.from_str(raw.to_str())
    canonical.model = canonical_unigram(canonical, ["<pad>", "<unk>", "<s>", "</s>"])
    assert canonical.to_str() != raw.to_str()  # rounded (and perhaps reordered)
    texts = SENTENCES + [s.upper() for s in SENTENCES] + ["a dogcat runs quickly"]
    segment = lambda tok: [e.tokens for e in tok.encode_batch(texts)]  # noqa: E731
    assert segment(canonical) == segment(raw)


def test_load_tokenizer_trains_and_reuses_on_request(tmp_path):
    cfg = TrainConfig(tokenizer={"train": "bpe", "vocab_size": 100})
    first = load_tokenizer(cfg, tmp_path, lambda: iter(SENTENCES))
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()

    def must_not_train():
        raise AssertionError("with reuse=True the saved tokenizer should be loaded")

    again = load_tokenizer(cfg, tmp_path, must_not_train, reuse=True)
    assert encode_sources(again, SENTENCES) == encode_sources(first, SENTENCES)

    trained = []
    load_tokenizer(cfg, tmp_path, lambda: trained.append(1) or iter(SENTENCES), reuse=False)
    assert trained == [1]  # a fresh run trains its own tokenizer


# ---------------------------------------------------------------------------------------------
# tokenize and Corpus


def test_tokenize_drops_empty_and_long_pairs_and_says_so(tokenizer):
    long = " ".join(["river"] * 40)
    # the last two are blank to the tokenizer (zero-width, control characters), not to strip()
    src = ["the dog sees", "", "a cat", long, "some tree", "the bird", "\u200b\x07", "a tree"]
    tgt = ["der Hund", "die Katze", "   ", "ein Vogel", long, "ein Vogel singt", "ein Baum", "\x00"]
    messages = []
    corpus = tokenize(datasets.Dataset.from_dict({"src": src, "tgt": tgt}), tokenizer, 12, "train",
                      messages.append)  # fmt: skip
    kept = [0, 5]
    assert len(corpus) == len(kept)
    assert len(messages) == 1
    assert "dropped 4 empty pairs and 2 pairs longer than 12 tokens; 2 of 8 remain" in messages[0]
    for i, j in enumerate(kept):
        s, t = corpus.pair(i)
        assert s.tolist() == encode_sources(tokenizer, [src[j]])[0]
        assert t.tolist() == encode_targets(tokenizer, [tgt[j]])[0]


@pytest.mark.parametrize("ratio", [1.0, 1.5, 2.0, 3.0])
def test_max_ratio_drops_pairs_with_one_side_over_ratio_times_the_other(tokenizer, ratio):
    src = ["the dog", "the dog sees the cat in the tree", "a cat", "", "the bird sings", "a"]
    tgt = ["der Hund sieht die Katze im Baum", "der Hund", "die Katze", "ein Vogel", "ein Vogel",
           " ".join(["Baum"] * 30)]  # fmt: skip
    s_len = [len(e) for e in encode_sources(tokenizer, src)]  # </s> included, as in training
    t_len = [len(e) for e in encode_targets(tokenizer, tgt)]
    usable = [i for i in range(6) if src[i] and max(s_len[i], t_len[i]) <= 20]  # not "", not 30
    kept = [i for i in usable if max(s_len[i], t_len[i]) <= ratio * min(s_len[i], t_len[i])]
    assert 0 < len(kept) < len(usable)  # some dropped for their ratio, or this tests nothing
    messages = []
    corpus = tokenize(datasets.Dataset.from_dict({"src": src, "tgt": tgt}), tokenizer, 20, "train",
                      messages.append, max_ratio=ratio)  # fmt: skip
    assert [corpus.pair(i)[1].tolist() for i in range(len(corpus))] == [
        encode_targets(tokenizer, [tgt[i]])[0] for i in kept
    ]
    assert messages == [
        f"train: dropped 1 empty pairs, 1 pairs longer than 20 tokens and "
        f"{len(usable) - len(kept)} pairs with one side over {ratio:g}x the other's tokens; "
        f"{len(kept)} of 6 remain"
    ]


def test_pairs_of_exactly_max_seq_length_tokens_are_kept(tokenizer):
    long = "the dog sees the bird in the garden"
    for src, tgt in ((long, "ein Hund"), ("a dog", long)):  # the source, then the target, longer
        n = max(len(encode_sources(tokenizer, [src])[0]), len(encode_targets(tokenizer, [tgt])[0]))
        data = datasets.Dataset.from_dict({"src": [src], "tgt": [tgt]})
        assert len(tokenize(data, tokenizer, n, "train", print)) == 1
        with pytest.raises(UserError, match=rf"no usable sentence pairs \(1 read: 0 empty pairs "
                           rf"and 1 pairs longer than {n - 1} tokens\)$"):  # fmt: skip
            tokenize(data, tokenizer, n - 1, "train", print)


def test_tokenize_is_quiet_when_nothing_is_dropped(tokenizer):
    messages = []
    corpus = tokenize(datasets.Dataset.from_dict({"src": EN, "tgt": DE}), tokenizer, 64, "valid",
                      messages.append)  # fmt: skip
    assert len(corpus) == 3 and messages == []


def test_tokenize_with_nothing_left_is_a_user_error(tokenizer):
    with pytest.raises(UserError, match="valid: no usable sentence pairs"):
        tokenize(datasets.Dataset.from_dict({"src": ["", "x"], "tgt": ["y", " "]}), tokenizer, 64,
                 "valid", lambda _: None)  # fmt: skip


def make_corpus(pairs: list[tuple[list[int], list[int]]]) -> Corpus:
    def flat(seqs):
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
        return np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs]), offsets

    return Corpus(*flat([s for s, _ in pairs]), *flat([t for _, t in pairs]))


def test_corpus_pair_and_lengths():
    pairs = [([5, 6, 3], [7, 3]), ([8, 3], [9, 10, 11, 3]), ([12, 13, 14, 15, 3], [3])]
    corpus = make_corpus(pairs)
    assert len(corpus) == 3
    for i, (s, t) in enumerate(pairs):
        assert corpus.pair(i)[0].tolist() == s and corpus.pair(i)[1].tolist() == t
    assert corpus.lengths().tolist() == [3, 4, 5]  # the longer side of each pair


def test_sampled_segmentations_vary_but_spell_the_same_text():
    tok = train_tokenizer(iter(SENTENCES), "unigram", 120)
    viterbi = encode_sources(tok, SENTENCES)
    pairs = datasets.Dataset.from_dict({"src": SENTENCES, "tgt": SENTENCES[::-1]})
    logged = []
    corpus = sample_segmentations(pairs, tok, 0.1, 1000, "train", logged.append)
    assert len(corpus) == len(SENTENCES)
    assert "dropped 0 empty pairs and 0 pairs longer than 1000 tokens" in logged[0]
    src = [corpus.pair(i)[0].tolist() for i in range(len(corpus))]
    tgt = [corpus.pair(i)[1].tolist() for i in range(len(corpus))]
    assert src != viterbi  # sampled, not the single best segmentation...
    assert sum(map(len, src)) > sum(map(len, viterbi))  # (alpha 0.1 splits words up)
    for s, t, text in zip(src, tgt, SENTENCES, strict=True):
        assert s[-1] == t[-1] == tok.eos_token_id
        assert tok.decode(s, skip_special_tokens=True) == text  # ...of the same text
    assert [tok.decode(t, skip_special_tokens=True) for t in tgt] == SENTENCES[::-1]
    assert encode_sources(tok, SENTENCES) == viterbi  # the tokenizer itself is not changed
    # Blank and overlong pairs are dropped and counted. No segmentation of a text is longer
    # than one token per character and word boundary (+ </s>), none shorter than its words.
    cap = max(len(t) + len(t.split()) + 1 for t in SENTENCES)
    long = " ".join(SENTENCES[:12])
    assert len(long.split()) > cap
    odd = datasets.Dataset.from_dict(
        {"src": [*SENTENCES, long, " ", "x"], "tgt": [*SENTENCES, "y", "z", None]}
    )
    again = sample_segmentations(odd, tok, 0.1, cap, "train", logged.append)
    assert len(again) == len(SENTENCES) and again.lengths().max() <= cap
    assert (
        f"dropped 2 empty pairs and 1 pairs longer than {cap} tokens; "
        f"{len(SENTENCES)} of {len(SENTENCES) + 3} remain"
    ) in logged[1]
    # max_ratio: a pair whose sampled lengths may differ at most by the bound above is kept,
    # one whose shortest target outgrows its longest source by more is dropped
    ratio = max((len(t) + len(t.split()) + 1) / (len(t.split()) + 1) for t in SENTENCES)
    words = " ".join(SENTENCES).split()[: int(3 * ratio) + 1]  # >= 3 * ratio tokens, with </s>
    uneven = datasets.Dataset.from_dict(
        {"src": [*SENTENCES, "x"], "tgt": [*SENTENCES, " ".join(words)]}
    )
    kept = sample_segmentations(uneven, tok, 0.1, 1000, "train", logged.append, ratio)
    assert len(kept) == len(SENTENCES)  # "x" has at most 3 tokens: x, a word boundary, </s>
    assert f"and 1 pairs with one side over {ratio:g}x the other's tokens" in logged[-1]
    with pytest.raises(UserError, match="train: no usable sentence pairs"):
        sample_segmentations(pairs, tok, 0.1, 2, "train")
    with pytest.raises(UserError, match="needs a Unigram tokenizer, not BPE"):
        sample_segmentations(pairs, train_tokenizer(iter(SENTENCES), "bpe", 120), 0.1, 99, "t")


def test_corpus_save_load_round_trip(tmp_path):
    corpus = Corpus(
        np.array([5, 6, 2, 7, 2], np.int32), np.array([0, 3, 5]),
        np.array([8, 2, 9, 9, 2], np.int32), np.array([0, 2, 5]),
    )  # fmt: skip
    corpus.save(tmp_path / "c.npz")
    back = Corpus.load(tmp_path / "c.npz")
    assert [f.name for f in tmp_path.iterdir()] == ["c.npz"]  # no .tmp left behind
    for a, b in zip(
        (corpus.src, corpus.src_off, corpus.tgt, corpus.tgt_off),
        (back.src, back.src_off, back.tgt, back.tgt_off),
        strict=True,
    ):
        assert a.dtype == b.dtype and np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Batching and sharding


def test_token_batches_cover_every_pair_within_the_caps():
    lengths = np.random.default_rng(0).integers(1, 30, size=300)
    batches = token_batches(lengths, max_tokens=64, max_sentences=8, seed=1, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))
    for b in batches:
        assert 1 <= len(b) <= 8
        assert len(b) * lengths[b].max() <= 64


def test_token_batches_without_a_token_cap():
    lengths = np.random.default_rng(0).integers(1, 30, size=50)
    batches = token_batches(lengths, max_tokens=None, max_sentences=16, seed=1, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(50))
    assert sorted(len(b) for b in batches) == [2, 16, 16, 16]


def test_token_batches_depend_only_on_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(1, 30, size=300)

    def batches(seed, epoch):
        return [b.tolist() for b in token_batches(lengths, 64, 8, seed, epoch)]

    assert batches(1, 0) == batches(1, 0)
    assert batches(1, 1) != batches(1, 0)
    assert batches(2, 0) != batches(1, 0)


def test_token_batches_unshuffled_are_sorted_by_length():
    lengths = np.array([5, 1, 4, 1, 3])
    batches = token_batches(lengths, max_tokens=8, max_sentences=2, seed=0, epoch=0, shuffle=False)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 2], [0]]


@pytest.mark.parametrize("n", [2, 6, 7, 11])
def test_shard_for_two_processes(n):
    batches = list(range(n))
    ranks = [shard(batches, rank, 2) for rank in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    assert len(ranks[0]) == len(ranks[1])
    assert set(batches) - set(ranks[0] + ranks[1]) <= set(batches[-1:])  # at most 1 dropped
    assert len(ranks[0]) + len(ranks[1]) >= n - 1


def test_shard_single_process_keeps_everything():
    assert shard(list(range(5)), 0, 1) == list(range(5))


def test_shard_fewer_batches_than_processes_keeps_counts_equal():
    counts = [len(shard([np.arange(3)], rank, 2)) for rank in range(2)]
    assert counts[0] == counts[1]


def test_shard_cuts_the_leftover_batches_into_even_pieces_that_cover_them():
    # 2 leftover batches (10 and 2 pairs) for 3 processes: the big one is cut, not the small
    pieces = [shard([np.arange(10), np.arange(10, 12)], r, 3)[-1] for r in range(3)]
    assert sorted(len(p) for p in pieces) == [2, 5, 5]
    assert sorted(np.concatenate(pieces).tolist()) == list(range(12))
    # each next piece goes to the batch whose pieces are largest: 10 and 6 pairs over 4
    # processes are 5 + 5 and 3 + 3, not 4 + 3 + 3 and 6 (the slowest rank sets the pace)
    pieces = [shard([np.arange(10), np.arange(10, 16)], r, 4)[-1] for r in range(4)]
    assert sorted(len(p) for p in pieces) == [3, 3, 5, 5]
    # fewer leftover pairs than processes: each gets one, every pair is trained
    pieces = [shard([np.array([7, 8])], r, 3)[-1].tolist() for r in range(3)]
    assert all(len(p) == 1 for p in pieces) and {p[0] for p in pieces} == {7, 8}


def test_token_batches_are_shuffled_and_regrouped_each_epoch():
    lengths = np.arange(1, 301) % 30 + 1  # many pairs of each length
    epochs = [token_batches(lengths, 200, 64, seed=0, epoch=e) for e in range(2)]
    for batches in epochs:  # batch order shuffled, not by length
        longest = [int(lengths[b].max()) for b in batches]
        assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    # pairs of equal length are grouped anew (their ties broken at random per epoch)
    assert {frozenset(b.tolist()) for b in epochs[0]} != {frozenset(b.tolist()) for b in epochs[1]}
    # and the batches come in another order: the same lengths, as many batches, other places
    longest = [[int(lengths[b].max()) for b in batches] for batches in epochs]
    assert sorted(longest[0]) == sorted(longest[1]) and longest[0] != longest[1]


# ---------------------------------------------------------------------------------------------
# Collation


def test_collate_pads_and_shifts(tokenizer):
    ids = SpecialIds.of(tokenizer)
    corpus = tokenize(datasets.Dataset.from_dict({"src": EN, "tgt": DE}), tokenizer, 64, "t",
                      lambda _: None)  # fmt: skip
    index = np.array([2, 0, 1])
    batch = collate(corpus, index, ids)
    src, tgt_in, labels = batch["src"], batch["tgt_in"], batch["labels"]
    assert src.dtype == tgt_in.dtype == labels.dtype == torch.long
    assert tgt_in.shape == labels.shape
    tgt_lengths = []
    for row, i in enumerate(index):
        s, t = (x.tolist() for x in corpus.pair(i))
        assert src[row, : len(s)].tolist() == s and (src[row, len(s) :] == ids.pad).all()
        assert labels[row, : len(t)].tolist() == t and (labels[row, len(t) :] == ids.pad).all()
        assert labels[row, len(t) - 1] == ids.eos
        tgt_lengths.append(len(t))
    assert (tgt_in[:, 0] == ids.start).all()
    assert torch.equal(tgt_in[:, 1:], labels[:, :-1])
    assert batch["n_tokens"] == sum(tgt_lengths)
    assert min(tgt_lengths) < labels.size(1)  # the batch did need padding


def test_a_text_of_unknown_characters_is_a_sentence_and_one_of_invisible_ones_is_blank(
    tokenizer,
):
    # <unk> is a word's: a sentence in another script is kept (and counted), not dropped as
    # empty; a text the normalizer removes entirely is blank, also for a tokenizer adding BOS
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # a word-level vocabulary (no "▁" piece before an unknown word, as SentencePiece may)
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "dog": 4}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 3)]
    )
    word_level = PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
    )
    assert encode_sources(word_level, ["Katze", "dog"]) == [[1, 3], [4, 3]]
    corpus = tokenize(
        datasets.Dataset.from_dict({"src": ["Katze", "dog"], "tgt": ["dog", "dog"]}),
        word_level, 64, "t", lambda _: None,
    )  # fmt: skip
    assert len(corpus) == 2
    eos = tokenizer.eos_token_id

    inner = tokenizer.backend_tokenizer
    bart_like = PreTrainedTokenizerFast(
        tokenizer_object=inner.from_str(inner.to_str()),
        pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
    )  # fmt: skip
    bos = bart_like.bos_token_id
    bart_like.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    assert bart_like(["\u200b"])["input_ids"] == [[bos, eos]]  # BOS and </s> alone
    assert encode_sources(bart_like, ["\u200b"]) == [[]]


def test_an_empty_pair_too_long_on_its_other_side_is_counted_once(tokenizer):
    # each dropped pair under the first reason that drops it: empty, then too long
    logged = []
    long = " ".join(["dog"] * 40)
    ds = datasets.Dataset.from_dict({"src": ["", "the dog", "a cat"], "tgt": [long, "der", "x"]})
    tokenize(ds, tokenizer, 8, "t", logged.append)
    assert "t: dropped 1 empty pairs and 0 pairs longer than 8 tokens; 2 of 3 remain" in logged


def test_labels_never_begin_with_the_start_token(tokenizer):
    """A tokenizer that begins every sequence with BOS (BART's, RoBERTa's) must not make the
    labels begin with it: shift_right feeds the start token already, and decoding never emits
    it, so "<s> <s> w" in, "<s> w" out would train a first step decoding never takes."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    inner = tokenizer.backend_tokenizer
    bart_like = PreTrainedTokenizerFast(
        tokenizer_object=inner.from_str(inner.to_str()),
        pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
    )  # fmt: skip
    bos, eos = bart_like.bos_token_id, bart_like.eos_token_id
    bart_like.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    assert bart_like(text_target=DE[0])["input_ids"][0] == bos  # it does add BOS
    targets = encode_targets(bart_like, DE)
    assert targets == encode_targets(tokenizer, DE)  # the words and </s>, as without BOS
    ids = SpecialIds.of(bart_like)
    corpus = tokenize(datasets.Dataset.from_dict({"src": EN, "tgt": DE}), bart_like, 64, "t",
                      lambda _: None)  # fmt: skip
    batch = collate(corpus, np.arange(3), ids)
    assert (batch["tgt_in"][:, 0] == ids.start).all() and (batch["labels"] != ids.start).all()


def test_both_ways_appends_every_pair_with_its_sides_swapped():
    fwd = Corpus(*(np.array(a, dtype) for a, dtype in (
        ([5, 6, 7, 8, 9], np.int32), ([0, 2, 5], np.int64),
        ([1, 2, 3], np.int32), ([0, 1, 3], np.int64),
    )))  # fmt: skip
    both = both_ways(fwd)
    assert len(both) == 4
    for i in range(2):
        src, tgt = fwd.pair(i)
        assert [a.tolist() for a in both.pair(i)] == [src.tolist(), tgt.tolist()]
        assert [a.tolist() for a in both.pair(2 + i)] == [tgt.tolist(), src.tolist()]
