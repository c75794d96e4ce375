"""After `train.py --config configs/multi30k.json`: average, choose on val, score test once.

    python scripts/multi30k_select.py [--run runs/multi30k] [--average N ...] [--beams K ...]
    python scripts/multi30k_select.py --run runs/ens --ensemble runs/a/avg10 runs/b/avg5

1. averages the newest N checkpoints into RUN/avgN for each N (default 5 and 10; paper §6.1:
   the last 5, written at 10-minute intervals). The recipe writes one every save_every steps
   and at each epoch's end, so 10 of them span the last 2-3 epochs. N is capped at the number
   of checkpoints saved, and the directory is named after the count averaged; averages left
   by an earlier selection (RUN/avgM for another M) are removed, as they may be of older
   checkpoints;
2. decodes val with `best` and each average, greedy and beams 5 and 10 (`--beams`) with
   length penalties 0.6/1.0/1.4/1.8/2.2, and keeps the setting with the highest val BLEU,
   unrounded (the first tried wins an exact tie; the test set is not looked at);
3. translates test_2016_flickr once with that setting and reports sacreBLEU (cased and
   lowercased BLEU, chrF) with signatures, into RUN/results.json.
With --ensemble, steps 2 and 3 run for the ensemble of the checkpoints given (ensemble.py)
instead, and RUN is only where the results go.
"""

import re
import shutil
import sys
import time
from pathlib import Path

import sacrebleu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from average import average, check_same_model, direction, given_twice  # noqa: E402
from checkpoint import load_model, resolve, step_dirs  # noqa: E402
from config import ArgumentParser, UserError, cli  # noqa: E402
from cpu_memory import keep_freed_memory  # noqa: E402
from data import read_aligned  # noqa: E402
from ensemble import load_models  # noqa: E402
from evaluate import import_sacremoses, save_selection, score  # noqa: E402
from translate import translate_texts  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared/data/multi30k"
PENALTIES = (0.6, 1.0, 1.4, 1.8, 2.2)


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="the run to choose from (default runs/multi30k); with "
                   "--ensemble, a new directory for the ensemble's results")  # fmt: skip
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--average", type=int, nargs="+", metavar="N",
                   help="average the newest N checkpoints, for each N (default: 5 10)")  # fmt: skip
    p.add_argument("--beams", type=int, nargs="+", default=[5, 10], metavar="K",
                   help="beam sizes tried next to greedy, each with every length penalty "
                        "(default: 5 10)")  # fmt: skip
    p.add_argument("--ensemble", nargs="+", metavar="CKPT",
                   help="choose for the ensemble of these checkpoints instead "
                        "(no averaging)")  # fmt: skip
    args = p.parse_args(argv)
    import_sacremoses()  # test's published-form BLEU needs it: said now, not after decoding
    if args.ensemble and args.average:  # ignored, as said nowhere
        p.error("--average: an ensemble's members are decoded as given, not averaged")
    args.average = args.average or [5, 10]
    if min(args.average) < 1:
        p.error("--average: N must be at least 1")
    if min(args.beams) < 2:
        p.error("--beams: K must be at least 2 (greedy is always tried)")
    if args.ensemble and (not args.run or (Path(args.run) / "checkpoints").exists()):
        # its results.json and hypotheses would replace a run's own
        p.error("--ensemble needs --run: a directory of its own, not a training run's")
    args.run = args.run or "runs/multi30k"
    settings = [{"beam": 1}] + [
        {"beam": k, "alpha": a} for k in sorted(set(args.beams)) for a in PENALTIES
    ]
    keep_freed_memory()  # the models decode on CPU, as translate.py does (docs/speed.md)
    run, data = Path(args.run), Path(args.data)
    # all four files read and checked before any decoding (test's are not used until the
    # setting is chosen), so a missing or misaligned one fails now, not after the val sweep
    val_src, val_ref = read_aligned(f"{data}/val.en.gz", f"{data}/val.de.gz")
    test_src, test_ref = read_aligned(
        f"{data}/test_2016_flickr.en.gz", f"{data}/test_2016_flickr.de.gz"
    )
    for split, lines in (("val", val_src), ("test_2016_flickr", test_src)):
        if not lines:  # nothing to choose on, or nothing to score
            raise UserError(f"{data}/{split}.en.gz: no sentences")
    if args.ensemble:
        if twice := given_twice([resolve(c) for c in args.ensemble]):
            raise UserError(f"--ensemble: {', '.join(twice)}: the same checkpoint twice")
        loaded = {"ensemble": load_models(args.ensemble)}
        cfg = loaded["ensemble"][3]  # its members' direction, which load_models makes one
        if (cfg.src_lang, cfg.tgt_lang) != ("en", "de"):  # val and test are read en->de
            raise UserError(f"--ensemble: a {cfg.src_lang}->{cfg.tgt_lang} model, not en->de")
    else:
        names, saved = ["best"], step_dirs(run / "checkpoints")
        if not saved:
            raise UserError(f"nothing to average: 0 checkpoints in {run}/checkpoints")
        counts = sorted({min(n, len(saved)) for n in args.average})  # fewer saved: all of them
        # checked as average.py checks them (one model, one direction), before any work
        check_same_model(saved[-counts[-1] :])
        for d in (saved[-1], run / "best"):
            if d.exists() and (way := direction(d)) != "en->de":
                raise UserError(f"{d}: a {way} model; this script scores en->de")
        for old in run.glob("avg*"):  # e.g. an avg20 of the checkpoints of a run started over
            if re.fullmatch(r"avg\d+", old.name) and int(old.name[3:]) not in counts:
                shutil.rmtree(old)
                print(f"removed {old}: an earlier selection's average", flush=True)
        for n in counts:
            average(saved[-n:], run / f"avg{n}")
            names.append(f"avg{n}")
        loaded = {name: load_model(run / name) for name in names}
    run.mkdir(parents=True, exist_ok=True)  # once they load: a failure leaves no folder
    results = []
    for name, (model, tok, ids, cfg) in loaded.items():
        for setting in settings:
            t0 = time.time()
            hyps = translate_texts(model, tok, ids, val_src, 64, cfg.max_seq_length, **setting)
            exact = sacrebleu.BLEU().corpus_score(hyps, [val_ref]).score  # cased, as score()'s
            bleu = round(exact, 2)  # as score() reports it
            results.append({"checkpoint": name, **setting, "val_bleu": bleu, "exact": exact})
            print(
                f"val  {name:5s} {setting}: BLEU {bleu:.2f} "
                f"({len(val_src) / (time.time() - t0):.0f} sentences/s)",
                flush=True,
            )
    chosen = max(results, key=lambda r: r["exact"])  # rounded, a near-tie went to the first
    for r in results:
        del r["exact"]
    setting = {k: v for k, v in chosen.items() if k in ("beam", "alpha")}
    model, tok, ids, cfg = loaded[chosen["checkpoint"]]
    hyps = translate_texts(model, tok, ids, test_src, 64, cfg.max_seq_length, **setting)
    cased, lower = score(hyps, test_ref), score(hyps, test_ref, lowercase=True, moses_lang="de")
    report = {
        **({"ensemble": args.ensemble} if args.ensemble else {}),
        "chosen_on_val": chosen,
        "val": results,
        "test_cased": cased,
        "test_lowercased": lower,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    save_selection(run, report, hyps)


if __name__ == "__main__":
    cli(main)
