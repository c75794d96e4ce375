"""evaluate.py: sacreBLEU figures and signatures, paired bootstrap, test sets, the CLI."""

import gzip
import json
import os
import random
import subprocess
import sys

import pytest
import sacrebleu

import evaluate
from checkpoint import load_model
from config import UserError
from helpers import ROOT
from test_translate import make_checkpoint
from translate import translate_texts

WORDS = (
    "der die das hund katze mann frau kind sieht liest isst ein eine buch apfel im garten".split()
)


def corpus(n: int = 120, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(n)]


def corrupt(lines: list[str], seed: int = 1) -> list[str]:
    """Drop a word from most sentences: a clearly worse system."""
    rng = random.Random(seed)
    out = []
    for line in lines:
        words = line.split()
        if rng.random() < 0.7:
            del words[rng.randrange(len(words))]
        out.append(" ".join(words))
    return out


def write(path, lines: list[str]) -> str:
    text = "".join(line + "\n" for line in lines)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def test_score_reports_bleu_chrf_ter_with_signatures():
    refs = corpus(30)
    r = evaluate.score(refs, refs)
    assert (r["bleu"], r["chrf"], r["ter"], r["sentences"]) == (100.0, 100.0, 0.0, 30)
    assert "tok:13a" in r["bleu_signature"] and "nc:6" in r["chrf_signature"]
    assert "tok:tercom" in r["ter_signature"]
    assert all("case:mixed" in r[f"{k}_signature"] for k in ("bleu", "chrf", "ter"))
    upper = [s.upper() for s in refs]
    assert evaluate.score(upper, refs)["bleu"] < 100
    lower = evaluate.score(upper, refs, lowercase=True)
    assert (lower["bleu"], lower["chrf"], lower["ter"]) == (100.0, 100.0, 0.0)
    assert all("case:lc" in lower[f"{k}_signature"] for k in ("bleu", "chrf", "ter"))
    with pytest.raises(UserError, match="2 hypotheses but 30 references"):
        evaluate.score(refs[:2], refs)


def test_paired_bootstrap_tells_a_better_system_from_a_worse_one():
    refs = corpus()
    worse = corrupt(refs)
    c = evaluate.paired_bootstrap(refs, worse, refs, n_samples=200)
    assert c["bleu"]["delta"] > 0 and c["chrf"]["delta"] > 0 and c["ter"]["delta"] < 0
    assert all(c[k]["p_value"] < 0.05 for k in ("bleu", "chrf", "ter"))
    assert "bs:200" in c["bleu"]["signature"] and "seed:" in c["bleu"]["signature"]
    # two systems equally damaged in different places: no significant difference
    same_quality = evaluate.paired_bootstrap(corrupt(refs, seed=2), worse, refs, n_samples=200)
    assert same_quality["bleu"]["p_value"] > 0.05
    # each figure is the one it is named after: scores of each system, the bootstrap's mean and
    # 95 % interval of the system (sacreBLEU's PairedTest run alike, its seed fixed)
    from sacrebleu.significance import PairedTest

    base, system = evaluate.score(worse, refs), evaluate.score(corrupt(refs, seed=2), refs)
    for k in evaluate.METRIC_NAMES:
        assert (same_quality[k]["baseline"], same_quality[k]["system"]) == (base[k], system[k])
    named = {evaluate.METRIC_NAMES[k]: m for k, m in evaluate.metrics(False).items()}
    test = PairedTest([("baseline", worse), ("system", corrupt(refs, seed=2))], named,
                      references=[refs], test_type="bs", n_samples=200)  # fmt: skip
    results = test()[1]
    for k, name in evaluate.METRIC_NAMES.items():
        system = results[name][1]
        assert same_quality[k]["system_mean"] == round(float(system.mean), 2)
        assert same_quality[k]["system_ci95"] == round(float(system.ci), 2)


