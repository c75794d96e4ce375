"""Export a checkpoint as a Hugging Face MarianMTModel directory, loadable with no code of ours.

    python export.py --checkpoint runs/quickstart --out exported/quickstart

    from transformers import AutoTokenizer, MarianMTModel
    tokenizer = AutoTokenizer.from_pretrained("exported/quickstart")
    model = MarianMTModel.from_pretrained("exported/quickstart")
    batch = tokenizer(["The dog sees the cat."], return_tensors="pt", truncation=True)
    out = model.generate(**batch)  # greedy; beam: num_beams=5, length_penalty=0.6 (below)
    print(tokenizer.batch_decode(out, skip_special_tokens=True))

    # CTranslate2 (pip install ctranslate2), converted from the exported directory:
    python export.py --checkpoint runs/quickstart --out exported/quickstart --ct2 ct2/quickstart

The directory holds config.json (a MarianConfig), generation_config.json, model.safetensors,
the checkpoint's tokenizer files (a PreTrainedTokenizerFast or a Marian tokenizer, whichever
it has) and training_config.json (our config, for the record). The export is checked before it
is moved into place: the saved directory is loaded back and its logits must match ours within
1e-4 (fp32) on a probe batch.

Why Marian fits: it is the paper's post-LN encoder-decoder with scaled embeddings and static
sinusoidal positions in the same sin-half/cos-half layout as model/embedding.py (ours is
computed in fp32, Marian's in fp64: they differ by < 2e-5 up to position 256), nn.LayerNorm
(eps 1e-5), biases on every projection, exact (erf) GELU ("gelu" = F.gelu), and an output
projection tied to the target embedding. Fixed choices of the export:
  - decoder_start_token_id = our SpecialIds.start; eos / pad from SpecialIds;
  - final_logits_bias = 0 (we have no output bias);
  - share_embeddings: true  -> share_encoder_decoder_embeddings (one `model.shared` table),
                      false -> separate encoder / decoder tables (vocab_size = source vocabulary,
                               decoder_vocab_size = target vocabulary), lm_head tied to the
                               decoder's (tie_word_embeddings, as our out_proj);
  - generation_config: greedy (num_beams 1), max_new_tokens = the positional table, padding and
    the start token suppressed (as translate.py), no forced </s>.
Weights map by name: src_embed/tgt_embed.tokens -> model.{shared,encoder,decoder}.embed_tokens
and lm_head; {encoder,decoder}.layers.N.self_attn.{q,k,v,out}_proj, self_attn_layer_norm and
final_layer_norm keep their names; ffn.fc1/fc2 -> fc1/fc2; cross_attn -> encoder_attn;
cross_attn_layer_norm -> encoder_attn_layer_norm.
CTranslate2: its stock Marian converter (ct2-transformers-converter) assumes Marian's own
vocabulary layout: it drops the last vocabulary row, taking it for the <pad> transformers
appends, and starts decoding from a zero embedding instead of the start token's. Our
tokenizers have no such row and decode from SpecialIds.start, so --ct2 converts with that
loader minus those two Marian conventions: every row kept, decoding from our start token; and
it adds an output bias of -1e4 on padding and the start token, which translate.py bans.
Not the same search as translate.py: transformers' and CTranslate2's beam search divide a
hypothesis's log-probability by length ** length_penalty, not by GNMT's ((5 + L) / 6) ** alpha,
so one alpha ranks otherwise (generate(num_beams=5, length_penalty=0.6) comes closest to
translate.py --beam 5: 7 of 200 Multi30k val translations differed, 32 with transformers'
default 1.0; README, Export); their output budget is the positional table, not translate.py's
1.5 |x| + 10; and a source longer than the table needs truncation=True (above).
Refused (one-line error, exit 2): pre_norm models (Marian is post-LN only). Training-only
settings (dropout, attn_dropout, act_dropout) are copied as they are and do not affect inference;
word_dropout is not written: MarianConfig has no field for it (Marian's own --dropout-src is
a training option).
"""

import json
from pathlib import Path

import torch

from checkpoint import check_replaceable, load_model, resolve, staged_output
from config import ArgumentParser, UserError, cli
from data import SpecialIds
from model import ModelConfig, Transformer
from translate import banned_ids

PARITY_ATOL = 1e-4  # max |logits ours - logits Marian| accepted, fp32


