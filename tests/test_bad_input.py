"""Bad input ends in one line on stderr ("error: ...", exit code 2, no traceback) or in a
counted, logged skip; never a traceback, never a silent drop.

Only what no other test file covers is here. Covered elsewhere:
  config: unknown key, wrong type, sizes <= 0, num_heads not dividing model_dim, dropout out
    of range (tests/test_config.py); train.py exits 2 with one line (test_config.py,
    test_end_to_end.py)
  data: missing file (test_data.py), misaligned files, empty file, non-UTF-8 naming file and
    line, CRLF and BOM, bad JSONL lines (test_data_sources.py), U+2028 & co. inside a line
    (test_data.py), empty and overlong pairs dropped and counted (test_data.py, tokenize)
  checkpoint: translate.py on a missing directory (test_end_to_end.py) and on truncated
    weights (test_reliability.py); a pickle as weights (test_reliability.py)
  translate input: empty lines keep their place (test_end_to_end.py, test_translate.py), a
    source over max_seq_length is truncated with a warning naming the line (test_translate.py)
"""

import gzip
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import evaluate
import translate
from checkpoint import load_model
from config import TrainConfig, UserError, cli
from data import load_text
from helpers import ROOT, subprocess_env, write_corpus

ENV = subprocess_env()
MAINS = {"translate": translate.main, "evaluate": evaluate.main}
# Every character str.splitlines() ends a line at, besides "\n".
LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def run(*args, input=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env=ENV,
        input=input,
        capture_output=True,
        timeout=120,
    )


def assert_one_line_error(code, stderr: str | bytes, *parts: str) -> str:
    """Exit code 2, and stderr is exactly one line "error: ..." holding every part."""
    stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def run_cli(main, argv: list, capsys) -> tuple[int, str]:
    """What `python translate.py ARGV` does, in this process: (exit code, stderr).

    Anything but a UserError escapes `cli` and fails the test, as a traceback would."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli(lambda: main([str(a) for a in argv]))
    return e.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("bad_input"), 11, 200, 8, 120)


def train_argv(corpus: Path, out, *extra) -> list:
    return [
        "train.py", "--config", "configs/tiny.json", "--train_data", f"{corpus}/train.{{lang}}",
        "--valid_data", f"{corpus}/valid.{{lang}}", "--tokenizer", corpus / "tok",
        "--output_dir", out, "--log_with", "null", "--valid_bleu_samples", "2", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    """A run's output_dir after two steps of train.py (best/, last -> checkpoints/step-2)."""
    out = tmp_path_factory.mktemp("bad_input_run") / "run"
    proc = run(*train_argv(corpus, out, "--max_steps", 2))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return out


# ---------------------------------------------------------------------------------------------
# command lines


@pytest.mark.parametrize(
    "tool, argv, abbreviation",
    [
        ("translate", ["--checkpoint", "nowhere", "--batch", "8"], "--batch"),
        ("evaluate", ["--checkpoint", "nowhere", "--lower"], "--lower"),
        ("average", ["--checkpoints", "a", "b", "--out", "c", "--las", "3"], "--las"),
        ("export", ["--checkpoint", "nowhere", "--out", "c", "--ct", "c2"], "--ct"),
        (
            "score",
            ["--checkpoint", "nowhere", "--source", "s", "--target", "t", "--norm"],
            "--norm",
        ),  # fmt: skip
        ("data", ["audit", "--conf", "nowhere.json"], "unknown config key: conf"),
    ],
)
def test_option_abbreviations_are_refused(tool, argv, abbreviation, capsys):
    # argparse takes a unique prefix for an option by default: "--ct" passed as --ct2 and
    # "--checkpoint" as average.py's --checkpoints (one checkpoint averaged), not as typos
    main = importlib.import_module(tool).main
    with pytest.raises(SystemExit) as e:
        cli(lambda: main(argv))
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert e.value.code == 2 and abbreviation in last, err
    assert "unrecognized arguments" in last or tool == "data", err
    assert "nowhere" not in err  # refused before anything was looked up


# ---------------------------------------------------------------------------------------------
# config: what only train.py itself can find out


def test_train_py_missing_data_file(corpus, tmp_path):
    argv = train_argv(corpus, tmp_path / "run", "--max_steps", 1)
    argv[argv.index("--train_data") + 1] = f"{tmp_path}/nowhere/train.{{lang}}"
    proc = run(*argv)
    assert_one_line_error(
        proc.returncode, proc.stderr, f"data file not found: {tmp_path}/nowhere/train.en"
    )


