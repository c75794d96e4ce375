"""Speed of our Transformer next to transformers' MarianMTModel (and CTranslate2), same weights.

    python bench/benchmark.py [--json bench/results.json] [--pairs 4000] [--device cpu]
                              [--default_malloc]

Both models are one random network: ours is built, then exported with export.py's weight
mapping (`to_marian`), so Marian runs the very same weights. Sizes: d_model 256, 3+3 layers,
4 heads, d_ff 1024, vocabulary 8,000, shared embeddings, GELU, dropout 0.3 in training.
On CPU: fp32, --threads threads (default 2), and freed memory kept in the process as train.py
keeps it (cpu_memory.keep_freed_memory; both models share the process, so both get it;
--default_malloc: glibc's defaults). On CUDA: bf16 autocast, the same code path.

Measured, in one process (CTranslate2 in a subprocess that never imports torch: two OpenMP
runtimes in one process halve its speed, see ../shared/notes/peers.md):
  train   target tokens/s of one AdamW step (label-smoothed CE, forward + backward + step) on
          64x24 source / 64x24 target tokens, median of --steps steps after warm-up; its FLOPs
          (FlopCounterMode, SDPA counted through the math kernel) per second as a share of a
          measured matmul rate (2048^2 fp32 on CPU, 8192^2 bf16 on CUDA)
  decode  64 sentences, exactly 30 new tokens each (</s> banned on our side, min_new_tokens =
          max_new_tokens on Marian's, min = max decoding length in CTranslate2), greedy and beam 4
  epoch   the first --pairs pairs of Multi30k train, tokenized as train.py does, trained once in
          token buckets (data.token_batches) and once as random 64-sentence batches padded to
          their longest sentence, with about the same target tokens per batch

At the defaults it takes about 3 minutes on an idle 2-core CPU (about 20 s of it CTranslate2's,
when installed; and a one-off 30 s or so to train and cache the tokenizer).
"""

import argparse
import contextlib
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository's modules, wherever this is run from

from bench.ct2_decode import token  # noqa: E402
from config import TrainConfig, load_config  # noqa: E402
from cpu_memory import keep_freed_memory  # noqa: E402
from data import SpecialIds, batch_iter, load_text, load_tokenizer, token_batches, tokenize  # noqa: E402
from export import to_marian  # noqa: E402
from model import ModelConfig, Transformer, shift_right  # noqa: E402
from train import loss_fn, make_optimizer  # noqa: E402
from translate import beam_search, greedy  # noqa: E402

SIZES = {"d_model": 256, "n_heads": 4, "d_ff": 1024, "n_layers": 3, "dropout": 0.3}
VOCAB, BATCH, SRC_LEN, TGT_LEN, NEW_TOKENS = 8000, 64, 24, 24, 30
IDS = SpecialIds(pad=0, eos=3, start=2)  # the layout of data.train_tokenizer's vocabulary
WHO = ("ours", "hf", "ct2")
BANNED = [IDS.pad, IDS.start, IDS.eos]  # </s> too: every sentence decodes exactly NEW_TOKENS
TARGETS = [  # (name, figure, at least)
    ("training step >= 1.0x HF", "train_ours_over_hf", 1.0),
    ("training step >= 0.85 of the matmul rate", "train_flop_share", 0.85),
    ("greedy >= 2.0x HF generate", "greedy_ours_over_hf", 2.0),
    ("greedy >= 1.0x CTranslate2", "greedy_ours_over_ct2", 1.0),
    ("beam 4 >= 2.0x HF generate", "beam4_ours_over_hf", 2.0),
    ("token-bucketed epoch >= 1.3x faster than padded", "epoch_bucketed_over_padded", 1.3),
]


