"""The Helsinki-NLP/opus-mt-* tokenizers (MarianTokenizer): two SentencePiece models, one for
sources and one for targets, over one shared vocabulary. Targets must go through the target
model (`text_target=`); encoding them with the source model is a silent, common mistake
(transformers issues #6262, #10294, #18455).

Offline stand-in, same files and class as the Hub's opus-mt-en-de: source.spm trained on English
only, target.spm on German only, vocab.json over the pieces of both, tokenizer_config.json naming
MarianTokenizer. A German sentence is then cut differently by the two models, so a target
encoded with the wrong model shows up as different ids.
"""

import dataclasses
import io
import json
import shutil
import warnings

import datasets
import numpy as np
import pytest
import sentencepiece as spm

import data
from config import TrainConfig
from data import SpecialIds, encode_sources, encode_targets, load_text, tokenize

EN = [
    "the dog runs in the park",
    "a cat sleeps on the sofa",
    "two birds sing in the tree",
    "the children play football",
    "a man reads a book at home",
    "the woman drinks coffee",
]
DE = [
    "der Hund rennt im Park",
    "eine Katze schläft auf dem Sofa",
    "zwei Vögel singen im Baum",
    "die Kinder spielen Fußball",
    "ein Mann liest zu Hause ein Buch",
    "die Frau trinkt Kaffee",
]


def train_spm(lines: list[str], **options) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 20),
        model_writer=model,
        **{"vocab_size": 60, **options},
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    """A MarianTokenizer directory laid out like Helsinki-NLP/opus-mt-en-de."""
    return build_marian_dir(tmp_path_factory.mktemp("opus-mt-en-de"))


