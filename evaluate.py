"""Score translations with sacreBLEU: BLEU, chrF and TER with signatures, and paired bootstrap.

    # translate a test set with a checkpoint, then score it
    python evaluate.py --checkpoint runs/multi30k --source test.en.gz --reference test.de.gz
    python evaluate.py --checkpoint runs/multi30k --beam 5          # the config's test_data
    python evaluate.py --checkpoint runs/wmt14 --hub wmt/wmt14 --hub_config de-en --split test
    # score existing output, and compare it with another system's
    python evaluate.py --hypotheses hyp.de --reference test.de --compare other.de --json r.json
    python translate.py --checkpoint runs/multi30k < test.en | python evaluate.py \\
        --hypotheses - --reference test.de

Test set: --source / --reference files (plain or .gz); or --test_data SPEC, any data source
train.py reads (a Hub dataset, also spelled --hub NAME with --hub_config; "path.{lang}[.gz]";
JSON Lines; a save_to_disk directory) with --split (refused where there are no splits: a file,
one saved Dataset); by default the checkpoint config's test_data and test_split. Languages come
from the checkpoint's config (else --src_lang en, --tgt_lang de). --hypotheses are scored as
they are: decoding options (--beam, ...) are refused with them.

Scores: corpus BLEU (13a tokenization, exponential smoothing), chrF2 and TER on detokenized
text, each with its sacreBLEU signature. All three are case-sensitive unless --lowercase (note:
sacreBLEU's own command line scores TER case-insensitively by default; the signatures' `case:`
field always says which).

--moses: BLEU on Moses-tokenized text too, the form of published Multi30k figures (and of WMT
ones before sacreBLEU): both sides punctuation-normalised and tokenized by sacremoses (the Moses
scripts' Python port) for the target language, lowercased first with --lowercase, as the Multi30k
repository's tok/*.lc.norm.tok.* files were made; then BLEU on those tokens without smoothing
(multi-bleu.perl's, and fairseq generate's BLEU4). It has no sacreBLEU signature: the figure
depends on that pre-processing.

--compound_split: BLEU in the form of the Transformer paper's WMT14 figures (tensor2tensor's
get_ende_bleu.sh, fairseq's compound_split_bleu.sh; GNMT's and ConvS2S's convention): both sides'
unicode punctuation replaced (replace-unicode-punctuation.perl, not the whole normalisation),
tokenized by sacremoses, then every hyphen between two non-spaces split off ("Rich-Text" ->
"Rich ##AT##-##AT## Text"), and BLEU on those tokens without smoothing. Case-sensitive, as those
figures, unless --lowercase.

--compare OTHER: paired bootstrap resampling (Koehn, 2004; sacreBLEU's --paired-bs) with OTHER
as the baseline: --bootstrap_samples resamples (default 1000), seed $SACREBLEU_SEED or 12345
(SACREBLEU_SEED=none: from the OS, other resamples each run).
For each metric it reports both systems' scores, the bootstrap mean and 95% confidence interval
of this system, and the p-value of the difference (small p: unlikely to be chance); with
--moses or --compound_split their BLEU too ("BLEU tok", "BLEU cs"), on the same resamples
(unless SACREBLEU_SEED=none).

--json OUT writes every figure, the signatures, the test set scored ("test_set": the files, or
test_data and split), the decoding options and, with --checkpoint, the checkpoint's training and
model configs (with several, the first's, and under "ensemble" each checkpoint with its model
config).
"""

import contextlib
import dataclasses
import json
import os
import re
import sys

import datasets
import sacrebleu
from tqdm.auto import tqdm

from config import ArgumentParser, TrainConfig, UserError, cli
from cpu_memory import keep_freed_memory
from data import check_aligned, has_splits, load_text, read_lines, takes_config
from translate import (
    add_decoding_args,
    check_beam,
    check_not_an_input,
    decoding_options,
    open_output,
    translate_texts,
)
from translate import read_lines as read_input  # a file, or stdin for "-"

METRIC_NAMES = {"bleu": "BLEU", "chrf": "chrF2", "ter": "TER"}  # our keys -> sacreBLEU's names
# BLEU on tokens (--moses, --compound_split): the report's label, the --compare table's
TOKENIZED_NAMES = {
    "bleu_moses": ("BLEU (Moses-tokenized", "BLEU tok"),
    "bleu_compound": ("BLEU (compound-split", "BLEU cs"),
}


