"""Tests for config.py: unknown keys, wrong types and impossible values are rejected by name;
the config round-trips through JSON; command-line overrides get the right types."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from config import TrainConfig, UserError, config_from_argv, load_config, parse_overrides
from helpers import ROOT


def write_json(path, values: dict):
    path.write_text(json.dumps(values))
    return path


def from_cli(*args: str) -> TrainConfig:
    return load_config(None, parse_overrides(list(args)))


# ---------------------------------------------------------------------------------------------
# Unknown keys


def test_unknown_key_in_file_is_named_with_the_file(tmp_path):
    path = write_json(tmp_path / "run.json", {"epochs": 2, "epoch_count": 3, "lr": 0.1})
    with pytest.raises(UserError, match=r"unknown config keys in .*run\.json: epoch_count, lr$"):
        load_config(path)


def test_unknown_key_from_cli_is_named():
    with pytest.raises(UserError, match=r"unknown config key: bogus \(from --bogus\)"):
        parse_overrides(["--bogus", "3"])
    with pytest.raises(UserError, match="unknown config key: bogus"):
        load_config(None, {"bogus": 3})


# ---------------------------------------------------------------------------------------------
# Wrong types and impossible values


@pytest.mark.parametrize("value", ["x", True, 1.5, None, [1]])
def test_wrong_type_is_named(value):
    with pytest.raises(UserError, match=r"epochs must be int \(got "):
        TrainConfig(epochs=value)


@pytest.mark.parametrize(("cli_value", "shown"), [("x", "'x'"), ("true", "True")])
def test_wrong_type_from_cli_is_named(cli_value, shown):
    with pytest.raises(UserError, match=rf"epochs must be int \(got {shown}\)"):
        from_cli("--epochs", cli_value)


def test_wrong_type_in_file_is_named(tmp_path):
    path = write_json(tmp_path / "run.json", {"dropout": "high"})
    with pytest.raises(UserError, match=r"dropout must be float \(got 'high'\)"):
        load_config(path)


def test_an_integer_too_large_for_a_float_setting_is_named():
    with pytest.raises(UserError, match=r"max_minutes must be float or null \(got an integer too"):
        from_cli("--max_minutes", "9" * 400)


def test_optional_field_names_null_in_its_type():
    with pytest.raises(UserError, match=r"max_tokens must be int or null \(got 'lots'\)"):
        TrainConfig(max_tokens="lots")


def test_num_heads_must_divide_model_dim():
    with pytest.raises(UserError, match=r"num_heads \(3\) must divide model_dim \(32\)"):
        TrainConfig(model_dim=32, num_heads=3)


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
@pytest.mark.parametrize(
    "key",
    ["dropout", "attn_dropout", "act_dropout", "word_dropout", "label_smoothing", "ema_decay"],
)
def test_probabilities_must_be_in_unit_interval(key, value):
    with pytest.raises(UserError, match=rf"{key} must be in \[0, 1\) \(got {value}\)"):
        TrainConfig(**{key: value})


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize(
    "key",
    ["epochs", "batch_size", "model_dim", "hidden_dims", "num_heads", "num_layers",
     "max_seq_length", "grad_accum_steps", "max_tokens", "max_steps", "decoder_layers",
     "log_every", "decode_batch_size", "save_every", "patience", "max_minutes"],
)  # fmt: skip
def test_sizes_must_be_positive(key, value):
    with pytest.raises(UserError, match=rf"{key} must be > 0"):
        TrainConfig(**{key: value})


@pytest.mark.parametrize(
    "key", ["warmup_steps", "weight_decay", "clip_norm", "valid_bleu_samples", "keep_last",
            "max_bad_steps", "rdrop_alpha"],
)  # fmt: skip
def test_counts_and_weights_must_not_be_negative(key):
    with pytest.raises(UserError, match=rf"{key} must be >= 0 \(got -1(\.0)?\)"):
        TrainConfig(**{key: -1})
    TrainConfig(**{key: 0})  # 0 is fine: off, or none


def test_learning_rate_must_be_positive():
    with pytest.raises(UserError, match="learning_rate must be > 0"):
        TrainConfig(learning_rate=0)


@pytest.mark.parametrize("key", ["learning_rate", "clip_norm", "rdrop_alpha", "weight_decay"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_numbers_must_be_finite(key, value):
    """JSON and the command line accept NaN and Infinity, which range checks let through."""
    with pytest.raises(UserError, match=f"{key} must be a finite number"):
        from_cli(f"--{key}", value)


@pytest.mark.parametrize("size", ["0", "2147483648", "99999999999999999999", "8000.0"])
def test_a_trained_tokenizers_size_is_a_positive_int32(size):
    with pytest.raises(UserError, match="tokenizer.vocab_size must be a positive integer below"):
        from_cli("--tokenizer", f'{{"train": "unigram", "vocab_size": {size}}}')


@pytest.mark.parametrize("key", ["keep_last", "max_bad_steps"])
def test_zero_kept_checkpoints_or_bad_steps_is_a_training_error(key):
    assert from_cli(f"--{key}", "0").training_errors() == [f"{key} must be >= 1 (got 0)"]


def test_patience_needs_validation():
    cfg = from_cli("--patience", "2", "--valid_data", "null")  # a saved run's config loads
    assert cfg.training_errors() == ["patience counts validations: it needs valid_data"]


def test_lr_schedule_is_checked():
    with pytest.raises(UserError, match='lr_schedule must be "inverse_sqrt", "linear" or "cosine"'):
        TrainConfig(lr_schedule="step")
    with pytest.raises(UserError, match='lr_schedule "cosine" decays to 0 at max_steps: set'):
        TrainConfig(lr_schedule="cosine")
    assert TrainConfig(lr_schedule="linear", max_steps=10, warmup_steps=2).max_steps == 10
    # the default warmup of 4,000 steps: the rate would climb until the end, never decay
    with pytest.raises(UserError, match=r"warmup_steps \(4000\) must be below max_steps \(3000\)"):
        TrainConfig(lr_schedule="cosine", max_steps=3000)


def test_cooldown_needs_inverse_sqrt_and_a_longer_max_steps():
    with pytest.raises(UserError, match='cooldown_steps is for "inverse_sqrt"; "linear"'):
        TrainConfig(lr_schedule="linear", max_steps=10, cooldown_steps=5, warmup_steps=2)
    with pytest.raises(
        UserError, match=r"cooldown_steps \(5\) falls to 0 at max_steps: .*, or cooldown_steps 0"
    ):
        TrainConfig(cooldown_steps=5)
    with pytest.raises(UserError, match=r"set max_steps above it \(got 5\)"):
        TrainConfig(cooldown_steps=5, max_steps=5)
    with pytest.raises(UserError, match="cooldown_steps must be >= 0"):
        TrainConfig(cooldown_steps=-1)
    assert TrainConfig(cooldown_steps=5, max_steps=20).cooldown_steps == 5


def test_mixed_precision_is_checked():
    with pytest.raises(UserError, match=r'mixed_precision must be "no", "bf16", "fp16" or null'):
        TrainConfig(mixed_precision="fp8")
    assert TrainConfig(mixed_precision="bf16").mixed_precision == "bf16"
    assert from_cli("--mixed_precision", "bf16").mixed_precision == "bf16"
    assert (
        from_cli("--mixed_precision", "bf16", "--mixed_precision", "null").mixed_precision is None
    )
    with pytest.raises(UserError, match="mixed_precision"):
        from_cli("--mixed_precision", "fp8")


def test_all_problems_are_reported_together():
    with pytest.raises(UserError) as e:
        TrainConfig(epochs=0, dropout=1.0, model_dim=30, num_heads=4)
    message = str(e.value)
    assert "\n" not in message
    for part in ("epochs must be > 0", "dropout must be in", "num_heads (4) must divide"):
        assert part in message


def test_max_tokens_must_hold_the_longest_pair():
    with pytest.raises(UserError, match=r"max_tokens \(100\) must be >= max_seq_length \(256\)"):
        TrainConfig(max_tokens=100, max_seq_length=256)
    TrainConfig(max_tokens=256, max_seq_length=256)  # the longest pair fits exactly


def test_languages_must_differ():
    with pytest.raises(UserError, match="src_lang and tgt_lang must differ"):
        TrainConfig(src_lang="en", tgt_lang="en")


@pytest.mark.parametrize("tokenizer", [{"train": "wordpiece"}, {"train": "bpe", "size": 10}])
def test_bad_tokenizer_spec(tokenizer):
    with pytest.raises(UserError, match="tokenizer must be"):
        TrainConfig(tokenizer=tokenizer)


@pytest.mark.parametrize("size", [0, -5])
def test_tokenizer_vocab_size_must_be_positive(size):
    with pytest.raises(UserError, match="vocab_size"):
        TrainConfig(tokenizer={"train": "bpe", "vocab_size": size})


@pytest.mark.parametrize(
    "tokenizer, alpha, problem",
    [
        ({"train": "unigram"}, -0.1, "subword_alpha must be in"),
        ({"train": "unigram"}, 1.5, "subword_alpha must be in"),
        ({"train": "bpe"}, 0.5, "subword_alpha needs a tokenizer trained here"),
        ("Helsinki-NLP/opus-mt-en-de", 0.5, "subword_alpha needs a tokenizer trained here"),
    ],
)
def test_subword_alpha_is_checked(tokenizer, alpha, problem):
    with pytest.raises(UserError, match=problem):
        TrainConfig(tokenizer=tokenizer, subword_alpha=alpha)
    TrainConfig(tokenizer={"train": "unigram"}, subword_alpha=0.5)  # the one that is allowed


@pytest.mark.parametrize(
    ("ratio", "problem"),
    [
        (0.5, r"max_length_ratio must be >= 1 or null \(got 0.5\)"),
        (0.999, r"max_length_ratio must be >= 1 or null \(got 0.999\)"),
        (float("nan"), r"max_length_ratio must be a finite number \(got nan\)"),
        (float("inf"), r"max_length_ratio must be a finite number \(got inf\)"),
    ],
)
def test_max_length_ratio_is_checked(ratio, problem):
    with pytest.raises(UserError, match=problem):
        TrainConfig(max_length_ratio=ratio)
    assert TrainConfig(max_length_ratio=1).max_length_ratio == 1  # equal lengths only


def test_rdrop_alpha_is_checked():
    with pytest.raises(UserError, match=r"rdrop_alpha must be >= 0 \(got -1.0\)"):
        TrainConfig(rdrop_alpha=-1.0)
    with pytest.raises(UserError, match="rdrop_alpha needs dropout, attn_dropout, act_dropout or"):
        TrainConfig(rdrop_alpha=1.0, dropout=0.0)
    assert TrainConfig(rdrop_alpha=1.0, dropout=0.0, attn_dropout=0.1).rdrop_alpha == 1.0
    assert TrainConfig(rdrop_alpha=1.0, dropout=0.0, act_dropout=0.1).rdrop_alpha == 1.0
    assert TrainConfig(rdrop_alpha=1.0, dropout=0.0, word_dropout=0.1).rdrop_alpha == 1.0


# ---------------------------------------------------------------------------------------------
# Files


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "epochs": 2,\n  "dropout": ,\n  "seed": 1\n}\n')
    with pytest.raises(UserError, match=r"broken\.json: not valid JSON \(line 3"):
        load_config(path)


def test_a_key_given_twice_in_a_file_is_refused(tmp_path):
    # JSON keeps the last silently: which one the user meant is not ours to guess
    path = tmp_path / "twice.json"
    path.write_text('{"epochs": 3, "dropout": 0.1, "epochs": 1}')
    with pytest.raises(UserError, match=r"twice\.json: 'epochs' is given twice"):
        load_config(path)
    path.write_text('{"tokenizer": {"train": "bpe", "train": "unigram"}}')
    with pytest.raises(UserError, match=r"twice\.json: 'train' is given twice"):
        load_config(path)
    with pytest.raises(UserError, match=r"^--tokenizer: 'train' is given twice$"):
        from_cli("--tokenizer", '{"train": "unigram", "vocab_size": 200, "train": "bpe"}')


def test_numbers_too_long_or_json_too_deep_are_one_line(tmp_path):
    # json raises ValueError past 4,300 digits and RecursionError 100,000 levels deep
    path = tmp_path / "huge.json"
    for text, error in (("9" * 5000, "ValueError: Exceeds the limit"), ("[" * 100000, "Recursion")):
        path.write_text('{"epochs": ' + text + "}")
        with pytest.raises(UserError, match=rf"huge\.json: not a config \({error}"):
            load_config(path)
        with pytest.raises(UserError, match=rf"^--epochs: {error}"):
            from_cli("--epochs", text)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(UserError, match=r"config file not found: .*nowhere\.json"):
        load_config(tmp_path / "nowhere.json")


def test_config_file_must_hold_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        load_config(path)


def test_a_config_that_is_not_a_readable_file_is_one_line(tmp_path):
    (tmp_path / "latin1.json").write_bytes(b'{"output_dir": "runs/\xe9t\xe9"}')
    with pytest.raises(UserError, match=r"latin1\.json: not UTF-8"):
        load_config(tmp_path / "latin1.json")
    with pytest.raises(UserError, match=r"cannot read config .* \(Is a directory\)"):
        load_config(tmp_path)  # a checkpoint's directory, not its config.json


@pytest.mark.parametrize("key", ["train_data", "src_lang", "valid_split", "tokenizer"])
def test_empty_text_settings_are_refused(key):
    with pytest.raises(UserError, match=f"{key} must not be empty"):
        from_cli(f"--{key}", "")


def test_an_empty_output_dir_is_refused_by_training_alone(tmp_path):
    # --output_dir "$UNSET" would train into the working directory over its config.json
    import train

    with pytest.raises(UserError, match="^config: output_dir must not be empty$"):
        train.main(["--config", "configs/tiny.json", "--output_dir", " "])
    assert from_cli("--output_dir", " ").training_errors() == ["output_dir must not be empty"]


def test_a_checkpoint_saved_before_a_training_rule_still_loads(tmp_path):
    # runs trained into the working directory (output_dir "") and with patience but no
    # valid_data were saved before those rules: decoding must still load them
    from checkpoint import load_model
    from test_translate import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "old")
    saved = json.loads((ckpt / "config.json").read_text())
    saved.update(output_dir="", patience=2, valid_data=None)
    (ckpt / "config.json").write_text(json.dumps(saved))
    assert load_model(ckpt)[3].output_dir == ""


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_must_suit_the_generators(seed):
    with pytest.raises(UserError, match=r"seed must be in \[0, 2\*\*32\)"):
        from_cli("--seed", seed)


def test_python_number_forms_are_numbers():
    assert from_cli("--learning_rate", ".001").learning_rate == 0.001
    assert from_cli("--max_minutes", "+1e1").max_minutes == 10.0
    assert from_cli("--output_dir", ".5").output_dir == ".5"  # a path stays a path


def test_json_round_trip(tmp_path):
    cfg = TrainConfig(
        epochs=3, learning_rate=1e-3, model_dim=64, num_heads=4, max_tokens=None,
        valid_data=None, pre_norm=True, tokenizer={"train": "bpe", "vocab_size": 100},
        train_data="data/train.{lang}.gz", output_dir="runs/x",
    )  # fmt: skip
    cfg.save(tmp_path / "config.json")
    loaded = load_config(tmp_path / "config.json")
    assert loaded == cfg
    assert loaded.to_dict() == cfg.to_dict()


def test_integer_learning_rate_in_file_becomes_float(tmp_path):
    cfg = load_config(write_json(tmp_path / "run.json", {"learning_rate": 1}))
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)


def test_overrides_beat_the_file(tmp_path):
    path = write_json(tmp_path / "run.json", {"epochs": 2, "seed": 7})
    args, cfg = config_from_argv(["--config", str(path), "--epochs", "5", "--resume"], "test")
    assert args.resume and (cfg.epochs, cfg.seed) == (5, 7)
    # no abbreviations: "--resum" passed as --resume where quickstart.sh, matching the whole
    # word, took it for a fresh start and deleted the last run
    for typo, key in (("--resum", "resum"), ("--conf", "conf")):
        with pytest.raises(UserError, match=f"unknown config key: {key} "):
            config_from_argv(["--config", str(path), typo, *(["x"] * (typo == "--conf"))], "t")


# ---------------------------------------------------------------------------------------------
# Command-line override types


def test_cli_integer_for_float_field_becomes_float():
    cfg = from_cli("--learning_rate", "1")
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)


def test_cli_null_becomes_none():
    assert parse_overrides(["--max_tokens", "null"]) == {"max_tokens": None}
    assert from_cli("--max_tokens", "null").max_tokens is None


@pytest.mark.parametrize("value", ["2024", "true", "1.5", "null-run"])
def test_cli_string_field_keeps_the_string(value):
    assert parse_overrides(["--output_dir", value]) == {"output_dir": value}
    assert from_cli("--output_dir", value).output_dir == value


def test_cli_json_object():
    cfg = from_cli("--tokenizer", '{"train": "bpe", "vocab_size": 100}')
    assert cfg.tokenizer == {"train": "bpe", "vocab_size": 100}


def test_cli_equals_form_and_dashes():
    assert parse_overrides(["--epochs=3", "--max-tokens", "4096", "--pre_norm", "true"]) == {
        "epochs": 3,
        "max_tokens": 4096,
        "pre_norm": True,
    }


def test_cli_missing_value_and_stray_argument():
    with pytest.raises(UserError, match="missing value for --epochs"):
        parse_overrides(["--epochs"])
    with pytest.raises(UserError, match="unexpected argument: epochs"):
        parse_overrides(["epochs", "3"])


def test_train_py_reports_unknown_key_in_one_line(tmp_path):
    config = write_json(tmp_path / "tmp.json", {"epochs": 1, "output_dir": str(tmp_path / "run")})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "train.py", "--config", str(config), "--bogus", "3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "bogus" in lines[0]


@pytest.mark.parametrize(
    "extra, problem",
    [
        ({"bidirectional_epochs": -1}, "bidirectional_epochs must be >= 0"),
        ({"tokenizer": "Helsinki-NLP/opus-mt-en-de"}, "needs a joint tokenizer trained here"),
        ({"subword_alpha": 0.5}, "cannot be combined with subword_alpha"),
        ({"epochs": 3}, r"bidirectional_epochs \(3\) must be < epochs \(3\)"),
    ],
)
def test_bidirectional_epochs_is_checked(extra, problem):
    settings = {"tokenizer": {"train": "unigram"}, "bidirectional_epochs": 3, "epochs": 9}
    with pytest.raises(UserError, match=problem):
        TrainConfig(**{**settings, **extra})
    TrainConfig(**{**settings, "tokenizer": {"train": "bpe"}})  # allowed


def test_help_lists_every_config_key_with_its_default(capsys):
    with pytest.raises(SystemExit):
        config_from_argv(["--help"], "t")
    shown = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(TrainConfig):
        assert f"{f.name}={json.dumps(f.default)}" in shown, f.name


def test_edges_of_the_value_rules():
    # subword_alpha 1 samples from the model's own distribution; warmup = max_steps never decays;
    # a value of spaces is as empty as ""
    TrainConfig(subword_alpha=1.0, tokenizer={"train": "unigram", "vocab_size": 100})
    with pytest.raises(UserError, match=r"subword_alpha must be in \[0, 1\]"):
        TrainConfig(subword_alpha=1.0001, tokenizer={"train": "unigram", "vocab_size": 100})
    with pytest.raises(UserError, match=r"warmup_steps \(100\) must be below max_steps"):
        TrainConfig(lr_schedule="linear", max_steps=100, warmup_steps=100)
    for key in ("src_lang", "train_data", "tokenizer"):
        with pytest.raises(UserError, match=f"{key} must not be empty"):
            from_cli(f"--{key}", "  ")


def test_integers_written_with_a_sign_or_leading_zeros_stay_integers():
    parsed = parse_overrides(["--epochs", "+2", "--max_steps", "010"])
    assert parsed == {"epochs": 2, "max_steps": 10}
    assert all(type(v) is int for v in parsed.values())


def test_a_path_from_the_home_directory_is_expanded(monkeypatch, tmp_path):
    # "~/data/train.{lang}" in config.json: no shell expands it, and it was not found
    monkeypatch.setenv("HOME", str(tmp_path))
    given = dict(train_data="~/d/train.{lang}", valid_data="~/v.{lang}", test_data="~/t.{lang}",
                 tokenizer="~/tok", output_dir="~/runs/x", init_from="~/runs/y")  # fmt: skip
    cfg = TrainConfig(**given)
    assert {k: getattr(cfg, k) for k in given} == {
        k: f"{tmp_path}{v[1:]}" for k, v in given.items()
    }
    assert TrainConfig().valid_data == "wmt/wmt14"  # no ~: as it is
