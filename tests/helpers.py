"""What several test files share: the repo root, the environment of the programs they start,
a small corpus with its own tokenizer, and a wait for a running training's checkpoint."""

import os
import socket
import time
from pathlib import Path

import quickstart_data

ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict:
    """The environment for `python train.py ...` and `accelerate launch` in tests: offline (set
    by conftest before anything imported the HF libraries), no progress bars in captured output,
    gloo on loopback, one thread per process (the test machine has two cores)."""
    return {
        **os.environ,
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def free_port() -> int:
    """A free loopback port for a launch's rendezvous: test files run side by side (-n auto),
    and two launches on the accelerate config's fixed port would collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_corpus(tmp: Path, seed: int, n_train: int, n_valid: int, vocab_size: int) -> Path:
    """Quick-start pairs in tmp/{train,valid,test}.{en,de} and a unigram tokenizer in tmp/tok,
    trained once so every run of a test module sees the same ids."""
    from data import train_tokenizer

    quickstart_data.write_splits(tmp, seed=seed, n_train=n_train, n_valid=n_valid, n_test=4)
    texts = [
        line for lang in ("en", "de") for line in (tmp / f"train.{lang}").read_text().splitlines()
    ]
    train_tokenizer([texts], "unigram", vocab_size).save_pretrained(tmp / "tok")
    return tmp


def wait_for_checkpoint(out, min_step, proc, timeout=120):
    """The newest checkpoint step in out/checkpoints once one reaches min_step; fails if proc
    (the training, or what runs it) ends first or none comes within timeout seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*[0-9]")]
        if steps and max(steps) >= min_step:
            return max(steps)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")