def metrics(lowercase: bool = False) -> dict:
    """Fresh sacreBLEU metric objects, keyed bleu / chrf / ter."""
    return {
        "bleu": sacrebleu.BLEU(lowercase=lowercase),
        "chrf": sacrebleu.CHRF(lowercase=lowercase),
        "ter": sacrebleu.TER(case_sensitive=not lowercase),
    }


def score(
    hypotheses: list[str],
    references: list[str],
    lowercase: bool = False,
    moses_lang: str | None = None,
    compound_lang: str | None = None,
) -> dict:
    """Corpus BLEU, chrF and TER on detokenized text, each with its sacreBLEU signature; with
    `moses_lang`, BLEU on Moses-tokenized text of that language too, and with `compound_lang`
    on compound-split tokens (moses_bleu)."""
    if len(hypotheses) != len(references):
        raise UserError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise UserError("nothing to score: the references are empty")
    report = {"sentences": len(references), "lowercase": lowercase}
    for key, metric in metrics(lowercase).items():
        result = metric.corpus_score(hypotheses, [references])
        report[key] = round(result.score, 2)
        report[f"{key}_signature"] = str(metric.get_signature())
        report[f"{key}_detail"] = str(result)
        if key == "bleu":
            report["bleu_precisions"] = [round(p, 2) for p in result.precisions]
            report["bleu_bp"] = round(result.bp, 4)
            report["bleu_ratio"] = round(result.ratio, 4)
            report["hyp_len"], report["ref_len"] = result.sys_len, result.ref_len
    for key, lang in (("bleu_moses", moses_lang), ("bleu_compound", compound_lang)):
        if lang:
            split = key == "bleu_compound"
            report.update(moses_bleu(hypotheses, references, lang, lowercase, split))
    return report


def moses_tokenizer(lang: str, lowercase: bool = False, compound_split: bool = False):
    """A line -> its tokens, space-separated, as the Multi30k repository made its tok/ files:
    lowercased (with `lowercase`), punctuation-normalised and tokenized by Moses' rules for
    `lang` (sacremoses), with Moses' escapes (" -> &quot;). With `compound_split`, as
    get_ende_bleu.sh tokenized WMT14 output: unicode punctuation replaced instead of the whole
    normalisation, and each hyphen between two non-spaces split off as ##AT##-##AT##."""
    sacremoses = import_sacremoses()
    normalizer = sacremoses.MosesPunctNormalizer(lang=lang)
    tokenizer = sacremoses.MosesTokenizer(lang=lang)
    normalize = normalizer.replace_unicode_punct if compound_split else normalizer.normalize

    def tokenize(line: str) -> str:
        line = tokenizer.tokenize(
            normalize(line.lower() if lowercase else line), escape=True, return_str=True
        )
        # perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g', whose matches do not overlap either
        return COMPOUND_HYPHEN.sub(r"\1 ##AT##-##AT## \2", line) if compound_split else line

    return tokenize


COMPOUND_HYPHEN = re.compile(r"(\S)-(\S)")


def moses_bleu(
    hypotheses: list[str],
    references: list[str],
    lang: str,
    lowercase: bool = False,
    compound_split: bool = False,
) -> dict:
    """BLEU on Moses-tokenized text (--moses; with `compound_split`, --compound_split's
    tokens): both sides through moses_tokenizer, then BLEU on those tokens without smoothing,
    as multi-bleu.perl and fairseq generate's BLEU4. Keyed bleu_moses, or bleu_compound."""
    tokenize = moses_tokenizer(lang, lowercase, compound_split)
    result = tokenized_bleu().corpus_score(
        [tokenize(h) for h in hypotheses], [[tokenize(r) for r in references]]
    )
    version = import_sacremoses().__version__  # imported already, by moses_tokenizer
    key = "bleu_compound" if compound_split else "bleu_moses"
    form = f"sacremoses {version}, {lang}, case {'lc' if lowercase else 'mixed'}"
    return {
        key: round(result.score, 2),
        f"{key}_detail": str(result),
        f"{key}_form": form + (", compound-split" if compound_split else ""),
        f"{key}_hyp_len": result.sys_len,
        f"{key}_ref_len": result.ref_len,
    }