class Bench:
    """Device, precision and timing shared by every measurement."""

    def __init__(self, device: str, threads: int):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        torch.set_num_threads(threads)
        self.threads = threads
        self.sections: dict[str, float] = {}  # wall-clock seconds of each part of the run

    @contextlib.contextmanager
    def section(self, name: str):
        start = time.perf_counter()
        yield
        self.sections[name] = time.perf_counter() - start
        print(f"{name}: done in {self.sections[name]:.0f} s", flush=True)

    def autocast(self):
        return torch.autocast("cuda", torch.bfloat16) if self.cuda else contextlib.nullcontext()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def times(self, fn, repeat: int, warmup: int = 1) -> list[float]:
        """Wall-clock seconds of `repeat` calls of fn after `warmup` untimed ones."""
        out = []
        for i in range(warmup + repeat):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            if i >= warmup:
                out.append(time.perf_counter() - start)
        return out

    def paired_times(self, fns: dict, repeat: int, warmup: int = 1) -> dict[str, list[float]]:
        """Seconds of `repeat` rounds of each fn, interleaved (the first to run alternates), so
        that the machine's drift, which here moved a timing by 20 % within seconds, falls on
        every side alike. In each round each fn first runs `warmup` times untimed: run right
        after the other model, it would find its weights out of the CPU's caches (ours greedy
        measured 154 sentences/s so, against 192 warm), which a user decoding batch after
        batch does not."""
        names, out = list(fns), {name: [] for name in fns}
        for i in range(repeat):
            for name in names if i % 2 == 0 else names[::-1]:
                out[name] += self.times(fns[name], repeat=1, warmup=warmup)
        return out

    def name(self) -> str:
        if self.cuda:
            return f"cuda ({torch.cuda.get_device_name(self.device)}), bf16 autocast"
        cpu = platform.processor() or "cpu"
        with contextlib.suppress(OSError):
            lines = Path("/proc/cpuinfo").read_text().splitlines()
            cpu = next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), cpu)
        return f"cpu ({cpu}), fp32, {self.threads} threads"


def matmul_rate(b: Bench) -> float:
    """FLOP/s of one large square matmul, in the precision the models run in."""
    n, dtype = (8192, torch.bfloat16) if b.cuda else (2048, torch.float32)
    x, y = (torch.randn(n, n, device=b.device, dtype=dtype) for _ in range(2))
    t = statistics.median(b.times(lambda: torch.mm(x, y), repeat=5, warmup=2))
    return 2 * n**3 / t


def our_model(vocab: int = VOCAB, ids: SpecialIds = IDS) -> Transformer:
    """Our Transformer at the benchmark's sizes, random weights from a fixed seed."""
    torch.manual_seed(0)
    cfg = ModelConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, pad_id=ids.pad, **SIZES)
    return Transformer(cfg)


def random_batch(b: Bench, seed: int = 0) -> dict:
    """src (B, S) and labels (B, T) of ordinary tokens ending in </s>, no padding."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB - 1, (BATCH, SRC_LEN), generator=g)
    labels = torch.randint(4, VOCAB - 1, (BATCH, TGT_LEN), generator=g)
    src[:, -1] = labels[:, -1] = IDS.eos
    batch = {"src": src, "labels": labels, "tgt_in": shift_right(labels, IDS.start, IDS.pad)}
    return {k: v.to(b.device) for k, v in batch.items()}


def train_step(b: Bench, model, hf: bool = False):
    """A function running one training step on a batch dict, with its own AdamW."""
    # train.py's AdamW, fused as transformers' Trainer's is by default (adamw_torch_fused)
    opt = make_optimizer(model, TrainConfig(learning_rate=5e-4), b.device)
    model.train()

    def step(batch):
        with b.autocast():
            if hf:
                mask = (batch["src"] != IDS.pad).long()
                out = model(
                    input_ids=batch["src"],
                    attention_mask=mask,
                    decoder_input_ids=batch["tgt_in"],
                    use_cache=False,  # as ours: no decoding cache while training
                )
                logits = out.logits
            else:
                logits = model(batch["src"], batch["tgt_in"])
            loss = loss_fn(logits, batch["labels"], IDS.pad, label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def step_flops(step, batch) -> int:
    """FLOPs of one step, counted by FlopCounterMode. It has no formula for the CPU flash
    attention kernel, so attention runs through the math kernel (plain matmuls) while counting."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step(batch)
    return counter.get_total_flops()


