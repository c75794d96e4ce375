"""Shared test setup: no network, the repo root importable, one CPU thread, tiny configs."""

import os
import signal
import sys
import tempfile
from pathlib import Path

# Before anything imports datasets/transformers (they read these at import): tests never touch
# the network, and a Hub name must fail fast instead of hanging on a download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# data.py caches Arrow files, token ids and trained tokenizers in datasets' cache: keep tests
# out of the user's ~/.cache/huggingface/datasets (subprocesses inherit this too).
_DATASETS_CACHE = tempfile.TemporaryDirectory(prefix="hf-datasets-tests-")
os.environ["HF_DATASETS_CACHE"] = _DATASETS_CACHE.name

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # also work under a bare `pytest`, not only `python -m pytest`
    sys.path.insert(0, str(ROOT))

import pytest
import torch

from model import ModelConfig

# Tiny models run fastest on one thread, and the test machine's cores are shared: with several
# threads under contention a 5 s test was seen to take minutes.
torch.set_num_threads(1)


# The slowest files first (pytest_configure turns off pytest-xdist's ordering by test count, which
# handed out test_distributed.py and test_end_to_end.py, few tests but minutes, among the last):
# --dist loadfile gives each worker whole files as it frees up, so a long file started late
# leaves the other worker idle. Seconds per file, from `--durations=0` on 2 cores: train 150,
# end_to_end 124, distributed 106, reliability 45, bad_input 34, the rest under 10 each. The
# suite took 291 s instead of 312-326.
SLOW_FILES_FIRST = ["test_train.py", "test_end_to_end.py", "test_distributed.py",
                    "test_reliability.py", "test_bad_input.py"]  # fmt: skip


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's; not an addopts flag, which
        config.option.loadscopereorder = False  # would fail wherever xdist is not loaded


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps the rest


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same torch RNG state."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _signal_handlers():
    """train.main run in this process installs its stop handlers (SIGTERM, SIGINT: save, then
    exit): put the worker's own back, or CI's SIGTERM and a Ctrl-C would be swallowed after."""
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in kept.items():
        signal.signal(sig, handler)


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    """A 2-layer, d_model 16 model; vary it with dataclasses.replace(tiny_cfg, pre_norm=True)."""
    return ModelConfig(
        src_vocab_size=24,
        tgt_vocab_size=24,
        pad_id=0,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_layers=2,
        dropout=0.0,
        max_len=64,
    )