def tokenized_bleu() -> sacrebleu.BLEU:
    """multi-bleu.perl's BLEU: on the tokens as given (split on spaces), no smoothing."""
    # force: the text is tokenized, on purpose (sacreBLEU warns about tokenized input)
    return sacrebleu.BLEU(tokenize="none", smooth_method="none", force=True)


def import_sacremoses():
    try:
        import sacremoses
    except ImportError:
        # said before any decoding (evaluate.py --moses, the Multi30k scripts)
        raise UserError(
            "BLEU on Moses-tokenized text needs sacremoses: pip install sacremoses"
        ) from None
    return sacremoses


def paired_bootstrap(
    hypotheses: list[str],
    baseline: list[str],
    references: list[str],
    lowercase: bool = False,
    n_samples: int = 1000,
    tokenized: dict | None = None,
) -> dict:
    """sacreBLEU's paired bootstrap resampling of `hypotheses` against `baseline`, per metric;
    `tokenized` {bleu_moses / bleu_compound: moses_tokenizer(...)} adds BLEU on those tokens."""
    if not len(hypotheses) == len(baseline) == len(references):
        raise UserError(
            f"--compare: {len(baseline)} baseline lines, {len(hypotheses)} hypotheses and "
            f"{len(references)} references"
        )
    named = {METRIC_NAMES[k]: m for k, m in metrics(lowercase).items()}
    out = _paired(hypotheses, baseline, references, named, n_samples)
    for key, tokenize in (tokenized or {}).items():  # a fixed seed: the same resamples
        system, base, refs = ([tokenize(x) for x in t] for t in (hypotheses, baseline, references))
        out[key] = _paired(system, base, refs, {"BLEU": tokenized_bleu()}, n_samples)["bleu"]
    return out


def _paired(hypotheses, baseline, references, named: dict, n_samples: int) -> dict:
    from sacrebleu.significance import PairedTest

    test = PairedTest(
        [("baseline", baseline), ("system", hypotheses)],
        named,
        references=[references],
        test_type="bs",
        n_samples=n_samples,
    )
    signatures, results = test()
    out = {}
    for key, name in METRIC_NAMES.items():
        if name not in results:
            continue
        base, system = results[name]
        out[key] = {
            "system": round(system.score, 2),
            "system_mean": round(float(system.mean), 2),
            "system_ci95": round(float(system.ci), 2),
            "baseline": round(base.score, 2),
            "baseline_mean": round(float(base.mean), 2),
            "baseline_ci95": round(float(base.ci), 2),
            "delta": round(system.score - base.score, 2),
            "p_value": round(float(system.p_value), 4),
            "signature": str(signatures[name]),
        }
    return out


def load_test_set(args, cfg: TrainConfig | None) -> tuple[list[str] | None, list[str], dict]:
    """(sources, references, what was read): from --source/--reference files, else from a
    test set."""
    sources = read_lines(args.source) if args.source else None
    references = read_lines(args.reference) if args.reference else None
    if references is not None and (sources is not None or not args.checkpoint):
        if args.test_data or args.split or args.hub_config or args.src_lang:
            flag = next(f"--{k}" for k in ("test_data", "split", "hub_config", "src_lang")
                        if getattr(args, k))  # fmt: skip
            # (--tgt_lang still names the references' language, for --moses)
            raise UserError(f"{flag} chooses a test set, but --reference gives the text to score")
        return sources, references, {"source": args.source, "reference": args.reference}
    spec = args.test_data or (cfg.test_data if cfg else None)
    if not spec:
        what = "references" if references is None else "sources"
        raise UserError(
            f"no {what}: give --reference (and --source with --checkpoint), or --test_data / "
            f"--hub, or a checkpoint whose config has test_data"
        )
    overrides = {
        k: v
        for k, v in {
            "dataset_config": args.hub_config,
            "src_lang": args.src_lang,
            "tgt_lang": args.tgt_lang,
        }.items()
        if v is not None
    }
    whole = not has_splits(spec)
    if args.hub_config and not takes_config(spec):  # ignored, as said nowhere
        raise UserError(f"--hub_config {args.hub_config}: test set {spec} has no configs")
    if args.split and whole:
        # read whole whatever the split: "--split validation" would quietly score the test set
        raise UserError(f"--split {args.split}: test set {spec} is one set, without splits")
    test_cfg = dataclasses.replace(cfg or TrainConfig(), **overrides)
    if (
        cfg
        and args.checkpoint
        and (test_cfg.src_lang, test_cfg.tgt_lang) != (cfg.src_lang, cfg.tgt_lang)
    ):
        # not refused: a model trained both ways (bidirectional_epochs) translates either way
        print(
            f"warning: the checkpoint was trained {cfg.src_lang}->{cfg.tgt_lang}; decoding "
            f"{test_cfg.src_lang}->{test_cfg.tgt_lang} (--src_lang / --tgt_lang)",
            file=sys.stderr,
        )
    split = args.split or test_cfg.test_split
    ds = load_text(spec, test_cfg, split)
    # `is None`, not falsiness: an empty --source file must not quietly become the test set
    return (
        list(ds["src"]) if sources is None else sources,
        list(ds["tgt"]) if references is None else references,
        {
            "test_data": spec,
            "split": None if whole else split,
            "dataset_config": test_cfg.dataset_config if takes_config(spec) else None,
            **{k: getattr(test_cfg, k) for k in ("src_lang", "tgt_lang")},
        },
    )


