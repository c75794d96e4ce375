"""Shared test setup: no network, the repo root importable, one CPU thread, tiny configs."""

import os
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


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same torch RNG state."""
    torch.manual_seed(0)


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