def test_cli_scores_gz_files_compares_and_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SACREBLEU_SEED", "7")  # recorded as the seed the bootstrap used
    refs = corpus()
    ref = write(tmp_path / "ref.de.gz", refs)
    hyp = write(tmp_path / "hyp.de", corrupt(refs, seed=2))
    other = write(tmp_path / "other.de.gz", corrupt(corrupt(refs, seed=3), seed=4))
    out = tmp_path / "report.json"
    evaluate.main(["--hypotheses", hyp, "--reference", ref, "--compare", other,
                   "--bootstrap_samples", "100", "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    for text in ("BLEU = ", "chrF2 = ", "TER = ", "signatures:", "paired bootstrap", "p-value"):
        assert text in printed
    r = json.loads(out.read_text())
    for key in ("bleu", "bleu_signature", "chrf", "chrf_signature", "ter", "ter_signature",
                "sentences", "bleu_precisions", "hyp_len", "ref_len"):  # fmt: skip
        assert key in r
    assert r["compare"]["bleu"]["delta"] > 0 and 0 < r["compare"]["bleu"]["p_value"] <= 1
    assert r["compare_with"] == other and r["compare_samples"] == 100
    assert r["compare_seed"] == "7"
    monkeypatch.setenv("SACREBLEU_SEED", "None")  # sacreBLEU's word for a seed from the OS
    r = evaluate.main(["--hypotheses", hyp, "--reference", ref, "--compare", other,
                       "--bootstrap_samples", "20"])  # fmt: skip
    assert r["compare_seed"] == "None" and r["compare"]["bleu"]["delta"] > 0
    # the brevity penalty, not the length ratio (the corrupted hypotheses are shorter: bp < 1)
    bleu = sacrebleu.BLEU().corpus_score(corrupt(refs, seed=2), [refs])
    assert bleu.bp < 1 and r["bleu_bp"] == round(bleu.bp, 4) != round(bleu.ratio, 4)


def test_scores_are_sacrebleus_for_hypotheses_against_references():
    # sacreBLEU itself, the hypotheses in their place: BLEU and chrF are not symmetric (brevity
    # penalty, recall), so references scored against hypotheses would differ
    refs = corpus(40)
    hyps = corrupt(refs)
    r = evaluate.score(hyps, refs)
    assert r["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
    assert r["chrf"] == round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)
    assert r["bleu"] != round(sacrebleu.corpus_bleu(refs, [hyps]).score, 2)
    assert r["bleu_bp"] < 1 and r["hyp_len"] < r["ref_len"]


def test_compare_with_lowercase_compares_case_blind(tmp_path):
    refs = corpus(30)
    ref = write(tmp_path / "ref.de", refs)
    upper = write(tmp_path / "upper.de", [r.upper() for r in refs])
    lower = write(tmp_path / "lower.de", [r.lower() for r in refs])
    r = evaluate.main(["--hypotheses", upper, "--reference", ref, "--compare", lower,
                       "--bootstrap_samples", "10", "--lowercase"])  # fmt: skip
    for key in ("bleu", "chrf", "ter"):
        assert r["compare"][key]["delta"] == 0, (key, r["compare"][key])
        assert "case:lc" in r["compare"][key]["signature"]


def test_hypotheses_from_a_pipe(tmp_path):
    # translate.py ... | evaluate.py --hypotheses - ; and no datasets progress bar in a pipe
    refs = corpus(20)
    write(tmp_path / "test.en", [f"source {i}" for i in range(20)])
    write(tmp_path / "test.de", refs)
    proc = subprocess.run(
        [sys.executable, "evaluate.py", "--hypotheses", "-", "--test_data",
         f"{tmp_path}/test.{{lang}}", "--json", "-"],
        input="".join(r + "\n" for r in refs), capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert "BLEU = 100.00" in proc.stdout


def test_lowercase_scores_case_blind(tmp_path):
    refs = corpus(20)
    ref = write(tmp_path / "ref.de", refs)
    hyp = write(tmp_path / "hyp.de", [r.upper() for r in refs])
    assert evaluate.main(["--hypotheses", hyp, "--reference", ref])["bleu"] < 10
    r = evaluate.main(["--hypotheses", hyp, "--reference", ref, "--lowercase"])
    assert r["bleu"] == 100.0 and "case:lc" in r["bleu_signature"]


def test_references_from_a_test_set_spec(tmp_path):
    refs = corpus(20)
    write(tmp_path / "test.en", [f"source {i}" for i in range(20)])
    write(tmp_path / "test.de", refs)
    hyp = write(tmp_path / "hyp.de", refs)
    r = evaluate.main(["--hypotheses", hyp, "--test_data", f"{tmp_path}/test.{{lang}}"])
    assert r["bleu"] == 100.0 and r["sentences"] == 20


def test_test_set_languages_and_split_can_be_chosen(tmp_path):
    import datasets

    en, de = corpus(20, seed=3), corpus(20, seed=4)
    write(tmp_path / "test.en", en)
    write(tmp_path / "test.de", de)
    spec = f"{tmp_path}/test.{{lang}}"
    hyp_en = write(tmp_path / "hyp.en", en)
    # German -> English: the references are the English side
    r = evaluate.main(["--hypotheses", hyp_en, "--test_data", spec, "--src_lang", "de",
                       "--tgt_lang", "en"])  # fmt: skip
    assert r["bleu"] == 100.0
    assert evaluate.main(["--hypotheses", hyp_en, "--test_data", spec])["bleu"] < 100
    rows = [{"translation": {"en": e, "de": d}} for e, d in zip(en, de, strict=True)]
    datasets.DatasetDict(
        {"valid": datasets.Dataset.from_list(rows[:5]), "test": datasets.Dataset.from_list(rows)}
    ).save_to_disk(tmp_path / "saved")
    hyp_de = write(tmp_path / "hyp.de", de[:5])
    r = evaluate.main(["--hypotheses", hyp_de, "--test_data", str(tmp_path / "saved"),
                       "--split", "valid"])  # fmt: skip
    assert r["bleu"] == 100.0 and r["sentences"] == 5
    assert r["test_set"] == {
        "test_data": str(tmp_path / "saved"), "split": "valid", "dataset_config": None,
        "src_lang": "en", "tgt_lang": "de",
    }  # fmt: skip
    # a file, or a saved Dataset (not a DatasetDict), is read whole: "--split valid" would have
    # scored it as it is
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "one")
    for one_set in (spec, str(tmp_path / "one")):
        with pytest.raises(UserError, match=r"--split valid: test set .* is one set, without"):
            evaluate.main(["--hypotheses", hyp_de, "--test_data", one_set, "--split", "valid"])
    for no_configs in (spec, str(tmp_path / "one"), str(tmp_path / "saved")):  # ignored before
        with pytest.raises(UserError, match=r"--hub_config fr-en: test set .* has no configs$"):
            evaluate.main(["--hypotheses", hyp_de, "--test_data", no_configs, "--hub_config",
                           "fr-en"])  # fmt: skip
    with pytest.raises(UserError, match="--split chooses a test set, but --reference"):
        evaluate.main(["--hypotheses", hyp_de, "--reference", hyp_de, "--split", "valid"])
    for flag in ("--src_lang", "--hub_config"):  # ignored before, the direction warning too
        with pytest.raises(UserError, match=f"{flag} chooses a test set, but --reference"):
            evaluate.main(["--hypotheses", hyp_de, "--reference", hyp_de, flag, "fr"])
    r = evaluate.main(["--hypotheses", hyp_en, "--test_data", spec])
    assert r["test_set"]["test_data"] == spec and r["test_set"]["split"] is None


def test_checkpoint_translates_its_test_data_with_beam(tmp_path, capsys):
    write(tmp_path / "test.en", ["the dog sees the cat", "", "a man reads a book"])
    write(tmp_path / "test.de", ["der hund sieht die katze", "", "ein mann liest ein buch"])
    ckpt = make_checkpoint(tmp_path / "ckpt", test_data=f"{tmp_path}/test.{{lang}}")
    out, hyps = tmp_path / "r.json", tmp_path / "hyp.de"
    evaluate.main(["--checkpoint", str(ckpt), "--beam", "2", "--length_penalty", "1.0",
                   "--output", str(hyps), "--json", str(out)])  # fmt: skip
    r = json.loads(out.read_text())
    assert r["sentences"] == 3 and r["decoding"]["beam"] == 2 and r["decoding"]["alpha"] == 1.0
    # the test set's own files are inputs too: writing over them is refused
    with pytest.raises(UserError, match=r"^--output .*test.de is the test set's de file"):
        evaluate.main(["--checkpoint", str(ckpt), "--output", str(tmp_path / "test.de")])
    assert (
        tmp_path / "test.de"
    ).read_text() == "der hund sieht die katze\n\nein mann liest ein buch\n"
    # the printed report says what it scored too, not only the JSON
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [
        f"translated by {ckpt} (beam 2, length penalty 1.0)",
        f"test set: test_data {tmp_path}/test.{{lang}}, src_lang en, tgt_lang de",
    ]
    assert r["config"]["test_data"] == f"{tmp_path}/test.{{lang}}"
    assert r["model_config"]["d_model"] == 16
    assert "warning" not in capsys.readouterr().err
    # the other direction than the checkpoint's: decoded, with a warning (a model trained both
    # ways may be asked for either)
    other = tmp_path / "hyp.en"
    r = evaluate.main(["--checkpoint", str(ckpt), "--src_lang", "de", "--tgt_lang", "en",
                       "--output", str(other)])  # fmt: skip
    assert r["test_set"]["src_lang"] == "de"
    assert capsys.readouterr().err.splitlines()[0] == (
        "warning: the checkpoint was trained en->de; decoding de->en (--src_lang / --tgt_lang)"
    )
    # the German lines decoded, scored against the English ones
    model, tok, ids, cfg = load_model(ckpt)
    german = ["der hund sieht die katze", "", "ein mann liest ein buch"]
    english = ["the dog sees the cat", "", "a man reads a book"]
    decoded = translate_texts(model, tok, ids, german, 64, cfg.max_seq_length)
    assert other.read_text().split("\n")[:-1] == decoded and decoded[1] == ""  # empty stays
    assert r["bleu"] == evaluate.score(decoded, english)["bleu"]
    assert decoded != translate_texts(model, tok, ids, english, 64, cfg.max_seq_length)
    # the hypotheses are beam 2's, not greedy's (they differ on this model)
    sources = ["the dog sees the cat", "", "a man reads a book"]
    beam = translate_texts(model, tok, ids, sources, 64, cfg.max_seq_length, beam=2, alpha=1.0)
    assert hyps.read_text().split("\n")[:-1] == beam
    assert beam != translate_texts(model, tok, ids, sources, 64, cfg.max_seq_length)
    # --source/--reference files win over the config's test set
    src = write(tmp_path / "other.en", ["we eat an apple"])
    ref = write(tmp_path / "other.de", ["wir essen einen apfel"])
    r = evaluate.main(["--checkpoint", str(ckpt), "--source", src, "--reference", ref])
    assert r["sentences"] == 1
    assert r["decoding"]["beam"] == 1 and r["decoding"]["alpha"] is None  # greedy has none
    r = evaluate.main(
        ["--checkpoint", str(ckpt), "--source", src, "--reference", ref, "--beam", "2"]
    )
    assert r["decoding"]["alpha"] == 0.6  # beam search's default


def test_usage_errors_are_one_line_user_errors(tmp_path):
    ref = write(tmp_path / "ref.de", corpus(5))
    hyp = write(tmp_path / "hyp.de", corpus(5))
    with pytest.raises(UserError, match="--output writes the translations of --checkpoint"):
        evaluate.main(["--hypotheses", hyp, "--reference", ref, "--output", hyp])
    assert (tmp_path / "hyp.de").read_text() == (tmp_path / "ref.de").read_text()  # not emptied
    with pytest.raises(UserError, match="--output and --json name the same file"):
        evaluate.main(["--checkpoint", "c", "--source", ref, "--reference", ref,
                       "--output", hyp, "--json", str(tmp_path / "." / "hyp.de")])  # fmt: skip
    # an output that is an input would be written over it when done
    with pytest.raises(UserError, match=r"^--output .*ref.de is the --reference file"):
        evaluate.main(["--checkpoint", "c", "--source", hyp, "--reference", ref, "--output", ref])
    os.symlink(hyp, tmp_path / "link.de")  # the same file by another name
    with pytest.raises(UserError, match=r"^--json .*link.de is the --hypotheses file"):
        evaluate.main(
            ["--hypotheses", hyp, "--reference", ref, "--json", str(tmp_path / "link.de")]
        )
    assert (tmp_path / "hyp.de").read_text() == (tmp_path / "ref.de").read_text()  # untouched
    with pytest.raises(UserError, match="either --hypotheses"):
        evaluate.main(["--reference", ref])
    # decoding options cannot change hypotheses already decoded: said, not ignored
    with pytest.raises(UserError, match="^--beam, --max_len_b: decoding options, but --hyp"):
        evaluate.main(["--hypotheses", hyp, "--reference", ref, "--beam", "5", "--max_len_b", "3"])
    with pytest.raises(UserError, match="no references"):
        evaluate.main(["--hypotheses", ref])
    with pytest.raises(UserError, match="--compare"):
        evaluate.main(["--hypotheses", ref, "--reference", ref, "--compare",
                       write(tmp_path / "short.de", corpus(3))])  # fmt: skip
    with pytest.raises(UserError, match="Hub"):  # offline in tests: fails fast, says so
        evaluate.main(["--hypotheses", ref, "--hub", "wmt/wmt14", "--hub_config", "de-en",
                       "--split", "test"])  # fmt: skip


def test_checkpoint_decoding_keeps_freed_memory_on_cpu(tmp_path, monkeypatch):
    """evaluate.py --checkpoint decodes as translate.py does: glibc keeps freed memory."""
    calls = []
    monkeypatch.setattr(evaluate, "keep_freed_memory", lambda device: calls.append(device) or True)
    src = write(tmp_path / "s.en", ["the dog sees the cat"])
    ref = write(tmp_path / "r.de", ["der hund sieht die katze"])
    ckpt = make_checkpoint(tmp_path / "ckpt")
    evaluate.main(["--checkpoint", str(ckpt), "--source", src, "--reference", ref,
                   "--device", "cpu"])  # fmt: skip
    assert calls == ["cpu"]
    evaluate.main(["--hypotheses", ref, "--reference", ref])  # scoring alone decodes nothing
    assert calls == ["cpu"]


def test_output_paths_are_checked_before_decoding(tmp_path, monkeypatch):
    """A bad --output or --json stops evaluate.py before it decodes, not after."""
    monkeypatch.setattr(evaluate, "translate_texts", lambda *a, **k: pytest.fail("decoded"))
    src = write(tmp_path / "s.en", ["the dog sees the cat"])
    ref = write(tmp_path / "r.de", ["der hund sieht die katze"])
    ckpt = make_checkpoint(tmp_path / "ckpt")
    for flag in ("--output", "--json"):
        with pytest.raises(UserError, match=r"cannot write .*nodir/x \(No such file"):
            evaluate.main(["--checkpoint", str(ckpt), "--source", src, "--reference", ref,
                           flag, str(tmp_path / "nodir" / "x")])  # fmt: skip


def test_empty_files_are_not_replaced_by_the_test_set(tmp_path):
    write(tmp_path / "test.en", ["the dog sees the cat", "a man reads a book"])
    write(tmp_path / "test.de", ["der hund sieht die katze", "ein mann liest ein buch"])
    ckpt = make_checkpoint(tmp_path / "ckpt", test_data=f"{tmp_path}/test.{{lang}}")
    empty = write(tmp_path / "empty.txt", [])
    with pytest.raises(UserError, match="nothing to score"):
        evaluate.main(["--checkpoint", str(ckpt), "--source", empty, "--reference", empty])
    # half from files, half from the test set would pair lines that do not belong together
    for half in (["--source", empty], ["--reference", empty]):
        with pytest.raises(UserError, match="--source and --reference go together"):
            evaluate.main(["--checkpoint", str(ckpt), *half])


def test_empty_references_are_scored_and_counted(tmp_path, capsys):
    # a Parquet test set's null reference became "" and was scored silently
    hyp = write(tmp_path / "h.de", ["der hund sieht die katze", "ein mann", "x"])
    ref = write(tmp_path / "r.de", ["der hund sieht die katze", "", " "])
    r = evaluate.main(["--hypotheses", str(hyp), "--reference", str(ref)])
    assert r["test_set"]["reference"] == str(ref)
    assert capsys.readouterr().err == f"warning: {ref}: 2 of 3 empty\n"
    evaluate.main(["--hypotheses", str(hyp), "--reference", str(hyp)])
    assert capsys.readouterr().err == ""


def test_the_report_names_the_checkpoint_decoded(tmp_path):
    """A run's output_dir decodes its best checkpoint; the JSON says which directory that was."""
    run = tmp_path / "run"
    make_checkpoint(run / "best")
    src = write(tmp_path / "s.en", ["the dog sees the cat"])
    ref = write(tmp_path / "r.de", ["der hund sieht die katze"])
    r = evaluate.main(["--checkpoint", str(run), "--source", src, "--reference", ref])
    assert r["checkpoint"] == str(run / "best")


# Lines of Multi30k's test_2016_flickr.de as released (raw/) and as the Multi30k repository's
# tok/test_2016_flickr.lc.norm.tok.de has them (lines 2, 226, 361, 369, 403, 457; the last from
# val.de, line 740, German quotes normalised): the form published Multi30k BLEU is computed on.
# Line 369 needs the lowercasing first: "Bart." is one token (Moses' German abbreviations)
MULTI30K_RAW_AND_TOK = [
    ("Ein Boston Terrier läuft über saftig-grünes Gras vor einem weißen Zaun.",
     "ein boston terrier läuft über saftig-grünes gras vor einem weißen zaun ."),
    ('Eine Frau auf einem Boot namens "El Corazon" lässt schwarze Gewichte ins Wasser fallen.',
     "eine frau auf einem boot namens &quot; el corazon &quot; lässt schwarze gewichte ins "
     "wasser fallen ."),
    ("Ein Mann läuft an einem Schild vorbei, auf dem E.S.E. Electronics steht.",
     "ein mann läuft an einem schild vorbei , auf dem e.s.e. electronics steht ."),
    ("Ein Mann mit ergrauenden Haaren rasiert seinen Bart.",
     "ein mann mit ergrauenden haaren rasiert seinen bart ."),
    ("Ein Mädchen in einem Radio-T-Shirt mit offenem Mund",
     "ein mädchen in einem radio-t-shirt mit offenem mund"),
    ('Eine Frau hält einen großen Scheck für "Kids\' Food Basket".',
     "eine frau hält einen großen scheck für &quot; kids &apos; food basket &quot; ."),
    ("Eine junge Frau in „Straßenkleidung“ und Stiefeln führt eine Ballettübung an einem See aus.",
     "eine junge frau in &quot; straßenkleidung &quot; und stiefeln führt eine ballettübung an "
     "einem see aus ."),
]  # fmt: skip


def test_moses_tokenizer_makes_the_multi30k_tokenized_references():
    tokenize = evaluate.moses_tokenizer("de", lowercase=True)
    assert [tokenize(raw) for raw, _ in MULTI30K_RAW_AND_TOK] == [
        tok for _, tok in MULTI30K_RAW_AND_TOK
    ]
    cased = evaluate.moses_tokenizer("de")
    assert cased(MULTI30K_RAW_AND_TOK[0][0]).startswith("Ein Boston Terrier")


def test_moses_bleu_is_unsmoothed_bleu_on_moses_tokens():
    hyps = ['Ein Mann vor E.S.E. sagt "Hallo" zu einer Frau.', "Zwei Hunde laufen."]
    refs = ['Ein Mann vor E.S.E. sagt "Hallo" zu der Frau.', "Zwei Hunde rennen."]
    by_hand = (  # each side lowercased and tokenized as Moses does, by hand (13a: "e . s . e .")
        ["ein mann vor e.s.e. sagt &quot; hallo &quot; zu einer frau .", "zwei hunde laufen ."],
        ["ein mann vor e.s.e. sagt &quot; hallo &quot; zu der frau .", "zwei hunde rennen ."],
    )
    bleu = sacrebleu.BLEU(tokenize="none", smooth_method="none").corpus_score(
        by_hand[0], [by_hand[1]]
    )
    r = evaluate.moses_bleu(hyps, refs, "de", lowercase=True)
    assert r["bleu_moses"] == round(bleu.score, 2) and "ref_len = 16" in r["bleu_moses_detail"]
    assert r["bleu_moses_form"].endswith(", de, case lc")
    assert r["bleu_moses"] != evaluate.score(hyps, refs, lowercase=True)["bleu"]
    # without smoothing, as multi-bleu.perl: no 4-gram in common is 0 (sacreBLEU's: above 0)
    assert evaluate.moses_bleu(hyps[1:], refs[1:], "de")["bleu_moses"] == 0.0
    assert evaluate.score(hyps[1:], refs[1:])["bleu"] > 0
    assert evaluate.moses_bleu(refs, refs, "de")["bleu_moses"] == 100.0


def test_cli_moses_adds_tokenized_bleu_its_case_from_lowercase(tmp_path, capsys):
    refs = [raw for raw, _ in MULTI30K_RAW_AND_TOK]
    ref = write(tmp_path / "ref.de", refs)
    hyp = write(tmp_path / "hyp.de", [r.upper() for r in corrupt(refs)])
    lc, mixed = tmp_path / "lc.json", tmp_path / "mixed.json"
    evaluate.main(["--hypotheses", hyp, "--reference", ref, "--moses", "--lowercase",
                   "--json", str(lc)])  # fmt: skip
    assert "BLEU (Moses-tokenized; sacremoses " in capsys.readouterr().out
    evaluate.main(["--hypotheses", hyp, "--reference", ref, "--moses", "--json", str(mixed)])
    lc, mixed = json.loads(lc.read_text()), json.loads(mixed.read_text())
    assert lc["bleu_moses_form"].endswith("case lc") and mixed["bleu_moses_form"].endswith("mixed")
    assert lc["bleu_moses"] > 20 and mixed["bleu_moses"] == 0.0  # upper-cased: no 4-gram matches
    evaluate.main(["--hypotheses", hyp, "--reference", ref, "--json", str(tmp_path / "r.json")])
    assert "bleu_moses" not in json.loads((tmp_path / "r.json").read_text())
    # --tgt_lang names the references' language, whose Moses rules tokenize them
    en = tmp_path / "en.json"
    evaluate.main(["--hypotheses", hyp, "--reference", ref, "--moses", "--tgt_lang", "en",
                   "--json", str(en)])  # fmt: skip
    assert ", en, case mixed" in json.loads(en.read_text())["bleu_moses_form"]


def test_compound_split_tokenizes_as_get_ende_bleu():
    tokenize = evaluate.moses_tokenizer("de", compound_split=True)
    # by hand, as replace-unicode-punctuation.perl | tokenizer.perl -l de | perl -ple
    # 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g' make it: perl's matches do not overlap, so "a-b-c"
    # keeps its second hyphen; a hyphen beside a space stays; “ becomes &quot;, but the dash and
    # „ stay (the Multi30k form's whole normalisation makes them - and &quot;)
    line = "Der Rich-Text-Editor kostet 5 % mehr – „a-b-c“ und - Ende."
    assert tokenize(line) == (
        "Der Rich ##AT##-##AT## Text ##AT##-##AT## Editor kostet 5 % mehr – „ a ##AT##-##AT## "
        "b-c &quot; und - Ende ."
    )
    assert evaluate.moses_tokenizer("de")(line) == (
        "Der Rich-Text-Editor kostet 5 % mehr - &quot; a-b-c &quot; und - Ende ."
    )
    assert evaluate.moses_tokenizer("de", lowercase=True, compound_split=True)(line).startswith(
        "der rich ##AT##-##AT## text"
    )
    # perl's \S, not \w: a hyphen next to punctuation or another hyphen splits too
    assert tokenize("x--y") == "x ##AT##-##AT## -y"


def test_compound_split_bleu_credits_the_parts_of_a_compound():
    hyps, refs = ["Ein Open-Air-Konzert im Park ."], ["Ein Open-Air-Festival im Park ."]
    split = evaluate.moses_bleu(hyps, refs, "de", compound_split=True)
    by_hand = sacrebleu.BLEU(tokenize="none", smooth_method="none").corpus_score(
        ["Ein Open ##AT##-##AT## Air ##AT##-##AT## Konzert im Park ."],
        [["Ein Open ##AT##-##AT## Air ##AT##-##AT## Festival im Park ."]],
    )
    assert split["bleu_compound"] == round(by_hand.score, 2) and by_hand.score > 50
    assert split["bleu_compound_form"].endswith(", de, case mixed, compound-split")
    assert evaluate.moses_bleu(hyps, refs, "de")["bleu_moses"] == 0.0  # one token each: no 4-gram


def test_cli_compare_resamples_the_tokenized_bleus_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SACREBLEU_SEED", "7")
    refs = [raw for raw, _ in MULTI30K_RAW_AND_TOK] * 20
    ref, hyp = write(tmp_path / "ref.de", refs), write(tmp_path / "hyp.de", corrupt(refs, seed=3))
    base = write(tmp_path / "base.de", corrupt(refs, seed=4))
    out = tmp_path / "r.json"
    evaluate.main(["--hypotheses", hyp, "--reference", ref, "--compare", base, "--moses",
                   "--compound_split", "--bootstrap_samples", "50",
                   "--json", str(out)])  # fmt: skip
    printed, r = capsys.readouterr().out, json.loads(out.read_text())
    assert "BLEU (compound-split; sacremoses " in printed and "\n  BLEU cs " in printed
    hyps, bases = (evaluate.read_lines(p) for p in (hyp, base))
    for key, split in (("bleu_moses", False), ("bleu_compound", True)):
        c = r["compare"][key]
        assert c["system"] == r[key] == evaluate.moses_bleu(hyps, refs, "de", False, split)[key]
        assert c["baseline"] == evaluate.moses_bleu(bases, refs, "de", False, split)[key]
        assert "tok:none|smooth:none" in c["signature"] and "seed:7" in c["signature"]
        assert 0 < c["p_value"] <= 1 and c["system_ci95"] > 0
    assert set(r["compare"]) == {"bleu", "chrf", "ter", "bleu_moses", "bleu_compound"}
    # with --lowercase the resampled tokenized BLEUs are lowercased too, as the report's
    upper = write(tmp_path / "upper.de", [h.upper() for h in hyps])
    r = evaluate.main(["--hypotheses", upper, "--reference", ref, "--compare", base, "--moses",
                       "--compound_split", "--bootstrap_samples", "20", "--lowercase"])  # fmt: skip
    for key in ("bleu_moses", "bleu_compound"):
        assert r["compare"][key]["system"] == r[key] == r["compare"][key]["system"] > 20


@pytest.mark.parametrize("flag", ["--moses", "--compound_split"])
def test_moses_without_sacremoses_is_one_line_before_any_decoding(tmp_path, monkeypatch, flag):
    monkeypatch.setitem(sys.modules, "sacremoses", None)  # import sacremoses: ImportError
    with pytest.raises(UserError, match=r"needs sacremoses: pip install sacremoses"):
        # a checkpoint that is not there: the missing package is said first
        evaluate.main(["--checkpoint", str(tmp_path / "none"), flag])