def save_selection(run, report: dict, hyps: list[str]) -> None:
    """What the Multi30k scripts end with: test's hypotheses and report (the choice on val,
    test's scores) written into `run`, and the test figures printed."""
    # each written aside and renamed once scored, the hypotheses first, results.json last (a
    # kill between the two renames leaves new hypotheses beside the old results)
    with open_output(run / "results.json") as j, open_output(run / "test_2016_flickr.hyp.de") as f:
        f.writelines(h + "\n" for h in hyps)
        j.write(json.dumps(report, indent=2) + "\n")
    cased, lower = report["test_cased"], report["test_lowercased"]
    print(f"chosen on val: {report['chosen_on_val']}")
    print(f"test_2016_flickr BLEU lowercased {lower['bleu']:.2f} ({lower['bleu_signature']})")
    if "bleu_moses" in lower:  # the published figures' form
        form = lower["bleu_moses_form"]
        print(f"  on Moses-tokenized text    {lower['bleu_moses']:.2f} ({form})")
    print(f"test_2016_flickr BLEU cased      {cased['bleu']:.2f} ({cased['bleu_signature']})")
    print(f"test_2016_flickr chrF cased      {cased['chrf']:.2f} ({cased['chrf_signature']})")


def print_report(report: dict) -> None:
    # what was scored, as the JSON report says: a run's output_dir resolves to best/ or last/
    if "checkpoint" in report:
        members = [m["checkpoint"] for m in report.get("ensemble", [])] or [report["checkpoint"]]
        d = report["decoding"]
        how = "greedy" if d["beam"] == 1 else f"beam {d['beam']}, length penalty {d['alpha']}"
        print(f"translated by {' + '.join(members)} ({how})")
    t = {k: v for k, v in report["test_set"].items() if v is not None}
    print("test set: " + ", ".join(f"{k} {v}" for k, v in t.items()))
    print(report["bleu_detail"])
    for key, (name, _) in TOKENIZED_NAMES.items():
        if key in report:
            label = f"{name}; {report[f'{key}_form']})"
            print(report[f"{key}_detail"].replace("BLEU", label, 1))
    print(report["chrf_detail"])
    print(report["ter_detail"])
    print("signatures:")
    for key, name in METRIC_NAMES.items():
        print(f"  {name:5} {report[f'{key}_signature']}")
    if "compare" in report:
        c = report["compare"]
        print(
            f"paired bootstrap resampling ({report['compare_samples']} samples, "
            f"seed {report['compare_seed']}): "
            f"this system vs baseline {report['compare_with']}"
        )
        print("  metric    system (mean ± 95% CI)   baseline (mean ± 95% CI)   delta   p-value")
        names = {**METRIC_NAMES, **{k: short for k, (_, short) in TOKENIZED_NAMES.items()}}
        for key in c:
            r = c[key]
            print(
                f"  {names[key]:8} {r['system']:6.2f}"
                f" ({r['system_mean']:6.2f} ± {r['system_ci95']:5.2f})"
                f"   {r['baseline']:6.2f} ({r['baseline_mean']:6.2f} ± {r['baseline_ci95']:5.2f})"
                f"   {r['delta']:+6.2f}   {r['p_value']:.4f}"
            )


