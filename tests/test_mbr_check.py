"""scripts/mbr_check.py's reranking rule: consensus under flat weights, the model's choice under
sharp ones."""

import importlib.util
import subprocess
import sys

from sacrebleu.metrics import BLEU

from helpers import ROOT, subprocess_env

SCRIPT = ROOT / "scripts" / "mbr_check.py"
spec = importlib.util.spec_from_file_location("mbr_check", SCRIPT)
mbr_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mbr_check)

# The beam's favourite is an outlier; the other three agree with each other.
NBEST = [
    ("ein Hund rennt über die grüne Wiese im Park .", -0.5),
    ("zwei Männer spielen Fußball auf dem Rasen .", -0.9),
    ("zwei Männer spielen Fußball auf einem Rasen .", -1.0),
    ("zwei Männer spielen Fußball auf dem grünen Rasen .", -1.1),
]


def test_flat_weights_pick_the_consensus_sharp_weights_the_top_hypothesis():
    utility = mbr_check.sentence_utility(BLEU(effective_order=True))
    assert mbr_check.mbr_pick(NBEST, utility, k=4, temperature=None) == NBEST[1][0]
    assert mbr_check.mbr_pick(NBEST, utility, k=4, temperature=0.01) == NBEST[0][0]
    # Only the first k count: among the first 2 nothing agrees, so the sharper weight wins.
    assert mbr_check.mbr_pick(NBEST, utility, k=2, temperature=1.0) == NBEST[0][0]


def test_one_hypothesis_is_exit_2():
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--checkpoint", "unused", "--beam", "1"],
        capture_output=True, text=True, env=subprocess_env(), cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2 and "--beam: at least 2 hypotheses" in proc.stderr
    for alpha in ("nan", "1000"):  # as translate.py: NaN ranks at random, 1000 overflows
        proc = subprocess.run(
            [sys.executable, SCRIPT, "--checkpoint", "unused", "--length_penalty", alpha],
            capture_output=True, text=True, env=subprocess_env(), cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1
        assert f"--length_penalty must be in [-10, 10] (got {float(alpha)})" in proc.stderr
    proc = subprocess.run(  # the range's ends are in it: the checkpoint is what fails then
        [sys.executable, SCRIPT, "--checkpoint", "unused", "--length_penalty", "-10"],
        capture_output=True, text=True, env=subprocess_env(), cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2 and "must be in" not in proc.stderr and "unused" in proc.stderr