def build_marian_dir(out, target_options=None):
    models = {"source.spm": train_spm(EN), "target.spm": train_spm(DE, **(target_options or {}))}
    vocab = {"</s>": 0, "<unk>": 1}  # Marian's layout: eos 0, unk 1, ..., pad last
    for name, model in models.items():
        (out / name).write_bytes(model)
        sp = spm.SentencePieceProcessor(model_proto=model)
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if not sp.is_control(i) and not sp.is_unknown(i):
                vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    config = {
        "source_lang": "en",
        "target_lang": "de",
        "tokenizer_class": "MarianTokenizer",
        "model_max_length": 512,
        "separate_vocabs": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def load_marian(path):
    with warnings.catch_warnings():  # MarianTokenizer recommends sacremoses; not needed here
        warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
        return data.load_pretrained_tokenizer(str(path))


@pytest.fixture(scope="module")
def marian(marian_dir):
    return load_marian(marian_dir)


def model_ids(marian_dir, model: str, text: str) -> list[int]:
    """What a given SentencePiece model + the shared vocab give for text, </s> appended."""
    vocab = json.loads((marian_dir / "vocab.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(marian_dir / model))
    return [vocab.get(p, vocab["<unk>"]) for p in sp.encode(text, out_type=str)] + [vocab["</s>"]]


def test_loads_as_marian_with_special_ids_from_the_tokenizer(marian, marian_dir):
    from transformers import MarianTokenizer

    assert isinstance(marian, MarianTokenizer)
    vocab = json.loads((marian_dir / "vocab.json").read_text())
    ids = SpecialIds.of(marian)
    # No BOS in Marian: decoding starts from pad, as in MarianMTModel.
    assert (ids.pad, ids.eos, ids.start) == (vocab["<pad>"], vocab["</s>"], vocab["<pad>"])
    assert marian.bos_token_id is None and marian.unk_token_id == vocab["<unk>"]


def test_the_two_models_cut_german_differently(marian_dir):
    for de in DE:
        assert model_ids(marian_dir, "source.spm", de) != model_ids(marian_dir, "target.spm", de)


def test_targets_use_the_target_model_and_sources_the_source_model(marian, marian_dir):
    assert encode_targets(marian, DE) == [model_ids(marian_dir, "target.spm", d) for d in DE]
    assert encode_sources(marian, EN) == [model_ids(marian_dir, "source.spm", e) for e in EN]
    # The mistake this guards against: German run through the source model.
    assert encode_sources(marian, DE) != encode_targets(marian, DE)
    # Encoding targets does not leave the tokenizer in target mode.
    assert encode_sources(marian, DE[:1]) == [model_ids(marian_dir, "source.spm", DE[0])]


def test_written_special_tokens_are_words_on_both_sides(marian):
    ids = SpecialIds.of(marian)  # Marian: the start token is <pad>
    for encode in (encode_sources, encode_targets):
        (seq,) = encode(marian, ["a </s> b <pad> c"])
        assert seq[-1] == ids.eos and seq.count(marian.unk_token_id) == 2
        assert not {ids.pad, ids.eos} & set(seq[:-1])


@pytest.mark.parametrize("num_proc", [1, 2])
def test_tokenize_encodes_each_side_with_its_model(
    tmp_path, monkeypatch, marian, marian_dir, num_proc
):
    # Through the on-disk, cached path train.py takes; with 2 worker processes the tokenizer is
    # pickled into each, and must still use the target model for targets.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    (tmp_path / "t.en").write_text("".join(e + "\n" for e in EN))
    (tmp_path / "t.de").write_text("".join(d + "\n" for d in DE))
    ds = load_text(str(tmp_path / "t.{lang}"), TrainConfig(), "train")
    corpus = tokenize(ds, marian, 64, "train", lambda _: None, num_proc=num_proc)
    assert len(corpus) == len(EN)
    for i, (en, de) in enumerate(zip(EN, DE, strict=True)):
        src, tgt = corpus.pair(i)
        assert src.tolist() == model_ids(marian_dir, "source.spm", en)
        assert tgt.tolist() == model_ids(marian_dir, "target.spm", de)
        assert tgt.tolist() != model_ids(marian_dir, "source.spm", de)


def test_fingerprint_is_stable_across_save_and_load(marian, marian_dir, tmp_path):
    marian.save_pretrained(tmp_path / "copy")
    copy = load_marian(tmp_path / "copy")
    copy.decode([3, 4])  # using a tokenizer must not change its fingerprint
    assert data.tokenizer_fingerprint(copy) == data.tokenizer_fingerprint(marian)
    trained = data.train_tokenizer(iter(EN + DE), "bpe", 60)
    assert data.tokenizer_fingerprint(trained) != data.tokenizer_fingerprint(marian)


def test_collate_with_marian_ids(marian):
    corpus = tokenize(
        datasets.Dataset.from_dict({"src": EN, "tgt": DE}), marian, 64, "t", lambda _: None
    )
    ids = SpecialIds.of(marian)
    batch = data.collate(corpus, np.arange(len(EN)), ids)
    assert (batch["tgt_in"][:, 0] == ids.start).all()  # pad starts decoding, as in Marian
    assert (batch["labels"] == ids.eos).sum() == len(EN)


def test_targets_must_hold_eos(marian):
    data.check_targets_hold_eos(marian, "opus-mt-en-de stand-in")  # Marian's appends </s>

    class NoEos:  # GPT-2 style: an eos token, never appended
        pad_token_id, eos_token_id, bos_token_id, eos_token = 0, 1, None, "<|endoftext|>"
        unk_token_id = None  # byte-level: no unknown token
        all_special_ids = [0, 1]

        def __call__(self, texts=None, text_target=None, add_special_tokens=True):
            return {"input_ids": [[5, 6] for _ in (text_target or texts)]}

    with pytest.raises(data.UserError, match=r"^tokenizer gpt2: targets do not hold its eos"):
        data.check_targets_hold_eos(NoEos(), "gpt2")
    # data.py prepare refuses it too, as train.py does, before tokenizing the corpus
    with pytest.MonkeyPatch.context() as m:
        m.setattr(data, "load_text", lambda *a: [])
        m.setattr(data, "load_tokenizer", lambda *a, **k: NoEos())
        m.setattr(data, "tokenize", lambda *a, **k: pytest.fail("tokenized"))
        with pytest.raises(data.UserError, match=r"targets do not hold its eos"):
            data.prepare(data.TrainConfig(tokenizer="gpt2"), log=lambda _: None)

    class LanguageCodeLast(NoEos):  # mBART: "x </s> de_DE"; decoding still stops at </s>
        def __call__(self, texts=None, text_target=None, add_special_tokens=True):
            return {"input_ids": [[5, 1, 9] for _ in (text_target or texts)]}

    data.check_targets_hold_eos(LanguageCodeLast(), "mbart")


def test_a_checkpoint_with_a_marian_tokenizer_exports_it_loadable(marian, tmp_path):
    from transformers import AutoTokenizer, MarianTokenizer

    import export
    from test_translate import make_checkpoint

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
        out = export.export(make_checkpoint(tmp_path / "ckpt", tok=marian), tmp_path / "hf")
        loaded = AutoTokenizer.from_pretrained(out)
    assert isinstance(loaded, MarianTokenizer)
    assert loaded(text_target=DE)["input_ids"] == marian(text_target=DE)["input_ids"]


def test_hypotheses_are_detokenized_with_the_target_model(tmp_path):
    # MarianTokenizer decodes with its source model unless told otherwise: with byte fallback
    # in the German model only, "Café" came out as "<0x43>af<0xC3><0xA9>"
    from translate import detokenize

    tok = load_marian(build_marian_dir(tmp_path, {"byte_fallback": True, "vocab_size": 320}))
    ids = SpecialIds.of(tok)
    texts = ["der Hund trinkt Café", "Grüße"]
    assert detokenize(tok, encode_targets(tok, texts), ids) == texts


@pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")
def test_a_tokenizer_for_the_other_direction_or_two_vocabularies_is_refused(marian_dir, tmp_path):
    cfg = TrainConfig(tokenizer=str(marian_dir), src_lang="de", tgt_lang="en")
    with pytest.raises(data.UserError, match=r"is for en->de .*this run translates de->en"):
        data.load_tokenizer(cfg)
    data.load_tokenizer(dataclasses.replace(cfg, src_lang="en", tgt_lang="de"))  # its own
    for src, tgt in (("en", "fr"), ("fr", "de")):  # another language on either side
        with pytest.raises(data.UserError, match=rf"is for en->de .*translates {src}->{tgt}:"):
            data.load_tokenizer(dataclasses.replace(cfg, src_lang=src, tgt_lang=tgt))
        # fine-tuning a checkpoint for another pair: let be (init_from warns), not the reverse
        tok = data.load_pretrained_tokenizer(str(marian_dir))
        data.check_direction(tok, dataclasses.replace(cfg, src_lang=src, tgt_lang=tgt), True)
    with pytest.raises(data.UserError, match=r"is for en->de .*translates de->en"):
        data.check_direction(tok, dataclasses.replace(cfg, src_lang="de", tgt_lang="en"), True)
    data.load_tokenizer(dataclasses.replace(cfg, src_lang="EN", tgt_lang="De"))  # any case
    # three-letter codes of a known language are compared as their two-letter ones
    with pytest.raises(data.UserError, match=r"is for en->de .*translates eng->fra:"):
        data.load_tokenizer(dataclasses.replace(cfg, src_lang="eng", tgt_lang="fra"))
    data.load_tokenizer(dataclasses.replace(cfg, src_lang="eng", tgt_lang="ger"))
    with pytest.raises(data.UserError, match=r"is for en->de .*translates ger->eng:"):
        data.load_tokenizer(dataclasses.replace(cfg, src_lang="ger", tgt_lang="eng"))
    mul = tmp_path / "mul"
    shutil.copytree(marian_dir, mul)
    config = json.loads((mul / "tokenizer_config.json").read_text())
    (mul / "tokenizer_config.json").write_text(json.dumps({**config, "target_lang": "mul"}))
    data.load_tokenizer(dataclasses.replace(cfg, tokenizer=str(mul), src_lang="en", tgt_lang="fr"))
    (mul / "tokenizer_config.json").write_text(  # three-letter codes: the other direction is
        json.dumps({**config, "source_lang": "eng", "target_lang": "deu"})  # still refused
    )
    with pytest.raises(data.UserError, match=r"is for eng->deu .*translates deu->eng"):
        data.load_tokenizer(dataclasses.replace(cfg, tokenizer=str(mul), src_lang="deu",
                                                tgt_lang="eng"))  # fmt: skip
    # ... as Tatoeba's OPUS-MT models write them, against a run's two-letter codes
    for src, tgt in (("de", "en"), ("en", "fr")):
        with pytest.raises(data.UserError, match=rf"is for eng->deu .*translates {src}->{tgt}"):
            data.load_tokenizer(dataclasses.replace(cfg, tokenizer=str(mul), src_lang=src,
                                                    tgt_lang=tgt))  # fmt: skip
    data.load_tokenizer(dataclasses.replace(cfg, tokenizer=str(mul), src_lang="en", tgt_lang="de"))
    # separate vocabularies: target ids past the one vocabulary the model has
    sep = tmp_path / "sep"
    shutil.copytree(marian_dir, sep)
    shutil.copy(sep / "vocab.json", sep / "target_vocab.json")
    config = json.loads((sep / "tokenizer_config.json").read_text())
    config.update(separate_vocabs=True, target_vocab_file="target_vocab.json")
    (sep / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(data.UserError, match=r"separate source and target vocabularies"):
        data.load_tokenizer(TrainConfig(tokenizer=str(sep)))


def test_loading_and_encoding_long_lines_say_nothing_of_transformers(marian_dir, capsys):
    # Marian's "pip install sacremoses" (for its own pre-processing, unused here) and "sequence
    # longer than the model's maximum" (train.py drops such pairs, translate.py truncates
    # them, each saying so) printed next to our own lines
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = data.load_pretrained_tokenizer(str(marian_dir))
    assert not [w for w in caught if "sacremoses" in str(w.message)]
    encode_sources(tok, [" ".join(EN) * 20])
    assert "Token indices sequence length" not in capsys.readouterr().err


def test_score_py_encodes_targets_with_the_target_model(marian, tmp_path):
    import torch

    import score
    from checkpoint import load_model
    from test_translate import make_checkpoint

    model, tok, ids, cfg = load_model(make_checkpoint(tmp_path / "ckpt", tok=marian))
    as_targets = encode_targets(tok, DE)
    assert as_targets != encode_sources(tok, DE)  # the two models cut German apart
    scored = score.score_pairs(model, tok, ids, EN, DE)
    for (logp, n), en, labels in zip(scored, EN, as_targets, strict=True):
        src = torch.tensor(encode_sources(tok, [en]))
        expected = score.score_batch(model, src, torch.tensor([labels]), ids).item()
        assert n == len(labels) and logp == pytest.approx(expected, abs=1e-4)