def main(argv=None):
    p = ArgumentParser.of_tool(__doc__, "Test set:")
    p.add_argument("--hypotheses", help="system output to score (.gz ok; - reads stdin)")
    p.add_argument(
        "--checkpoint",
        nargs="+",
        action="extend",  # given twice: both, not the last alone
        help="translate the test set's sources with this checkpoint (several: their ensemble)",
    )
    p.add_argument("--reference", help="reference translations (.gz ok)")
    p.add_argument("--source", help="source sentences (.gz ok), with --checkpoint")
    p.add_argument("--test_data", "--hub", help="test set, any data source form (see below)")
    p.add_argument(
        "--hub_config", "--dataset_config", help="dataset config of a Hub test set (e.g. de-en)"
    )
    p.add_argument("--split", help="split of the test set (default: the config's test_split)")
    p.add_argument("--src_lang", help="source language of the test set (default: config's, en)")
    p.add_argument(
        "--tgt_lang",
        help="target language of the test set, and the Moses tokenizer's (default: config's, de)",
    )
    p.add_argument("--output", help="also write the translations here")
    decoding = add_decoding_args(p)
    p.add_argument("--lowercase", action="store_true", help="case-insensitive BLEU, chrF, TER")
    p.add_argument(
        "--moses", action="store_true", help="BLEU on Moses-tokenized text too (see below)"
    )
    p.add_argument(
        "--compound_split",
        action="store_true",
        help="BLEU on compound-split Moses tokens too, as the Transformer paper's (see below)",
    )
    p.add_argument("--compare", metavar="OTHER", help="paired bootstrap against this output")
    p.add_argument("--bootstrap_samples", type=int, help="with --compare (default 1000)")
    p.add_argument("--json", help="write the report as JSON")
    args = p.parse_args(argv)
    if sys.stdout is None and args.json in (None, "-"):  # started with stdout closed (`>&-`)
        raise UserError("no output: stdout is closed; give --json FILE")
    if not sys.stderr.isatty():  # datasets' "Generating train split" bars: none in a pipe or log
        datasets.disable_progress_bars()
    if bool(args.hypotheses) == bool(args.checkpoint):
        raise UserError("give either --hypotheses, or --checkpoint (with --source or a test set)")
    if args.source and not args.checkpoint:
        raise UserError("--source needs --checkpoint")
    if args.checkpoint and bool(args.source) != bool(args.reference):
        # half a test set from files and half from test_data would pair lines that do not belong
        raise UserError("--source and --reference go together: give both, or neither (test set)")
    if args.output and not args.checkpoint:
        raise UserError("--output writes the translations of --checkpoint: none to write here")
    if args.hypotheses and (given := [k for k in decoding if getattr(args, k) != p.get_default(k)]):
        # scored as they are: a --beam 5 here would be reported nowhere and change nothing
        flags = ", ".join(f"--{k}" for k in given)
        raise UserError(f"{flags}: decoding options, but --hypotheses are already decoded")
    same = args.output and args.json and args.output != "-"
    if same and os.path.realpath(args.output) == os.path.realpath(args.json):
        raise UserError(f"--output and --json name the same file ({args.output})")
    inputs = {f"--{k}": getattr(args, k) for k in ("source", "reference", "hypotheses", "compare")}
    for flag in ("output", "json"):
        check_not_an_input(f"--{flag}", getattr(args, flag), inputs)
    if args.moses or args.compound_split:
        import_sacremoses()  # now, not after the decoding
    if args.bootstrap_samples is not None and not args.compare:  # ignored, as said nowhere
        raise UserError("--bootstrap_samples resamples for --compare: it needs --compare")
    args.bootstrap_samples = 1000 if args.bootstrap_samples is None else args.bootstrap_samples
    if args.compare and args.bootstrap_samples < 1:
        raise UserError("--bootstrap_samples must be >= 1")
    seed = os.environ.get("SACREBLEU_SEED")  # sacreBLEU int()s it, after all the decoding
    if args.compare and seed is not None and not (seed.strip().isdigit() or seed.lower() == "none"):
        # "none": sacreBLEU's own word for a seed from the OS (resamples that differ each run)
        raise UserError(f"SACREBLEU_SEED must be an integer >= 0, or none (got {seed!r})")
    # read before any decoding, so that a missing file stops us now, not hours later
    baseline = read_lines(args.compare) if args.compare else None
    with contextlib.ExitStack() as outputs:
        # opened (as temporary files, renamed when done) before decoding too, for the same reason
        out, out_json = (
            outputs.enter_context(open_output(path)) if path else None
            for path in (args.output, args.json)
        )
        report = evaluate(args, baseline, out)
        if out_json:
            if sys.stdout is not None:  # the printed report first, when the JSON goes there too
                sys.stdout.flush()
            json.dump(report, out_json, indent=2, ensure_ascii=False)
            out_json.write("\n")
    return report


