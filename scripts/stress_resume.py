"""Kill training with SIGKILL at N random moments, resume each time, compare with a clean run.

    python scripts/stress_resume.py --kills 10

Trains the tiny config (a small quick-start corpus, dropout on, a checkpoint every step so
that many kills land inside a checkpoint write) once without interruption, then again while
killing it N times and resuming after each kill. Prints each kill and whether the final
weights are bitwise identical. Exit code 0 only if they are. Not part of the test suite (it
takes a few minutes).
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import quickstart_data  # noqa: E402
from data import train_tokenizer  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def command(tmp: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable, "train.py", "--config", "configs/tiny.json",
        "--train_data", f"{tmp}/train.{{lang}}", "--valid_data", f"{tmp}/valid.{{lang}}",
        "--tokenizer", str(tmp / "tok"), "--output_dir", str(out), "--max_tokens", "400",
        "--epochs", "4", "--max_steps", str(steps), "--save_every", "1", "--dropout", "0.2",
        "--log_with", "null", "--valid_bleu_samples", "4", "--log_every", "5",
    ]  # fmt: skip


def progress(out: Path, partial: bool = False, stale: frozenset = frozenset()) -> int:
    """Newest checkpoint step in out/checkpoints (with partial: counting ones being written,
    but not the `stale` ones a kill left, which the resumed run sweeps at its first save)."""
    steps = [0]
    for p in (out / "checkpoints").glob("step-*"):
        number = p.name.split("-")[1].removesuffix(".tmp")
        if p.name in stale or not number.isdigit():
            continue
        if partial or not p.name.endswith(".tmp"):
            steps.append(int(number))
    return max(steps)


def writing(out: Path) -> frozenset:
    return frozenset(p.name for p in (out / "checkpoints").glob("*.tmp"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="stress_"))
    quickstart_data.write_splits(tmp, seed=11, n_train=300, n_valid=8, n_test=4)
    texts = [(tmp / f"train.{lang}").read_text().splitlines() for lang in ("en", "de")]
    train_tokenizer([texts[0] + texts[1]], "unigram", 150).save_pretrained(tmp / "tok")

    t0 = time.time()
    clean = subprocess.run(
        command(tmp, tmp / "clean", args.steps), cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    if clean.returncode != 0:
        sys.exit(f"the uninterrupted run failed (its files: {tmp}):\n{clean.stderr[-2000:]}")
    clean_seconds = time.time() - t0
    # the run may end before --steps (the config's 4 epochs): kills aim below its real end
    final = json.loads((tmp / "clean/last/trainer_state.json").read_text())["step"]
    print(f"uninterrupted run: {final} steps in {clean_seconds:.1f} s", flush=True)

    out, kills, resume = tmp / "killed", 0, []
    # N distinct moments spread over the run (steps 1 .. final-1), one kill at each
    targets = sorted(rng.sample(range(1, final), min(args.kills, final - 1)))
    args.kills = len(targets)
    while True:
        stale = writing(out) if out.exists() else frozenset()
        proc = subprocess.Popen(
            command(tmp, out, args.steps) + resume,
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        resume = ["--resume"]
        if kills < args.kills:
            # kill a little after checkpoint `target` begins to be written: often mid-write
            target = targets[kills]
            while progress(out, partial=True, stale=stale) < target and proc.poll() is None:
                time.sleep(0.01)
            # within about one step: a tiny step takes ~10 ms here with freed memory kept, and
            # 0.3 s (as this script first waited) carried most kills past the epoch's last step
            time.sleep(rng.uniform(0.0, 0.01))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                during = ", killed during a checkpoint write" if writing(out) - stale else ""
                print(
                    f"kill {kills:2d}: aimed at step {target}, last complete checkpoint "
                    f"step {progress(out)}{during}",
                    flush=True,
                )
                continue
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"run failed after {kills} kills (its files: {tmp}):\n{err[-2000:]}")
        if kills >= args.kills:
            break
    a, b = (
        load_file(tmp / "clean/last/model.safetensors"),
        load_file(out / "last/model.safetensors"),
    )
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(
        f"{kills} kills, final weights {'bitwise identical' if same else 'DIFFERENT'} "
        f"to the uninterrupted run ({len(a)} tensors)"
    )
    if same:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"both runs are kept in {tmp}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
