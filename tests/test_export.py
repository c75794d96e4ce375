"""export.py: our checkpoint as a transformers MarianMTModel directory, checked for parity."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import export
from checkpoint import load_model
from config import UserError, cli
from data import SpecialIds
from model import ModelConfig
from model.embedding import sinusoidal_table
from test_translate import TEXTS, make_checkpoint
from translate import banned_ids, greedy, max_new_tokens, translate_texts

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer, MarianMTModel  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{share_embeddings: (checkpoint dir, exported dir)}, and "3+1": 3 encoder layers, 1
    decoder layer."""
    tmp = tmp_path_factory.mktemp("export")
    dirs = {}
    for key, overrides in [
        (True, {}),
        (False, {"share_embeddings": False}),
        ("3+1", {"n_layers": 3, "n_dec_layers": 1}),
    ]:
        ckpt = make_checkpoint(tmp / f"ckpt-{key}", **overrides)
        dirs[key] = ckpt, export.export(ckpt, tmp / f"hf-{key}")
    return dirs


@pytest.mark.parametrize("d_model", [16, 15])
def test_positions_use_marians_sin_cos_halves(d_model):
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    theirs = MarianSinusoidalPositionalEmbedding(256, d_model).create_weight()
    # same layout; ours is computed in fp32, Marian's in fp64
    torch.testing.assert_close(sinusoidal_table(256, d_model), theirs, atol=2e-5, rtol=0)


def test_marians_gelu_is_the_exact_erf_gelu_we_use():
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 1001)
    assert torch.equal(ACT2FN["gelu"](x), F.gelu(x))
    assert not torch.equal(ACT2FN["gelu"](x), F.gelu(x, approximate="tanh"))