def test_train_py_missing_valid_file_stops_before_the_work_and_leaves_nothing(corpus, tmp_path):
    # it was found after the tokenizer was trained and train tokenized (minutes on WMT14), and
    # the new output_dir kept the tokenizer
    out = tmp_path / "run"
    argv = train_argv(corpus, out, "--max_steps", 1)
    argv[argv.index("--valid_data") + 1] = f"{tmp_path}/nowhere/valid.{{lang}}"
    argv[argv.index("--tokenizer") + 1] = '{"train": "unigram", "vocab_size": 100}'
    proc = run(*argv)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err[-2000:]
    assert (
        err.strip().splitlines()[-1] == f"error: data file not found: {tmp_path}/nowhere/valid.en"
    )
    assert "tokenized" not in proc.stdout.decode() + err
    assert not out.exists()


def test_train_py_output_dir_that_cannot_be_made(corpus, tmp_path, monkeypatch, capsys):
    import train  # in this process: the check comes before accelerate is set up

    monkeypatch.chdir(ROOT)
    # Tests run as root, where chmod does not stop writes: put the directory under a file.
    (tmp_path / "a_file").write_text("x")
    argv = train_argv(corpus, tmp_path / "a_file" / "run", "--max_steps", 1)[1:]
    code, err = run_cli(train.main, argv, capsys)
    assert_one_line_error(code, err, f"output_dir {tmp_path}/a_file/run is not writable")


def test_train_py_unknown_tracker_is_one_line(corpus, tmp_path, monkeypatch, capsys):
    import train

    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    argv = train_argv(corpus, out, "--max_steps", 1, "--log_with", "tensorbord")[1:]
    code, err = run_cli(train.main, argv, capsys)
    assert_one_line_error(code, err, "log_with must be null or one of", "'tensorbord'")
    assert not out.exists()  # nothing made


def test_train_py_best_by_bleu_without_bleu_samples_is_one_line(corpus, tmp_path, monkeypatch,
                                                               capsys):  # fmt: skip
    import train

    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    argv = train_argv(corpus, out, "--max_steps", 1, "--valid_bleu_samples", 0)[1:]
    code, err = run_cli(train.main, argv, capsys)  # best/ would be chosen on the loss unsaid
    assert_one_line_error(code, err, 'best_metric "bleu" needs valid_bleu_samples above 0')
    assert not out.exists()


def test_resume_past_a_metrics_line_cut_short(corpus, trained, tmp_path):
    """A kill while metrics.jsonl is appended to leaves half a line: --resume drops it, says
    so, and the file is JSON Lines again."""
    out = tmp_path / "run"
    shutil.copytree(trained, out, symlinks=True)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "step": 2, "train_lo')
    proc = run(*train_argv(corpus, out, "--max_steps", 3, "--resume"))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert "1 unreadable line(s) dropped" in proc.stdout.decode() + proc.stderr.decode()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and records[-1]["step"] == 3


def test_fresh_run_over_a_runs_checkpoints_is_refused(corpus, trained, monkeypatch, capsys):
    """Without --resume, a new run in an output_dir with checkpoints would prune its own newest
    ones as older than the earlier run's, and --resume would then pick the earlier run up."""
    import train

    monkeypatch.chdir(ROOT)
    before = sorted(p.name for p in (trained / "checkpoints").iterdir())
    code, err = run_cli(train.main, train_argv(corpus, trained, "--max_steps", 1)[1:], capsys)
    assert_one_line_error(code, err, "holds an earlier run's checkpoints (up to step-", "--resume")
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == before


def test_train_py_fp16_on_cpu_is_refused(corpus, tmp_path):
    """accelerate runs no autocast for fp16 on CPU: the run would be fp32 while saying fp16."""
    out = tmp_path / "run"
    proc = run(*train_argv(corpus, out, "--max_steps", 1, "--mixed_precision", "fp16"))
    assert_one_line_error(proc.returncode, proc.stderr, "mixed_precision fp16", "use bf16 or no")
    assert not out.exists()  # nothing half-written


# ---------------------------------------------------------------------------------------------
# data: files that are not what their names say


def data_cfg() -> TrainConfig:
    return TrainConfig(src_lang="en", tgt_lang="de")