def bench_training(b: Bench, ours, hf, steps: int) -> dict:
    """Median step time of each model, their steps interleaved; flop_share is set by main."""
    batch, res = random_batch(b), {}
    step = {"ours": train_step(b, ours), "hf": train_step(b, hf, hf=True)}
    runs = {k: (lambda s=s: s(batch)) for k, s in step.items()}
    for run in runs.values():  # AdamW's first steps allocate its state
        b.times(run, repeat=0, warmup=2)
    times = b.paired_times(runs, steps, warmup=1)
    for name, t in ((k, statistics.median(v)) for k, v in times.items()):
        flops = step_flops(step[name], batch)
        res[name] = {"step_s": t, "tok_s": BATCH * TGT_LEN / t, "flops_per_step": flops}
        res[name]["flop_s"] = flops / t
    return res


def bench_decoding(b: Bench, ours, hf, repeat: int) -> dict:
    """Sentences/s of greedy and beam-4 decoding, exactly NEW_TOKENS new tokens per sentence."""
    src = random_batch(b)["src"]
    ours.eval()
    hf.eval()

    def run_ours(beam):
        with b.autocast():
            if beam == 1:
                out = greedy(ours, src, IDS, NEW_TOKENS, BANNED)
                assert out.shape[1] == NEW_TOKENS, out.shape
            else:
                found = beam_search(ours, src, IDS, NEW_TOKENS, beam, banned=BANNED)
                assert all(len(f[0].tokens) == NEW_TOKENS for f in found)

    def run_hf(beam):
        with b.autocast():
            out = hf.generate(
                input_ids=src,
                attention_mask=(src != IDS.pad).long(),
                num_beams=beam,
                do_sample=False,
                use_cache=True,
                min_new_tokens=NEW_TOKENS,
                max_new_tokens=NEW_TOKENS,
            )
        assert out.shape[1] == NEW_TOKENS + 1, out.shape  # decoder start token + new tokens

    res = {}
    for beam in (1, 4):
        runs = {"ours": lambda k=beam: run_ours(k), "hf": lambda k=beam: run_hf(k)}
        for name, times in b.paired_times(runs, repeat).items():
            t = statistics.median(times)
            res[f"{name}_beam{beam}"] = {"sentences_per_s": BATCH / t, "seconds": t}
    return res


def bench_ctranslate2(b: Bench, hf, repeat: int) -> dict:
    """Save, convert and time in subprocesses (bench/ct2_decode.py); {} if unavailable."""
    if importlib.util.find_spec("ctranslate2") is None:
        print("CTranslate2: not installed (pip install ctranslate2), skipped", flush=True)
        return {}
    from transformers.utils import logging

    logging.disable_progress_bar()
    script = Path(__file__).with_name("ct2_decode.py")
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(f"{tmp}/hf")
        src = [[token(i) for i in s] for s in random_batch(b)["src"].tolist()]
        Path(f"{tmp}/src.json").write_text(json.dumps(src))
        args = [b.threads, b.device.type, NEW_TOKENS, repeat]
        for cmd in (
            ["convert", f"{tmp}/hf", f"{tmp}/ct2"],
            ["time", f"{tmp}/ct2", f"{tmp}/src.json", *map(str, args)],
        ):
            done = subprocess.run([sys.executable, script, *cmd], capture_output=True, text=True)
            if done.returncode:
                print(f"CTranslate2 {cmd[0]} failed, skipped:\n{done.stderr.strip()[-2000:]}")
                return {}
    res = json.loads(done.stdout.strip().splitlines()[-1])
    for name, r in res.items():  # min = max decoding length should force NEW_TOKENS
        if r["mean_new_tokens"] != NEW_TOKENS:
            print(f"warning: CTranslate2 {name} made {r['mean_new_tokens']:.1f} tokens/sentence")
    return res


