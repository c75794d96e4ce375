"""CTranslate2 side of bench/benchmark.py, run in subprocesses of it.

    python bench/ct2_decode.py convert MARIAN_DIR CT2_DIR
    python bench/ct2_decode.py time CT2_DIR SOURCE_JSON THREADS DEVICE NEW_TOKENS REPEAT

`convert` adds a word-level tokenizer to the saved MarianMTModel directory (the converter needs
one) and converts it with export.to_ctranslate2: the same weights, every vocabulary row. `time`
never imports torch: CTranslate2 and torch each ship an OpenMP runtime, and in one process
CTranslate2 ran about 2x slower (../shared/notes/peers.md). It prints one JSON line:
sentences/s of greedy and beam-4 decoding of the source batch, NEW_TOKENS tokens per sentence
(min = max decoding length). SOURCE_JSON: a list of token lists (see `token`).
"""

import json
import statistics
import sys
import time
from pathlib import Path


def token(i: int) -> str:
    """The name of id i: data.train_tokenizer's special tokens, then t4, t5, ..."""
    return {0: "<pad>", 1: "<unk>", 2: "<s>", 3: "</s>"}.get(i, f"t{i}")


def convert(marian_dir: str, out_dir: str) -> None:
    """Name the ids, then convert as `export.py --ct2` does (every row, our start token)."""
    from tokenizers import Tokenizer, models
    from transformers import AutoConfig, PreTrainedTokenizerFast

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from export import to_ctranslate2  # imports torch: this runs in its own process

    vocab = AutoConfig.from_pretrained(marian_dir).vocab_size
    words = models.WordLevel({token(i): i for i in range(vocab)}, unk_token="<unk>")
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(words),
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    ).save_pretrained(marian_dir)
    to_ctranslate2(marian_dir, out_dir)


def time_decoding(model, source, threads, device, new_tokens, repeat) -> dict:
    import ctranslate2

    translator = ctranslate2.Translator(
        model,
        device=device,
        compute_type="bfloat16" if device == "cuda" else "float32",
        inter_threads=1,
        intra_threads=int(threads),
    )
    source, n, res = json.load(open(source)), int(new_tokens), {}
    for beam in (1, 4):

        def run(beam=beam):
            return translator.translate_batch(
                source,
                beam_size=beam,
                max_batch_size=len(source),
                min_decoding_length=n,
                max_decoding_length=n,
            )

        run()
        times = []
        for _ in range(int(repeat)):
            start = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        res[f"ct2_beam{beam}"] = {
            "sentences_per_s": len(source) / t,
            "seconds": t,
            "mean_new_tokens": sum(len(r.hypotheses[0]) for r in out) / len(out),
        }
    return res


if __name__ == "__main__":
    if len(sys.argv) != {"convert": 4, "time": 8}.get(sys.argv[1] if sys.argv[1:] else ""):
        sys.exit(__doc__)  # the usage on stderr, exit code 1
    if sys.argv[1] == "convert":
        convert(*sys.argv[2:])
    else:
        print(json.dumps(time_decoding(*sys.argv[2:])))