@pytest.mark.parametrize("damage", ["not gzip", "truncated"])
def test_broken_gz_file_is_named(tmp_path, damage):
    whole = gzip.compress("".join(f"sentence {i}\n" for i in range(2000)).encode())
    (tmp_path / "t.de.gz").write_bytes(whole)
    en = b"plain text, no gzip\n" if damage == "not gzip" else whole[: len(whole) // 2]
    (tmp_path / "t.en.gz").write_bytes(en)
    with pytest.raises(UserError, match=rf"^{tmp_path}/t\.en\.gz: cannot read \("):
        load_text(str(tmp_path / "t.{lang}.gz"), data_cfg(), "train")


@pytest.mark.parametrize(("name", "text"), [("t.jsonl", "\n\n"), ("t.csv", "en,de\n")])
def test_file_without_a_single_record(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=rf"^{tmp_path}/{name}: no sentence pairs$"):
        load_text(str(tmp_path / name), data_cfg(), "train")


# ---------------------------------------------------------------------------------------------
# checkpoint: every way a copied, edited or half-deleted checkpoint goes wrong


def edit_json(path: Path, **changes):
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        target = meta
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    path.write_text(json.dumps(meta))


def grow_tokenizer(path: Path):
    """Another tokenizer: one more token than the model's vocabulary of 120 has ids for."""
    tok = json.loads(path.read_text())
    tok["added_tokens"].append({"id": 120, "content": "<extra>", "single_word": False,
                                "lstrip": False, "rstrip": False, "normalized": False,
                                "special": True})  # fmt: skip
    path.write_text(json.dumps(tok))


BROKEN = {  # name -> (how to break a copy of best/, what the error says)
    "missing directory": (lambda d: shutil.rmtree(d), "checkpoint not found"),
    "truncated weights": (
        lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:1000]
        ),
        "corrupt or truncated weights",
    ),
    "d_model edited": (
        lambda d: edit_json(d / "model_config.json", d_model=48),
        "weights do not match model_config.json",
    ),
    "no model_config.json (an export.py directory has none)": (
        lambda d: (d / "model_config.json").unlink(),
        "not a checkpoint of this repository (no model_config.json; an export.py directory",
    ),
    "n_heads 0": (
        lambda d: edit_json(d / "model_config.json", n_heads=0),
        "model_config.json: unreadable",
    ),
    "max_len 0": (
        lambda d: edit_json(d / "model_config.json", max_len=0),
        "model_config.json: unreadable (sizes must be >= 1: max_len 0)",
    ),
    "special id out of range": (
        lambda d: edit_json(d / "model_config.json", **{"special_ids.eos": 5000}),
        "do not fit a vocabulary of 120",
    ),
    "special id one past the vocabulary": (
        lambda d: edit_json(d / "model_config.json", **{"special_ids.eos": 120}),
        "do not fit a vocabulary of 120",
    ),
    "pad_id not the special pad": (
        lambda d: edit_json(d / "model_config.json", pad_id=1),
        "do not fit a vocabulary of 120",
    ),
    "bad training config": (
        lambda d: edit_json(d / "config.json", dropout=3),
        "config.json: unreadable (config: dropout must be in [0, 1)",
    ),
    "no weights": (
        lambda d: (d / "model.safetensors").unlink(),
        "no model.safetensors here or in",
    ),
    "a larger tokenizer": (lambda d: grow_tokenizer(d / "tokenizer.json"), "they do not belong"),
    "tokenizer deleted": (
        lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
        "cannot load the tokenizer saved with the checkpoint",
    ),
}


@pytest.mark.parametrize(
    ("broken", "tool"),
    [
        (broken, tool)
        for broken in BROKEN
        for tool in ("translate", "evaluate", "train", "score")
        # translate.py on these two: test_end_to_end.py, test_reliability.py
        if tool != "translate" or broken not in ("missing directory", "truncated weights")
    ],
)
def test_broken_checkpoint_is_one_line(
    trained, corpus, tmp_path, monkeypatch, capsys, broken, tool
):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained / "best", ckpt)
    damage, message = BROKEN[broken]
    damage(ckpt)
    if tool == "translate":
        argv = ["--checkpoint", ckpt, "--input", corpus / "test.en"]
    elif tool in ("evaluate", "score"):
        argv = ["--checkpoint", ckpt, "--source", corpus / "test.en"]
        argv += ["--reference" if tool == "evaluate" else "--target", corpus / "test.de"]
    else:  # fine-tuning from it
        import train

        monkeypatch.chdir(ROOT)
        argv = train_argv(corpus, tmp_path / "ft", "--init_from", ckpt, "--max_steps", 1)[1:]
    main = train.main if tool == "train" else importlib.import_module(tool).main
    code, err = run_cli(main, argv, capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "ft").exists()  # refused before the run's directory is made