def marian_config(cfg: ModelConfig, ids: SpecialIds):
    """Our ModelConfig -> the MarianConfig of the same network; UserError if there is none."""
    from transformers import MarianConfig

    if cfg.pre_norm:
        raise UserError("export: this model is pre-LN (pre_norm: true); Marian is post-LN only")
    return MarianConfig(
        vocab_size=cfg.src_vocab_size,
        decoder_vocab_size=cfg.tgt_vocab_size,
        max_position_embeddings=cfg.max_len,
        d_model=cfg.d_model,
        encoder_layers=cfg.n_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.n_heads,
        decoder_attention_heads=cfg.n_heads,
        encoder_ffn_dim=cfg.d_ff,
        decoder_ffn_dim=cfg.d_ff,
        activation_function="gelu",  # exact erf GELU, as F.gelu in model/feedforward.py
        dropout=cfg.dropout,
        attention_dropout=cfg.attn_dropout,
        activation_dropout=cfg.act_dropout,
        scale_embedding=True,  # sqrt(d_model) * E[ids], paper §3.4
        share_encoder_decoder_embeddings=cfg.share_embeddings,
        tie_word_embeddings=True,  # lm_head = decoder embedding, as our out_proj
        pad_token_id=ids.pad,
        eos_token_id=ids.eos,
        bos_token_id=ids.start if ids.start != ids.pad else None,
        decoder_start_token_id=ids.start,
        forced_eos_token_id=None,
    )


def generation_config(cfg: ModelConfig, ids: SpecialIds):
    """Greedy, like translate.py's default, within the positional table."""
    from transformers import GenerationConfig

    return GenerationConfig(
        decoder_start_token_id=ids.start,
        eos_token_id=ids.eos,
        pad_token_id=ids.pad,
        bos_token_id=ids.start if ids.start != ids.pad else None,
        forced_eos_token_id=None,
        max_new_tokens=cfg.max_len - 1,
        num_beams=1,
        do_sample=False,
        suppress_tokens=banned_ids(ids),
    )


def marian_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our weights under Marian's names (tied tables repeated under every name they have)."""
    cfg = model.cfg
    out = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(("src_embed.", "tgt_embed.", "out_proj.")):
            continue  # the token tables, below
        name = (
            name.replace(".ffn.", ".")
            .replace(".cross_attn_layer_norm.", ".encoder_attn_layer_norm.")
            .replace(".cross_attn.", ".encoder_attn.")
        )
        out[f"model.{name}"] = tensor
    src, tgt = model.src_embed.tokens.weight, model.tgt_embed.tokens.weight
    if cfg.share_embeddings:
        out["model.shared.weight"] = src
    out["model.encoder.embed_tokens.weight"] = src
    out["model.decoder.embed_tokens.weight"] = tgt
    out["lm_head.weight"] = tgt  # our out_proj is always tied to the target embedding
    return {k: v.detach().clone() for k, v in out.items()}


def to_marian(model: Transformer, ids: SpecialIds):
    """Our Transformer -> a MarianMTModel (eval mode, fp32) computing the same function."""
    from transformers import MarianMTModel

    hf = MarianMTModel(marian_config(model.cfg, ids))
    weights = marian_state_dict(model)
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    # Marian computes its positional tables itself; final_logits_bias stays zero.
    missing = [k for k in missing if "embed_positions" not in k and k != "final_logits_bias"]
    if missing or unexpected:
        raise RuntimeError(f"export: unmapped weights: missing {missing}, unexpected {unexpected}")
    hf.generation_config = generation_config(model.cfg, ids)
    return hf.float().eval()


@torch.no_grad()
def max_logit_difference(model: Transformer, hf, ids: SpecialIds, seed: int = 0) -> float:
    """Max |ours - Marian| over the logits of a padded probe batch (teacher forcing)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    special = {ids.pad, ids.eos, ids.start}
    low = max(special) + 1 if max(special) + 1 < cfg.src_vocab_size - 1 else 0

    def draw(vocab, shape):
        x = torch.randint(low, vocab, shape, generator=g)
        return x.masked_fill(torch.isin(x, torch.tensor(sorted(special))), low or 1)

    s = min(12, cfg.max_len)
    src = draw(cfg.src_vocab_size, (2, s))
    src[:, -1] = ids.eos
    src[1, s // 2 :] = ids.pad  # a padded row
    tgt = torch.cat([torch.full((2, 1), ids.start), draw(cfg.tgt_vocab_size, (2, s - 1))], 1)
    ours = model.eval()(src, tgt)
    theirs = hf(input_ids=src, attention_mask=(src != ids.pad).long(), decoder_input_ids=tgt)
    return (ours - theirs.logits).abs().max().item()


def portable_tokenizer_config(path: Path, max_length: int) -> None:
    """Make the saved tokenizer load and truncate as ours does, in transformers 4 and 5.

    transformers 5 names the class TokenizersBackend, which 4.x lacks (PreTrainedTokenizerFast
    is the same class in 5); the model takes no token_type_ids; and sources over the positional
    table must be cut (`truncation=True`) where translate.py cuts them, not index past it."""
    meta = json.loads(path.read_text())
    meta["model_max_length"] = max_length
    if meta.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        # a tokenizer.json tokenizer (ours); Marian's and others keep their own classes
        meta.update(
            tokenizer_class="PreTrainedTokenizerFast",
            model_input_names=["input_ids", "attention_mask"],
        )
    for key in ("is_local", "local_files_only"):  # how this copy was loaded, not a setting
        meta.pop(key, None)
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def export(checkpoint: str | Path, out: str | Path, ct2: str | Path | None = None) -> Path:
    """Write the Marian directory for `checkpoint` at `out` (atomically); return its path.
    `ct2`: also convert it to a CTranslate2 model there, before `out` is replaced, so that a
    failed conversion (a full disk) leaves both as they were."""
    from transformers import AutoTokenizer, MarianMTModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    src_dir = resolve(checkpoint)
    model, tokenizer, ids, cfg = load_model(src_dir)
    hf = to_marian(model, ids)
    out = Path(out)
    with staged_output(out) as tmp:  # removed, and `out` left as it was, if anything fails
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        portable_tokenizer_config(
            tmp / "tokenizer_config.json", min(cfg.max_seq_length, model.cfg.max_len)
        )
        (tmp / "training_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        # Check what was written, not what is in memory: load it back as a user would.
        diff = max_logit_difference(model, MarianMTModel.from_pretrained(tmp).eval(), ids)
        if not diff <= PARITY_ATOL:
            raise RuntimeError(f"export: Marian logits differ from ours by {diff:.2e} (> 1e-4)")
        probe = "A dog runs on the grass."
        if AutoTokenizer.from_pretrained(tmp)(probe)["input_ids"] != tokenizer(probe)["input_ids"]:
            raise RuntimeError("export: the saved tokenizer encodes otherwise than ours")
        if ct2 is not None:
            to_ctranslate2(tmp, ct2)
    return out


def _ct2_converters():
    """CTranslate2's converter and its transformers loaders; UserError if it is not installed."""
    try:
        from ctranslate2.converters import TransformersConverter
        from ctranslate2.converters import transformers as ct2
    except ImportError:
        raise UserError("--ct2 needs CTranslate2: pip install ctranslate2") from None
    return TransformersConverter, ct2