def test_directory_holds_config_weights_and_tokenizer(exported):
    ckpt, out = exported[True]
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    _, _, ids, _ = load_model(ckpt)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "marian" and config["architectures"] == ["MarianMTModel"]
    assert (config["decoder_start_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        ids.start, ids.eos, ids.pad,
    )  # fmt: skip
    assert config["scale_embedding"] and config["activation_function"] == "gelu"
    assert config["share_encoder_decoder_embeddings"] and config["tie_word_embeddings"]
    assert not (out.parent / (out.name + ".tmp")).exists()  # written atomically


def test_training_dropouts_keep_their_values_under_marians_names():
    cfg = ModelConfig(src_vocab_size=20, tgt_vocab_size=20, pad_id=0, d_model=16, n_heads=2,
                      dropout=0.3, attn_dropout=0.1, act_dropout=0.2)  # fmt: skip
    config = export.marian_config(cfg, SpecialIds(pad=0, eos=1, start=0))
    assert (config.dropout, config.attention_dropout, config.activation_dropout) == (0.3, 0.1, 0.2)


@pytest.mark.parametrize("shared", [True, False, "3+1"])
def test_exported_logits_match_ours(exported, shared):
    ckpt, out = exported[shared]
    model, tok, ids, _ = load_model(ckpt)
    hf = MarianMTModel.from_pretrained(out).eval()
    assert hf.config.share_encoder_decoder_embeddings == (shared is not False)
    assert torch.equal(hf.final_logits_bias, torch.zeros_like(hf.final_logits_bias))
    batch = AutoTokenizer.from_pretrained(out)(TEXTS[:4], return_tensors="pt", padding=True)
    src = batch["input_ids"]
    tgt = torch.cat([torch.full((4, 1), ids.start), torch.randint(4, len(tok), (4, 20))], 1)
    with torch.no_grad():
        ours = model(src, tgt)
        theirs = hf(**batch, decoder_input_ids=tgt).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_a_shallower_decoder_exports_with_its_own_depth(exported):
    ckpt, out = exported["3+1"]
    model, _, ids, _ = load_model(ckpt)
    hf = MarianMTModel.from_pretrained(out).eval()
    assert (hf.config.encoder_layers, hf.config.decoder_layers) == (3, 1)
    assert export.max_logit_difference(model, hf, ids) <= 1e-4


def test_the_parity_check_sees_one_changed_weight(exported, tmp_path):
    ckpt, out = exported[True]
    model, _, ids, _ = load_model(ckpt)
    hf = MarianMTModel.from_pretrained(out).eval()
    with torch.no_grad():
        # one weight matrix exported wrong (scaled: a constant added would cancel on post-LN's
        # zero-mean inputs)
        hf.model.decoder.layers[0].fc1.weight *= 1.5
    assert export.max_logit_difference(model, hf, ids) > 1e-2
    # and export() refuses such an export: here one bias mapped wrong
    real = export.marian_state_dict

    def wrong(model):
        state = real(model)
        state["model.decoder.layers.0.fc1.bias"] += 0.1
        return state

    with pytest.MonkeyPatch.context() as m:
        m.setattr(export, "marian_state_dict", wrong)
        with pytest.raises(RuntimeError, match="differ"):
            export.export(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_generate_greedy_equals_our_greedy(exported):
    ckpt, out = exported[True]
    model, _, ids, _ = load_model(ckpt)
    tok = AutoTokenizer.from_pretrained(out)
    hf = MarianMTModel.from_pretrained(out).eval()
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    generated = hf.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=24)
    ours = greedy(model, batch["input_ids"], ids, 24, banned_ids(ids))

    def cut(row):  # up to eos, or all 24 tokens
        row = row.tolist()
        return row[: row.index(ids.eos) + 1] if ids.eos in row else row

    assert generated[:, 0].eq(ids.start).all()  # decoder start token
    pairs = [(cut(g[1:]), cut(o)) for g, o in zip(generated, ours, strict=True)]
    assert all(g == o for g, o in pairs)
    assert any(ids.eos in o for _, o in pairs)  # some sentences really ended


def test_tokenizer_and_generation_defaults_are_translate_pys(exported):
    """Plain `generate` and `tok(..., truncation=True)` do what translate.py does, or as close
    as a generation config can say: a budget of the positional table (max_len - 1; translate.py's
    a·|x| + b depends on the source, which a GenerationConfig cannot express), its cut at
    max_seq_length, no token_type_ids (the model takes none), a class name transformers 4 knows
    too."""
    from transformers import GenerationConfig

    ckpt, out = exported[True]
    model, _, ids, cfg = load_model(ckpt)
    meta = json.loads((out / "tokenizer_config.json").read_text())
    assert meta["tokenizer_class"] == "PreTrainedTokenizerFast"
    generation = GenerationConfig.from_pretrained(out)
    assert generation.max_new_tokens == model.cfg.max_len - 1
    assert sorted(generation.suppress_tokens) == banned_ids(ids)  # padding and the start token
    tok = AutoTokenizer.from_pretrained(out)
    batch = tok([" ".join(["the dog sees the cat"] * 40)], truncation=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape[1] == min(cfg.max_seq_length, model.cfg.max_len)
    hf = MarianMTModel.from_pretrained(out).eval()
    # a source cut to the positional table decodes (it crashed), as our greedy does with it
    got = hf.generate(**batch)[0, 1:].tolist()  # after the decoder start token
    ours = greedy(model, batch["input_ids"], ids, model.cfg.max_len - 1, banned_ids(ids))
    assert got == [t for t in ours[0].tolist() if t != ids.pad]


def test_translates_a_sentence_with_transformers_alone(exported, tmp_path):
    """A fresh interpreter that cannot import our code loads the directory and translates."""
    ckpt, out = exported[True]
    model, tok, ids, cfg = load_model(ckpt)
    sentence = "the dog sees the cat"
    ours = translate_texts(model, tok, ids, [sentence], 1, cfg.max_seq_length)[0]
    n_new = max_new_tokens(len(tok(sentence)["input_ids"]), model)
    script = f"""
import importlib.util, json
assert importlib.util.find_spec("checkpoint") is None  # none of our modules is importable
from transformers import AutoTokenizer, MarianMTModel, pipelines
if "translation" in pipelines.SUPPORTED_TASKS:  # transformers < 5
    translator = pipelines.pipeline("translation", model={str(out)!r})
    text = translator({sentence!r}, max_new_tokens={n_new})[0]["translation_text"]
    via = "pipeline"
else:  # transformers 5 removed the translation pipeline: what it did, by hand
    tok = AutoTokenizer.from_pretrained({str(out)!r})
    model = MarianMTModel.from_pretrained({str(out)!r})
    ids = model.generate(**tok([{sentence!r}], return_tensors="pt"), max_new_tokens={n_new})
    text = tok.batch_decode(ids, skip_special_tokens=True)[0]
    via = "generate"
print(json.dumps({{"via": via, "text": text}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert " ".join(result["text"].split()) == ours and ours


def test_pre_norm_is_refused_with_one_line(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt", pre_norm=True)
    with pytest.raises(UserError, match="pre-LN"):
        export.export(ckpt, tmp_path / "hf")
    with pytest.raises(SystemExit) as exit_info:
        cli(lambda: export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: export:")
    assert not (tmp_path / "hf").exists()


def test_failed_parity_check_leaves_the_old_export_and_no_temporary(tmp_path, monkeypatch):
    ckpt, out = make_checkpoint(tmp_path / "ckpt"), tmp_path / "hf"
    out.mkdir()
    (out / "old.txt").write_text("the previous export\n")
    monkeypatch.setattr(export, "max_logit_difference", lambda *args: 1.0)
    with pytest.raises(RuntimeError, match="differ"):
        export.export(ckpt, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_out_that_would_replace_the_checkpoint_is_refused(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    for out in (ckpt, tmp_path):  # the checkpoint itself, or a folder holding it
        with pytest.raises(UserError, match="which it is made from"):
            export.main(["--checkpoint", str(ckpt), "--out", str(out)])
    assert (ckpt / "model.safetensors").exists()
    # --ct2 inside --out: writing --out would delete it (a second run of the same command did)
    with pytest.raises(UserError, match="--ct2 .*hf/ct2 is inside --out .*hf, which is replaced"):
        export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "hf"), "--ct2",
                     str(tmp_path / "hf" / "ct2")])  # fmt: skip
    # a model of another kind than the tool writes: an export never replaces our checkpoint (an
    # average whose steps are pruned cannot be made again), nor --ct2 a transformers export
    other = make_checkpoint(tmp_path / "other", n_layers=1)
    with pytest.raises(UserError, match=r"other holds a checkpoint of this repository, which "
                       r"this would replace with a transformers model; name"):  # fmt: skip
        export.main(["--checkpoint", str(ckpt), "--out", str(other)])
    hf = export.export(ckpt, tmp_path / "hf0")
    with pytest.raises(UserError, match=r"^--ct2 .*hf0 holds a transformers model, which this "
                       r"would replace with a CTranslate2 model"):  # fmt: skip
        export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "hf1"), "--ct2", str(hf)])
    assert (other / "model_config.json").exists() and (hf / "config.json").exists()
    assert not (tmp_path / "hf1").exists()
    with pytest.raises(UserError, match=r"^--ct2 : give the new directory's name"):  # not skipped
        export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "hf2"), "--ct2", ""])
    # --ct2 over --out's folder: named as --ct2's doing, not --out's
    with pytest.raises(UserError, match=f"^--ct2 {tmp_path} would replace .*, which it is"):
        export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "hf"), "--ct2",
                     str(tmp_path)])  # fmt: skip


def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    (tmp_path / "file").write_text("not a directory\n")
    with pytest.raises(SystemExit) as exit_info:
        cli(lambda: export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "file/hf")]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("file/hf (Not a directory)"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "file"]


@pytest.mark.parametrize("which", [True, False, "3+1"])
def test_ctranslate2_conversion_decodes_our_greedy_tokens(exported, tmp_path, which):
    # Our tokenizers have no trailing <pad> row and decode from their start token: the stock
    # Marian converter would drop a real row and start from zeros (it failed here).
    ctranslate2 = pytest.importorskip("ctranslate2")
    ckpt, out = exported[which]
    export.to_ctranslate2(out, tmp_path / "ct2")
    model, tok, ids, _ = load_model(ckpt)
    src = tok(TEXTS[:4])["input_ids"]
    translator = ctranslate2.Translator(str(tmp_path / "ct2"))
    result = translator.translate_batch(  # no suppress_sequences: the model bans them
        [tok.convert_ids_to_tokens(s) for s in src],
        beam_size=1,
        max_decoding_length=24,
        min_decoding_length=0,  # CTranslate2's default 1 forbids </s> first; we do not
    )
    for s, r in zip(src, result, strict=True):
        ours = greedy(model, torch.tensor([s]), ids, 24, banned_ids(ids))[0].tolist()
        ours = tok.convert_ids_to_tokens([t for t in ours if t not in (ids.eos, ids.pad)])
        assert r.hypotheses[0] == ours


def test_a_failed_ct2_conversion_leaves_both_earlier_outputs(tmp_path, monkeypatch, capsys):
    # --ct2 converts before --out is replaced: a full disk there once left a new --out beside
    # the old --ct2, a pair made from two different checkpoints
    pytest.importorskip("ctranslate2")
    from ctranslate2.converters import TransformersConverter

    ckpt, out, ct2 = make_checkpoint(tmp_path / "ckpt"), tmp_path / "hf", tmp_path / "ct2"
    export.main(["--checkpoint", str(ckpt), "--out", str(out), "--ct2", str(ct2)])
    assert (out / "model.safetensors").exists() and (ct2 / "model.bin").exists()
    before = {p: p.read_bytes() for d in (out, ct2) for p in sorted(d.iterdir())}
    other = make_checkpoint(tmp_path / "other", n_layers=1)  # another model: other weights

    def full_disk(self, output_dir, **kwargs):
        (Path(output_dir) / "model.bin").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(TransformersConverter, "convert", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        cli(lambda: export.main(["--checkpoint", str(other), "--out", str(out), "--ct2", str(ct2)]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write {ct2} (No space left on device)"], err
    assert {p: p.read_bytes() for d in (out, ct2) for p in sorted(d.iterdir())} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "ct2", "hf", "other"]
