"""Score translations with sacreBLEU (BLEU and chrF, with their signatures).

    python evaluate.py --checkpoint runs/quickstart --source test.en --reference test.de
    python evaluate.py --hypotheses hyps.de --reference test.de [--json report.json]

With --checkpoint the source is translated first (greedy); plain text and .gz files are read.
"""

import argparse
import json
import sys

import sacrebleu

from config import UserError, cli
from data import _read_lines


def score(hypotheses: list[str], references: list[str], lowercase: bool = False) -> dict:
    """Corpus BLEU and chrF on detokenized text, with sacreBLEU signatures."""
    if len(hypotheses) != len(references):
        raise UserError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu = sacrebleu.BLEU(lowercase=lowercase)
    chrf = sacrebleu.CHRF(lowercase=lowercase)
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": round(b.score, 2), "bleu_signature": str(bleu.get_signature()),
        "bleu_detail": str(b), "chrf": round(c.score, 2), "chrf_signature": str(chrf.get_signature()),
        "sentences": len(references),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="reference translations (.gz ok)")
    p.add_argument("--hypotheses", help="system output to score (.gz ok)")
    p.add_argument("--checkpoint", help="translate --source with this checkpoint first")
    p.add_argument("--source", help="source sentences, with --checkpoint")
    p.add_argument("--output", help="also write the translations here")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lowercase", action="store_true", help="case-insensitive BLEU and chrF")
    p.add_argument("--json", help="write the report as JSON")
    args = p.parse_args(argv)
    if bool(args.hypotheses) == bool(args.checkpoint):
        raise UserError("give either --hypotheses, or --checkpoint with --source")
    references = _read_lines(args.reference)
    report = {}
    if args.checkpoint:
        if not args.source:
            raise UserError("--checkpoint needs --source")
        from checkpoint import load_model
        from translate import translate_texts

        model, tokenizer, ids, cfg = load_model(args.checkpoint)
        hypotheses = translate_texts(model, tokenizer, ids, _read_lines(args.source),
                                     args.batch_size, cfg.max_seq_length)
        report["checkpoint"] = str(args.checkpoint)
        report["config"] = cfg.to_dict()
        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                f.writelines(h + "\n" for h in hypotheses)
    else:
        hypotheses = _read_lines(args.hypotheses)
    report = {**score(hypotheses, references, args.lowercase), **report}
    print(report["bleu_detail"])
    print(f"chrF2 = {report['chrf']:.2f}")
    print(f"signatures: {report['bleu_signature']} | {report['chrf_signature']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return report


if __name__ == "__main__":
    cli(main)
    sys.exit(0)