def to_ctranslate2(exported: str | Path, out: str | Path) -> Path:
    """Convert an exported directory to a CTranslate2 model at `out` (see the module docstring)."""
    TransformersConverter, ct2 = _ct2_converters()

    class Loader(ct2.MarianMTLoader):
        def _remove_pad_weights(self, spec):  # there is no appended <pad> row to remove
            pass

        def get_vocabulary(self, model, tokenizer):
            return ct2.BartLoader.get_vocabulary(self, model, tokenizer)

        def set_decoder(self, spec, decoder):  # from the start token's embedding, not zeros
            ct2.BartLoader.set_decoder(self, spec, decoder)

        def get_model_spec(self, model):
            spec = super().get_model_spec(model)
            # translate.py never emits padding or the start token, nor does the Hugging Face
            # export (suppress_tokens); CTranslate2 keeps no such setting with a model, so the
            # ban is an output bias (-1e4: far below any logit, and finite in fp16)
            c = model.config
            ids = SpecialIds(pad=c.pad_token_id, eos=c.eos_token_id, start=c.decoder_start_token_id)
            bias = torch.zeros(c.decoder_vocab_size or c.vocab_size)
            bias[banned_ids(ids)] = -1e4
            spec.decoder.projection.bias = bias
            return spec

        def set_config(self, config, model, tokenizer):
            super().set_config(config, model, tokenizer)
            start = model.config.decoder_start_token_id
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(start)

    stock = ct2._MODEL_LOADERS["MarianConfig"]
    ct2._MODEL_LOADERS["MarianConfig"] = Loader()
    try:
        out = Path(out)
        with staged_output(out) as tmp:
            TransformersConverter(str(exported)).convert(str(tmp), force=True)
    finally:
        ct2._MODEL_LOADERS["MarianConfig"] = stock
    return out


def main(argv=None):
    p = ArgumentParser.of_tool(__doc__, "The directory")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir or a run's output_dir")
    p.add_argument(
        "--out",
        "--output",
        required=True,
        help="directory to write (an earlier export there is replaced; not a checkpoint of ours, "
        "a run's folders, or any other folder)",
    )
    p.add_argument("--ct2", help="also convert the export to a CTranslate2 model here")
    args = p.parse_args(argv)
    if args.ct2 is not None:  # "" too: refused as a name, not skipped
        _ct2_converters()  # fail before writing anything
    source = resolve(args.checkpoint)
    check_replaceable(args.out, [source], kind="transformers")
    if args.ct2 is not None:
        check_replaceable(args.ct2, [source, Path(args.out)], "--ct2", kind="ctranslate2")
        if Path(args.out).resolve() in Path(args.ct2).resolve().parents:
            raise UserError(f"--ct2 {args.ct2} is inside --out {args.out}, which is replaced whole")
    out = export(args.checkpoint, args.out, args.ct2)
    print(f"wrote {out} (MarianMTModel; logits checked against the checkpoint)")
    if args.ct2 is not None:
        print(f"wrote {args.ct2} (CTranslate2)")


if __name__ == "__main__":
    cli(main)