def evaluate(args, baseline: list[str] | None, out) -> dict:
    """Translate (with --checkpoint) or read the hypotheses, score them, print the report."""
    report = {}
    cfg = model = None
    if args.checkpoint:
        from checkpoint import resolve
        from ensemble import load_models

        options = decoding_options(args)
        model, tokenizer, ids, cfg = load_models(args.checkpoint, args.device)
        check_beam(model, args.beam)  # before the test set is read
        keep_freed_memory(args.device)  # as translate.py
    sources, references, report["test_set"] = load_test_set(args, cfg)
    if spec := report["test_set"].get("test_data"):  # its files are inputs too
        t = report["test_set"]
        files = {
            f"test set's {t[k]}": spec.replace("{lang}", t[k]) for k in ("src_lang", "tgt_lang")
        }
        for flag in ("output", "json"):
            check_not_an_input(f"--{flag}", getattr(args, flag), files)
    refs = args.reference or "the test set's references"  # for the messages
    if empty := sum(not r.strip() for r in references):  # scored as given, but said
        print(f"warning: {refs}: {empty} of {len(references)} empty", file=sys.stderr)
    if baseline is not None:
        check_aligned(baseline, references, f"--compare {args.compare}", refs)
    if model is not None:
        srcs = args.source or "the test set's sources"
        check_aligned(sources, references, srcs, refs)  # before hours of decoding, not after
        # a bar on a terminal only (disable=None), on stderr: the report goes to stdout
        with tqdm(total=len(sources), desc="translating", unit=" lines", disable=None) as bar:
            hypotheses = translate_texts(
                model, tokenizer, ids, sources, args.batch_size, cfg.max_seq_length,
                progress=bar, **options,
            )  # fmt: skip
        # the directory decoded (a run's output_dir resolves to its best or last checkpoint)
        paths = [str(resolve(p)) for p in args.checkpoint]
        report["checkpoint"] = paths[0]
        report["decoding"] = options
        report["config"] = cfg.to_dict()
        members = model.models if len(paths) > 1 else [model]
        report["model_config"] = members[0].cfg.to_dict()
        if len(members) > 1:  # an ensemble: the first model above, each of them here
            report["ensemble"] = [
                {"checkpoint": path, "model_config": m.cfg.to_dict()}
                for path, m in zip(paths, members, strict=True)
            ]
        if out:
            out.writelines(h + "\n" for h in hypotheses)
            out.flush()  # before the report, when both go to stdout
    else:
        hypotheses = read_input(args.hypotheses, "--hypotheses")  # "-": stdin
        check_aligned(hypotheses, references, args.hypotheses, refs)
    # the Moses tokenizer's language, the test set's target language: as given, the config's, de
    t = report["test_set"]
    lang = t.get("tgt_lang") or args.tgt_lang or (cfg.tgt_lang if cfg else None) or "de"
    moses, compound = (lang if flag else None for flag in (args.moses, args.compound_split))
    report = {**score(hypotheses, references, args.lowercase, moses, compound), **report}
    if args.compare:
        report["compare_with"] = args.compare
        report["compare_samples"] = args.bootstrap_samples
        report["compare_seed"] = os.environ.get("SACREBLEU_SEED", "12345")
        report["compare"] = paired_bootstrap(
            hypotheses,
            baseline,
            references,
            args.lowercase,
            args.bootstrap_samples,
            {
                key: moses_tokenizer(lang, args.lowercase, compound_split=key == "bleu_compound")
                for key, on in (("bleu_moses", moses), ("bleu_compound", compound))
                if on
            },
        )
    print_report(report)
    return report


if __name__ == "__main__":
    cli(main)
