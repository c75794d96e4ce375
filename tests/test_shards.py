"""Sharding an epoch across processes: each rank reads a disjoint share, the shares together are
the whole epoch, and every rank gets the same number of batches (DDP/FSDP collectives need it).

The unit tests check `shard` on its own; the last test runs the real thing: two CPU processes
under `accelerate launch`, each doing what train.py does (read, train or load the tokenizer,
tokenize, batch, shard) and writing the pairs it would train on to a JSON file."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from data import shard, token_batches
from helpers import ROOT, free_port, subprocess_env


def check_epoch(shares: list[list[np.ndarray]], n_pairs: int) -> None:
    """Disjoint shares, equal batch counts, union = every pair exactly once."""
    assert len({len(s) for s in shares}) == 1, [len(s) for s in shares]
    pairs = np.concatenate([b for s in shares for b in s])
    assert sorted(pairs.tolist()) == list(range(n_pairs))
    assert all(len(b) > 0 for s in shares for b in s)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n_pairs", [1000, 997, 40, 9])
def test_shards_are_disjoint_equal_and_cover_the_epoch(world, n_pairs):
    lengths = np.random.default_rng(n_pairs).integers(1, 50, size=n_pairs)
    for epoch in range(3):
        batches = token_batches(lengths, 200, 16, seed=1, epoch=epoch)
        shares = [shard(batches, rank, world) for rank in range(world)]
        check_epoch(shares, n_pairs)
        for b in (b for s in shares for b in s):  # cut batches stay within the caps
            assert len(b) <= 16 and len(b) * lengths[b].max() <= 200


def test_leftover_batches_are_cut_into_one_piece_per_rank():
    batches = [np.arange(0, 4), np.arange(4, 8), np.arange(8, 11)]  # 3 batches, 2 ranks
    assert [b.tolist() for b in shard(batches, 0, 2)] == [[0, 1, 2, 3], [8, 9]]
    assert [b.tolist() for b in shard(batches, 1, 2)] == [[4, 5, 6, 7], [10]]
    four = [shard([np.arange(5), np.arange(5, 6)], rank, 4) for rank in range(4)]
    check_epoch(four, 6)
    assert [b.tolist() for s in four for b in s] == [[0, 1], [2, 3], [4], [5]]


def test_fewer_pairs_than_ranks_repeats_pairs_rather_than_starve_a_rank():
    shares = [shard([np.array([7])], rank, 3) for rank in range(3)]
    assert [s[0].tolist() for s in shares] == [[7], [7], [7]]


def test_one_process_keeps_the_batches_as_they_are():
    batches = token_batches(np.arange(1, 30), 64, 8, 0, 0)
    assert [b.tolist() for b in shard(batches, 0, 1)] == [b.tolist() for b in batches]


# ---------------------------------------------------------------------------------------------
# Two processes under accelerate launch

WORKER = textwrap.dedent(
    """
    import hashlib, json, sys
    from accelerate import Accelerator
    from config import TrainConfig
    from data import load_text, load_tokenizer, shard, token_batches, tokenize

    data_spec, out_dir, result = sys.argv[1:4]
    cfg = TrainConfig(train_data=data_spec, valid_data=None, output_dir=out_dir, max_tokens=300,
                      batch_size=16, max_seq_length=40,
                      tokenizer={"train": "bpe", "vocab_size": 200})
    accelerator = Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    # As train.py: the main process reads, trains the tokenizer and fills the caches first.
    with accelerator.main_process_first():
        text = load_text(cfg.train_data, cfg, cfg.train_split)
        tok = load_tokenizer(cfg, out_dir, text, reuse=not accelerator.is_main_process)
        corpus = tokenize(text, tok, cfg.max_seq_length, "train", print)
    digest = hashlib.sha256(corpus.src.tobytes() + corpus.tgt.tobytes()).hexdigest()
    epochs = []
    for epoch in range(2):
        batches = token_batches(corpus.lengths(), cfg.max_tokens, cfg.batch_size, cfg.seed, epoch)
        mine = shard(batches, rank, world)
        epochs.append([[int(i) for i in b] for b in mine])
    with open(f"{result}.{rank}.json", "w") as f:
        json.dump({"rank": rank, "world": world, "pairs": len(corpus), "digest": digest,
                   "epochs": epochs}, f)
    accelerator.wait_for_everyone()
    """
)


def test_two_processes_under_accelerate_share_each_epoch(tmp_path):
    import quickstart_data

    quickstart_data.write_splits(tmp_path / "data", seed=3, n_train=1001, n_valid=5, n_test=5)
    (tmp_path / "worker.py").write_text(WORKER)
    env = subprocess_env(
        ACCELERATE_USE_CPU="true",
        PYTHONPATH=str(ROOT),
        HF_DATASETS_CACHE=str(tmp_path / "hf_cache"),
    )
    launch = [
        "timeout",
        "120",
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
    ]
    args = [
        str(tmp_path / "worker.py"),
        str(tmp_path / "data" / "train.{lang}"),
        str(tmp_path / "run"),
        str(tmp_path / "result"),
    ]
    proc = subprocess.run(
        launch + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"result.{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    assert ranks[0]["digest"] == ranks[1]["digest"]  # the same corpus, in the same order
    # Only the main process tokenized; the other one found its work in the cache.
    assert "train: tokenized" in proc.stdout and "loaded from the cache" in proc.stdout
    n_pairs = ranks[0]["pairs"]
    assert n_pairs > 900
    for epoch in range(2):
        check_epoch([[np.array(b) for b in r["epochs"][epoch]] for r in ranks], n_pairs)
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]  # reshuffled each epoch