def bench_epoch(b: Bench, pairs: int, per_batch: int = 64) -> dict:
    """Train on the first `pairs` Multi30k pairs: token buckets vs padded random batches."""
    cfg = load_config(
        ROOT / "configs/multi30k.json",
        {"train_data": str(ROOT / "../shared/data/multi30k/train.{lang}.gz")},
    )
    quiet = lambda *_: None
    text = load_text(cfg.train_data, cfg, cfg.train_split)
    tok = load_tokenizer(cfg, None, text, log=quiet)  # cached by data.py after the first run
    corpus, ids = tokenize(text, tok, cfg.max_seq_length, "train", quiet), SpecialIds.of(tok)
    lengths = corpus.lengths()[:pairs]
    # About per_batch sentences per batch either way: the same target tokens per step.
    max_tokens = round(per_batch * float(lengths.mean()))
    order = np.random.default_rng(cfg.seed).permutation(len(lengths))
    plans = {
        "bucketed": lambda: token_batches(lengths, max_tokens, cfg.batch_size, cfg.seed, 0),
        "padded": lambda: np.array_split(order, -(-len(order) // per_batch)),
    }
    res = {"pairs": len(lengths), "max_tokens": max_tokens, "sentences_per_padded_batch": per_batch}
    for name, plan in plans.items():
        ours = our_model(len(tok), ids).to(b.device)
        step = train_step(b, ours)
        warm = next(batch_iter(corpus, [np.arange(per_batch)], ids, b.device))
        for _ in range(2):
            step(warm)
        tokens = padded = src_tokens = src_padded = 0
        b.sync()
        start = time.perf_counter()
        batches = plan()
        for batch in batch_iter(corpus, batches, ids, b.device):
            step(batch)
            tokens, padded = tokens + batch["n_tokens"], padded + batch["labels"].numel()
            src_tokens += int((batch["src"] != ids.pad).sum())
            src_padded += batch["src"].numel()
        b.sync()
        t = time.perf_counter() - start
        res[name] = {
            "seconds": t,
            "batches": len(batches),
            "target_tokens": tokens,
            "tok_s": tokens / t,
            "target_padding": 1 - tokens / padded,
            "source_padding": 1 - src_tokens / src_padded,
        }
    return res


def ratios(r: dict) -> dict:
    dec, out = r["decoding"], {}
    out["train_ours_over_hf"] = r["train"]["ours"]["tok_s"] / r["train"]["hf"]["tok_s"]
    out["train_flop_share"] = r["train"]["ours"]["flop_share"]
    for beam in (1, 4):
        name = "greedy" if beam == 1 else f"beam{beam}"
        ours = dec[f"ours_beam{beam}"]["sentences_per_s"]
        out[f"{name}_ours_over_hf"] = ours / dec[f"hf_beam{beam}"]["sentences_per_s"]
        if f"ct2_beam{beam}" in dec:
            out[f"{name}_ours_over_ct2"] = ours / dec[f"ct2_beam{beam}"]["sentences_per_s"]
    if "epoch" in r:
        out["epoch_bucketed_over_padded"] = (
            r["epoch"]["padded"]["seconds"] / r["epoch"]["bucketed"]["seconds"]
        )
    return out


def report(r: dict) -> None:
    tr, dec, ra = r["train"], r["decoding"], r["ratios"]
    fmt = lambda x, spec=",.0f": "-" if x is None else format(x, spec)
    row = lambda *cells: print(f"{cells[0]:28}" + "".join(f"{c:>12}" for c in cells[1:]))
    print(f"\ndevice: {r['device']}; torch {r['torch']}, transformers {r['transformers']}")
    if "kept_freed_memory" in r:  # absent from results written before it was recorded
        print(f"freed memory kept in the process: {'yes' if r['kept_freed_memory'] else 'no'}")
    after = r.get("matmul_flop_s_after")  # absent from results written before it was measured
    print(
        f"matmul rate: {r['matmul_flop_s'] / 1e9:,.0f} GFLOP/s"
        + (f" (after the training steps: {after / 1e9:,.0f})" if after else "")
        + "\n"
    )
    row("", "ours", "HF Marian", "CTranslate2", "ours/HF", "ours/CT2")
    ours, hf = tr["ours"], tr["hf"]
    share = [fmt(x["flop_share"], ".2g") for x in (ours, hf)]  # GPUs: ~0.004 at this size
    row(
        "train step, target tok/s",
        fmt(ours["tok_s"]),
        fmt(hf["tok_s"]),
        "-",
        fmt(ra["train_ours_over_hf"], ".2f"),
    )
    row("  share of matmul rate", *share)
    for beam, name in ((1, "greedy"), (4, "beam4")):
        sents = [dec.get(f"{who}_beam{beam}", {}).get("sentences_per_s") for who in WHO]
        over = [ra.get(f"{name}_ours_over_{who}") for who in WHO[1:]]
        row(
            f"{name}, sentences/s", *(fmt(x, ",.1f") for x in sents), *(fmt(x, ".2f") for x in over)
        )
    if "epoch" in r:
        ep = r["epoch"]
        print(f"\nMulti30k train, first {ep['pairs']:,} pairs, one pass of our model:")
        for name in ("bucketed", "padded"):
            e = ep[name]
            print(
                f"  {name:9}{e['seconds']:7.1f} s {e['batches']:5} batches "
                f"{e['tok_s']:7,.0f} non-padding target tok/s, padding: target "
                f"{e['target_padding']:.1%}, source {e['source_padding']:.1%}"
            )
        print(f"  bucketed/padded speed: {ra['epoch_bucketed_over_padded']:.2f}x")
    print("\ntargets (reported, not asserted):")
    for text, key, least in TARGETS:
        value = ra.get(key)
        verdict = "not measured" if value is None else "MET" if value >= least else "NOT MET"
        print(f"  {text:48} {fmt(value, '.3g'):>6}  {verdict}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write all figures to this file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps (default 10)")
    p.add_argument("--repeat", type=int, default=10, help="timed decoding runs (default 10)")
    p.add_argument("--pairs", type=int, default=4000, help="Multi30k pairs; 0 = skip the epoch")
    p.add_argument("--default_malloc", action="store_true", help="do not keep freed memory (CPU)")
    args = p.parse_args(argv)
    import transformers

    b = Bench(args.device, args.threads)
    kept = not args.default_malloc and keep_freed_memory(b.device)  # as train.py does
    print(f"measuring on {b.name()}, freed memory {'kept' if kept else 'not kept'}", flush=True)
    r = {"device": b.name(), "torch": torch.__version__, "transformers": transformers.__version__}
    r["kept_freed_memory"] = kept
    r.update(sizes=SIZES, vocab=VOCAB, args=vars(args))
    with b.section("models and matmul rate"):
        r["matmul_flop_s"] = matmul_rate(b)
        ours = our_model()
        hf = to_marian(ours, IDS).to(b.device)  # our weights under Marian's names (export.py)
        ours.to(b.device)
    with b.section("decoding"):
        r["decoding"] = bench_decoding(b, ours, hf, args.repeat)
    with b.section("CTranslate2"):
        r["decoding"].update(bench_ctranslate2(b, hf, args.repeat))
    with b.section("training steps"):  # last: they change the weights
        r["train"] = bench_training(b, ours, hf, args.steps)
        # the rate again right after: the share divides by the mean of the two
        r["matmul_flop_s_after"] = matmul_rate(b)
    rate = (r["matmul_flop_s"] + r["matmul_flop_s_after"]) / 2
    for side in r["train"].values():
        side["flop_share"] = side["flop_s"] / rate
    if args.pairs:
        with b.section("Multi30k epoch"):
            r["epoch"] = bench_epoch(b, args.pairs)
    r["section_seconds"] = b.sections
    r["ratios"] = ratios(r)
    report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