def test_evaluate_py_on_a_checkpoint_without_tokenizer(trained, corpus, tmp_path):
    """The real command: nothing else (library warnings) reaches stderr."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained / "best", ckpt)
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer_config.json").unlink()
    proc = run("evaluate.py", "--checkpoint", ckpt, "--source", corpus / "test.en",
               "--reference", corpus / "test.de")  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stderr, str(ckpt), "tokenizer")


def test_positional_table_smaller_than_max_seq_length_truncates(trained, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained / "best", ckpt)
    edit_json(ckpt / "model_config.json", max_len=6)  # not a weight: loads fine
    src = tmp_path / "in.en"
    src.write_text("the dog sees the cat in the garden today\n")
    translate.main(
        ["--checkpoint", str(ckpt), "--input", str(src), "--output", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert "warning: line 1:" in err and "truncated to 6" in err
    assert (tmp_path / "o").read_text().count("\n") == 1


def test_stdin_closed_is_one_line(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", None)  # `python translate.py ... <&-`
    code, err = run_cli(translate.main, ["--checkpoint", trained], capsys)
    assert_one_line_error(code, err, "no input: stdin is closed; give --input")
    reference = tmp_path / "ref.de"
    reference.write_text("der Hund\n")
    argv = ["--hypotheses", "-", "--reference", reference]
    code, err = run_cli(evaluate.main, argv, capsys)
    assert_one_line_error(code, err, "no input: stdin is closed; give --hypotheses")


@pytest.mark.parametrize("tool", ["translate", "evaluate", "average", "export", "score"])
def test_a_usage_error_is_one_line(tool, capsys):
    # argparse printed its usage block before the error
    main = importlib.import_module(tool).main
    code, err = run_cli(main, ["--checkpoint", "x", "--beam", "abc", "--bogus"], capsys)
    assert_one_line_error(code, err, " --help)")  # (see PROG --help): argv[0], here pytest's


def test_stdout_closed_is_one_line(trained, tmp_path, monkeypatch, capsys):
    src = tmp_path / "in.en"
    src.write_text("the dog\n")
    monkeypatch.setattr(sys, "stdout", None)  # `python translate.py ... >&-`
    code, err = run_cli(translate.main, ["--checkpoint", trained, "--input", src], capsys)
    assert_one_line_error(code, err, "no output: stdout is closed; give --output FILE")
    # evaluate.py's report went nowhere (exit 0), or, with --json FILE, raised AttributeError
    ref, report = tmp_path / "ref.de", tmp_path / "report.json"
    ref.write_text("der Hund läuft über die Wiese\n")
    for json_to in ([], ["--json", "-"]):
        argv = ["--hypotheses", ref, "--reference", ref, *json_to]
        code, err = run_cli(evaluate.main, argv, capsys)
        assert_one_line_error(code, err, "no output: stdout is closed; give --json FILE")
    evaluate.main(["--hypotheses", str(ref), "--reference", str(ref), "--json", str(report)])
    assert json.loads(report.read_text())["bleu"] == 100.0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_one_line(trained, tmp_path, capsys):
    # /dev/full: every write fails with ENOSPC, as on a full disk
    src, ref = tmp_path / "in.en", tmp_path / "ref.de"
    src.write_text("the dog\n")
    ref.write_text("der Hund\n")
    argv = ["--checkpoint", trained, "--input", src, "--output", "/dev/full"]
    code, err = run_cli(translate.main, argv, capsys)
    assert_one_line_error(code, err, "cannot write: No space left on device")
    with open("/dev/full", "w") as full:  # stdout on a full disk: `translate.py > /dev/full`
        proc = subprocess.run([sys.executable, "translate.py", "--checkpoint", str(trained),
                               "--input", str(src)], cwd=ROOT, stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120)  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stderr, "cannot write: No space left on device")
    argv = ["--hypotheses", ref, "--reference", ref, "--json", "/dev/full"]
    code, err = run_cli(evaluate.main, argv, capsys)
    assert_one_line_error(code, err, "cannot write: No space left on device")


def test_a_huge_output_budget_is_the_positional_table(trained, tmp_path):
    # --max_len_b past int64 raised OverflowError in the budget's tensor; the table caps it
    src = tmp_path / "in.en"
    src.write_text("the dog\n")
    for b in ("100000000000000000000", "1000000"):
        translate.main(["--checkpoint", str(trained), "--input", str(src), "--output",
                        str(tmp_path / f"{len(b)}.de"), "--max_len_b", b])  # fmt: skip
    assert (tmp_path / "21.de").read_text() == (tmp_path / "7.de").read_text()


@pytest.mark.parametrize("tool", ["translate", "evaluate"])
def test_checkpoint_given_twice_means_both(tool, monkeypatch, capsys):
    # argparse kept the last --checkpoint alone: one model decoded, unsaid
    import ensemble

    given = []
    monkeypatch.setattr(ensemble, "load_models", lambda dirs, *_: given.append(dirs) or cli_stop())
    argv = ["--checkpoint", "a", "--checkpoint", "b", "c"]
    if tool == "evaluate":
        argv += ["--source", __file__, "--reference", __file__]
    with pytest.raises(UserError, match="stop"):
        importlib.import_module(tool).main(argv)
    assert given == [["a", "b", "c"]]


def cli_stop():
    raise UserError("stop")


# ---------------------------------------------------------------------------------------------
# translate input: one output line per input line, whatever the line holds


ODD_LINES = [
    "a\x00b",
    "escape \x1b[31m red",
    "vertical\x0btab",
    "form\x0cfeed",
    "line\u2028separator and paragraph\u2029separator",
    "next\x85line and \x1c\x1d\x1e group separators",
    "\x00",
    "\x1c\x1d\x1e\x85\u2028",  # whitespace to str.strip(): an empty line
    "",
    "the dog sees the cat " * 5000,  # 100,000 characters
    "x" * 100_000,  # 100,000 characters, one word
    "ok",
]


@pytest.mark.parametrize("source", ["stdin", "file"])
def test_odd_characters_keep_one_output_line_per_input_line(
    trained, tmp_path, monkeypatch, capsys, source
):
    data = "".join(line + "\n" for line in ODD_LINES).encode()
    out = tmp_path / "out.de"
    argv = ["--checkpoint", str(trained), "--output", str(out), "--chunk_size", "5"]
    if source == "stdin":
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    else:
        (tmp_path / "in.en").write_bytes(data)
        argv += ["--input", str(tmp_path / "in.en")]
    translate.main(argv)
    got = out.read_bytes().decode().split("\n")
    assert len(got) == len(ODD_LINES) + 1 and got[-1] == ""
    assert got[7] == got[8] == ""  # blank lines stay blank
    assert all(len(line.splitlines()) <= 1 for line in got)  # nothing another reader splits
    err = capsys.readouterr().err
    assert "warning: line 10:" in err and "warning: line 11:" in err  # truncated, and said so


def test_decoded_text_never_holds_a_line_break(trained, monkeypatch):
    """A tokenizer may decode to control characters: output lines must stay whole lines."""
    model, tok, ids, cfg = load_model(trained)
    weird = "a" + "b".join(LINE_BREAKS) + "\tc\n d"
    monkeypatch.setattr(tok, "batch_decode", lambda seqs, **kw: [weird] * len(seqs))
    for beam, nbest in ((1, 1), (2, 2)):
        found = translate.translate_nbest(
            model, tok, ids, ["one", "", "two"], 4, beam=beam, nbest=nbest
        )
        for pairs in found:
            for text, _ in pairs:
                assert not any(c in text for c in LINE_BREAKS + "\n\t"), repr(text)
        line = translate.format_nbest(found[0]) if nbest > 1 else found[0][0][0]
        assert len(line.splitlines()) == 1


def test_invalid_utf8_on_stdin_leaves_no_partial_output(trained, tmp_path):
    out = tmp_path / "out.de"
    data = b"the dog\na cat\ncaf\xe9\nthe end\n"
    proc = run("translate.py", "--checkpoint", trained, "--output", out, "--chunk_size", "1",
               input=data)  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stderr, "stdin, line 3: not UTF-8")
    assert list(tmp_path.iterdir()) == []  # neither out.de nor its temporary file


def test_on_stdout_the_lines_before_a_bad_line_are_written_first(trained, corpus):
    # the error names line 5: lines 1-4 were translated too (they share a chunk with it)
    src = corpus / "test.en"
    good = src.read_text().splitlines()[:4]
    data = ("\n".join(good) + "\n").encode() + b"caf\xe9\nthe end\n"
    proc = run("translate.py", "--checkpoint", trained, "--chunk_size", "100", input=data)
    assert_one_line_error(proc.returncode, proc.stderr, "stdin, line 5: not UTF-8")
    alone = run("translate.py", "--checkpoint", trained, "--input", src)
    assert alone.returncode == 0 and len(good) == 4
    assert proc.stdout.decode().splitlines() == alone.stdout.decode().splitlines()[:4]


def test_sigterm_leaves_no_partial_output(trained, tmp_path):
    """`timeout` or a scheduler stopping translate.py: no output, and no temporary file."""
    out = tmp_path / "out.de"
    proc = subprocess.Popen(
        [sys.executable, "translate.py", "--checkpoint", str(trained), "--output", str(out),
         "--chunk_size", "1"],
        cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        proc.stdin.write(b"the dog\n")
        proc.stdin.flush()
        deadline = time.time() + 60
        while not list(tmp_path.iterdir()) and time.time() < deadline:
            time.sleep(0.05)  # until the output's temporary file is open
        assert list(tmp_path.iterdir()), "translate.py did not open its output"
        proc.send_signal(signal.SIGTERM)  # still reading stdin, which stays open
        assert proc.wait(timeout=60) == 143, proc.stderr.read().decode()[-2000:]
    finally:
        proc.kill()
    assert list(tmp_path.iterdir()) == []


def test_failed_run_keeps_the_previous_output_file(trained, tmp_path, capsys):
    src, out = tmp_path / "in.en", tmp_path / "out.de"
    src.write_bytes(b"the dog\ncaf\xe9\n")
    out.write_text("yesterday's translations\n")
    code, err = run_cli(
        translate.main,
        ["--checkpoint", trained, "--input", src, "--output", out, "--chunk_size", 1],
        capsys,
    )
    assert_one_line_error(code, err, f"{src}, line 2: not UTF-8")
    assert out.read_text() == "yesterday's translations\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.en", "out.de"]


@pytest.mark.parametrize("flag", ["translate --output", "evaluate --output", "evaluate --json"])
def test_output_that_cannot_be_written_is_one_line(trained, corpus, tmp_path, capsys, flag):
    tool, option = flag.split()
    target = tmp_path / "no_such_dir" / "out"
    argv = {
        "translate --output": ["--checkpoint", trained, "--input", corpus / "test.en"],
        "evaluate --output": ["--checkpoint", trained, "--source", corpus / "test.en",
                              "--reference", corpus / "test.de"],
        "evaluate --json": ["--hypotheses", corpus / "test.de", "--reference", corpus / "test.de"],
    }[flag] + [option, target]  # fmt: skip
    code, err = run_cli(MAINS[tool], argv, capsys)
    assert_one_line_error(code, err, f"cannot write {target} (No such file or directory)")


def test_evaluate_checks_sources_against_references_before_decoding(
    trained, corpus, tmp_path, monkeypatch, capsys
):
    (tmp_path / "short.de").write_text("nur eine Zeile\n")

    def fail(*args, **kwargs):
        raise AssertionError("decoded before checking the line counts")

    monkeypatch.setattr(evaluate, "translate_texts", fail)
    argv = ["--checkpoint", trained, "--source", corpus / "test.en", "--reference",
            tmp_path / "short.de"]  # fmt: skip
    code, err = run_cli(evaluate.main, argv, capsys)
    assert_one_line_error(
        code, err, f"{corpus / 'test.en'} has 4 lines, {tmp_path / 'short.de'} has 1"
    )


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--compare", "missing.de"], "data file not found: "),
        (["--compare", "short.de"], "short.de has 1 lines, "),
        (["--bootstrap_samples", 10], "--bootstrap_samples resamples for --compare: it needs"),
        (["--compare", "test.de", "--bootstrap_samples", 0], "--bootstrap_samples must be >= 1"),
        (["--device", "nonsense"], "--device nonsense: not usable here"),
        (["--device", "cuda:99"], "--device cuda:99: not usable here"),
    ],
)
def test_evaluate_checks_its_options_before_decoding(
    trained, corpus, tmp_path, monkeypatch, capsys, flags, expected
):
    """Not after the whole test set is decoded."""
    (tmp_path / "short.de").write_text("nur eine Zeile\n")
    shutil.copy(corpus / "test.de", tmp_path / "test.de")
    monkeypatch.setattr(evaluate, "translate_texts", lambda *a, **k: pytest.fail("decoded"))
    flags = [tmp_path / f if str(f).endswith(".de") else f for f in flags]
    argv = ["--checkpoint", trained, "--source", corpus / "test.en", "--reference",
            corpus / "test.de", *flags]  # fmt: skip
    code, err = run_cli(evaluate.main, argv, capsys)
    assert_one_line_error(code, err, expected)


@pytest.mark.parametrize("seed", ["", "-1", "abc"])
def test_evaluate_checks_sacrebleus_seed_before_decoding(
    trained, corpus, monkeypatch, capsys, seed
):
    # sacreBLEU reads SACREBLEU_SEED with int() when the bootstrap starts, after the decoding
    monkeypatch.setenv("SACREBLEU_SEED", seed)
    monkeypatch.setattr(evaluate, "translate_texts", lambda *a, **k: pytest.fail("decoded"))
    ref = corpus / "test.de"
    argv = ["--checkpoint", trained, "--source", corpus / "test.en", "--reference", ref,
            "--compare", ref]  # fmt: skip
    code, err = run_cli(evaluate.main, argv, capsys)
    assert_one_line_error(
        code, err, f"SACREBLEU_SEED must be an integer >= 0, or none (got {seed!r})"
    )


def test_evaluate_names_the_files_whose_lines_do_not_pair_up(corpus, tmp_path, capsys):
    (tmp_path / "short.de").write_text("nur eine Zeile\n")
    argv = ["--hypotheses", tmp_path / "short.de", "--reference", corpus / "test.de"]
    code, err = run_cli(evaluate.main, argv, capsys)
    assert_one_line_error(code, err, f"{tmp_path / 'short.de'} has 1 lines, ")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--max_len_a", "inf"], "--max_len_a and --max_len_b must be finite and >= 0"),
        (["--max_len_a", "nan"], "--max_len_a and --max_len_b must be finite and >= 0"),
        (["--length_penalty", "nan"], "--length_penalty must be in [-10, 10] (got nan)"),
        (["--beam", "2", "--length_penalty", "40"], "--length_penalty must be in [-10, 10] (got"),
        (["--beam", "2", "--length_penalty=-1e308"], "--length_penalty must be in [-10, 10]"),
        (["--length_penalty", "1.0"], "--length_penalty applies to beam search only: add --beam"),
        (["--device", "meta"], "--device meta: not usable here"),
        (["--output", ""], "cannot write '': not a file name"),
        (["--output", "new_dir/"], "cannot write 'new_dir/': not a file name"),
        (["--beam", "2", "--nbest", "0"], "--nbest must be between 1 and --beam (2)"),
        (["--beam", "2", "--nbest", "3"], "--nbest must be between 1 and --beam (2)"),
        (["--chunk_size", "0"], "--chunk_size must be >= 1"),
        (["--input", "missing.en"], "input file not found: missing.en"),
        (["--temperature", "0.5"], "--temperature applies to --sampling only: add --sampling"),
        (["--seed", "3"], "--seed applies to --sampling only: add --sampling"),
        (["--sampling", "--beam", "2"], "--sampling draws one translation per line: it takes no"),
        (["--sampling", "--temperature", "0"], "--temperature must be between 1.18e-38 and 3"),
        (["--sampling", "--temperature", "nan"], "--temperature must be between 1.18e-38 and "),
        (["--sampling", "--temperature", "1e39"], "--temperature must be between 1.18e-38 and "),
        (["--sampling", "--temperature", "1e-50"], "and 3.4e+38 (got 1e-50)"),
        (["--nbest", "1"], "--nbest writes beam search's hypotheses and scores: add --beam K"),
        (["--max_len_a", "0", "--max_len_b", "0"], "--max_len_a 0 and --max_len_b 0: a budget"),
        (["--device", "hpu"], "--device hpu: not usable here"),
        (["--sampling", "--sampling_topk", "0"], "--sampling_topk must be >= 1 (got 0)"),
        (["--sampling", "--sampling_topp", "1.5"], "--sampling_topp must be in (0, 1] (got 1.5)"),
        (["--sampling", "--sampling_topp", "0"], "--sampling_topp must be in (0, 1] (got 0.0)"),
        (["--sampling", "--seed", "-1"], "--seed must be >= 0 (got -1)"),
    ],
)
def test_translate_checks_its_options_before_decoding(
    trained, corpus, tmp_path, monkeypatch, capsys, flags, expected
):
    """Each of these used to decode the whole input first, or to decode it wrongly: inf as the
    budget wrapped around to one token per sentence, NaN scores ranked beams at random, and an
    empty --output failed on the rename after decoding, losing it all."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(translate, "translate_nbest", lambda *a, **k: pytest.fail("decoded"))
    argv = ["--checkpoint", trained, "--input", corpus / "test.en", *flags]
    code, err = run_cli(translate.main, argv, capsys)
    assert_one_line_error(code, err, expected)
    assert list(tmp_path.iterdir()) == []  # nothing written, no new_dir made


def test_translate_refuses_to_write_over_its_input(trained, corpus, tmp_path, capsys):
    source = tmp_path / "test.en"
    shutil.copy(corpus / "test.en", source)
    argv = ["--checkpoint", trained, "--input", source, "--output", tmp_path / "." / "test.en"]
    code, err = run_cli(translate.main, argv, capsys)
    assert_one_line_error(code, err, "test.en is the --input file: it would be replaced")
    assert source.read_text() == (corpus / "test.en").read_text()


def test_a_budget_past_int64_is_the_longest_output_not_one_token(trained):
    import torch

    model = load_model(trained)[0]
    got = translate.max_new_tokens(torch.tensor([3, 7]), model, 1e30, 10)
    assert got.tolist() == [model.cfg.max_len - 1] * 2


def test_gz_output_is_gzip_and_reads_back(trained, corpus, tmp_path):
    plain, packed = tmp_path / "out.de", tmp_path / "out.de.gz"
    for out in (plain, packed):
        translate.main(["--checkpoint", str(trained), "--input", str(corpus / "test.en"),
                        "--output", str(out)])  # fmt: skip
    assert gzip.decompress(packed.read_bytes()).decode() == plain.read_text()
    assert translate.read_lines(str(packed)) == translate.read_lines(str(plain))


@pytest.mark.parametrize("device", ["nonsense", "cuda:99"])
def test_translate_on_a_device_that_is_not_here_is_one_line(trained, device, capsys):
    code, err = run_cli(translate.main, ["--checkpoint", trained, "--device", device], capsys)
    assert_one_line_error(code, err, f"--device {device}: not usable here")


def test_reader_that_goes_away_ends_translate_quietly(trained, corpus):
    """`translate.py ... | head -1`: no BrokenPipeError traceback, exit 141 like `cat`."""
    proc = subprocess.Popen(
        [sys.executable, "translate.py", "--checkpoint", str(trained), "--chunk_size", "1",
         "--input", str(corpus / "train.en")],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().endswith(b"\n")
        proc.stdout.close()
        assert proc.wait(timeout=120) == 141
        assert proc.stderr.read() == b""
    finally:
        proc.kill()


def test_plot_of_missing_metrics_is_one_line(tmp_path):
    cmd = [sys.executable, "plot.py", str(tmp_path / "none.jsonl"), str(tmp_path / "c.png")]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "none.jsonl" in proc.stderr and not (tmp_path / "c.png").exists()


def test_plot_writes_the_format_its_name_asks_for_or_one_line(tmp_path):
    from plot import plot_metrics

    metrics = tmp_path / "metrics.jsonl"
    records = [
        {"step": 1, "train_loss": 5.0, "lr": 1e-4},
        {"step": 2, "train_loss": 4.0},  # no lr: a hand-made file
        {"step": 2, "valid_loss": 4.5, "valid_bleu": 1.0},
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    plot_metrics(metrics, tmp_path / "c.svg")
    plot_metrics(metrics, tmp_path / "c.png")
    assert b"<svg" in (tmp_path / "c.svg").read_bytes()[:1000]  # was a PNG under an .svg name
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "c.svg", "metrics.jsonl"]
    for target, why in [(tmp_path / "no_dir" / "c.png", "No such file or directory"),
                        (tmp_path / "c.xyz", "Format 'xyz' is not supported")]:  # fmt: skip
        with pytest.raises(UserError, match=f"^cannot write {target} \\({why}"):
            plot_metrics(metrics, target)
    assert not (tmp_path / "c.xyz").exists() and not list(tmp_path.glob(".*"))


def test_plot_of_a_run_cut_mid_line_leaves_out_its_last_line_only(tmp_path, capsys):
    from plot import plot_metrics

    metrics = tmp_path / "metrics.jsonl"
    whole = json.dumps({"step": 1, "train_loss": 5.0, "lr": 1e-4}) + "\n"
    metrics.write_text(whole + '{"step": 2, "train_lo')  # killed while writing the second
    plot_metrics(metrics, tmp_path / "c.png")
    assert (tmp_path / "c.png").exists() and "last line is cut short" in capsys.readouterr().err
    metrics.write_text('{"step": 2, "train_lo\n' + whole)  # not the last: not a metrics file
    with pytest.raises(UserError, match="cannot read the metrics"):
        plot_metrics(metrics, tmp_path / "d.png")
