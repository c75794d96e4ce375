"""Behaviour tests for model/: attention against a reference, masking, causality, batching,
cached decoding, the embedding, weight tying, dropout, and the copy task."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from data import SpecialIds
from model import (
    ModelConfig,
    Transformer,
    attention,
    causal_mask,
    padding_mask,
    reorder_cache,
    shift_right,
)
from model.attention import Cache, MultiHeadAttention
from model.dropout import Dropout
from model.embedding import Embedding, sinusoidal_table
from model.layers import DecoderLayer, EncoderLayer
from translate import greedy

PAD, START = 0, 1  # tiny_cfg has pad_id 0; real tokens are drawn from 3 .. vocab - 1
TOL = {"atol": 1e-5, "rtol": 1e-5}  # fp32, same math in a different order


def pad_batch(seqs: list[list[int]], pad: int = PAD) -> torch.Tensor:
    """Ragged lists of ids -> (B, T) padded at the end."""
    out = torch.full((len(seqs), max(map(len, seqs))), pad)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.tensor(seq)
    return out


def random_seqs(lengths: list[int], vocab: int) -> list[list[int]]:
    return [torch.randint(3, vocab, (n,)).tolist() for n in lengths]


def model_for(cfg: ModelConfig) -> Transformer:
    return Transformer(cfg).eval()


# ---------------------------------------------------------------------------------------------
# Attention against torch's reference implementation


def reference_attention(attn: MultiHeadAttention, d_model: int, n_heads: int):
    """nn.MultiheadAttention holding a copy of `attn`'s weights (q/k/v packed in in_proj)."""
    ref = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(
            torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        )
        ref.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        ref.out_proj.weight.copy_(attn.out_proj.weight)
        ref.out_proj.bias.copy_(attn.out_proj.bias)
    return ref


def test_self_attention_matches_torch_with_key_padding():
    d, h = 16, 4
    attn = MultiHeadAttention(d, h)
    ref = reference_attention(attn, d, h)
    x = torch.randn(3, 6, d)
    ids = pad_batch([[5] * 6, [5] * 4, [5] * 1])
    mask = padding_mask(ids, PAD)  # (B, 1, 1, S), True = may attend
    # nn.MultiheadAttention has the OPPOSITE polarity: key_padding_mask True = masked out.
    expected, _ = ref(x, x, x, key_padding_mask=~mask[:, 0, 0, :], need_weights=False)
    assert_close(attn(x, mask=mask), expected, **TOL)


def test_causal_self_attention_matches_torch():
    d, h = 16, 2
    attn = MultiHeadAttention(d, h)
    ref = reference_attention(attn, d, h)
    x = torch.randn(2, 5, d)
    # Opposite polarity again: for nn.MultiheadAttention a True attn_mask entry is masked out.
    expected, _ = ref(x, x, x, attn_mask=~causal_mask(5), need_weights=False)
    assert_close(attn(x, is_causal=True), expected, **TOL)
    assert_close(attn(x, mask=causal_mask(5)), expected, **TOL)


def test_cross_attention_matches_torch():
    d, h = 16, 4
    attn = MultiHeadAttention(d, h)
    ref = reference_attention(attn, d, h)
    x, memory = torch.randn(2, 3, d), torch.randn(2, 7, d)  # Tq = 3, Tk = 7
    mask = padding_mask(pad_batch([[5] * 7, [5] * 2]), PAD)
    # key_padding_mask: True = masked out, the inverse of our mask.
    expected, _ = ref(x, memory, memory, key_padding_mask=~mask[:, 0, 0, :], need_weights=False)
    assert_close(attn(x, context=memory, mask=mask), expected, **TOL)


def test_beams_sharing_a_memory_row_equal_a_repeated_memory(monkeypatch):
    """x with G rows per memory row (beam search) attends as if the memory were repeated G
    times, cached or not, with padding masked: the rows are grouped in order (row i·G + j)."""
    d, h, g = 16, 4, 3
    attn = MultiHeadAttention(d, h).eval()
    x, memory = torch.randn(2 * g, 1, d), torch.randn(2, 7, d)
    mask = padding_mask(pad_batch([[5] * 7, [5] * 2]), PAD)  # (2, 1, 1, 7)
    expected = attn(x, context=memory.repeat_interleave(g, 0), mask=mask.repeat_interleave(g, 0))
    cache = Cache()
    assert_close(attn(x, context=memory, mask=mask, cache=cache), expected, **TOL)
    assert cache.k.size(0) == 2  # one cached row per sentence, not per beam
    assert_close(attn(x, context=memory, mask=mask, cache=cache), expected, **TOL)
    assert_close(attn(x.view(2, g, d), context=memory, mask=mask).view(2 * g, 1, d), expected)
    # the path GPUs take: SDPA on the grouped shapes (on CPU a written-out softmax(QKᵀ)V)
    sdpa = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)  # noqa: E731
    monkeypatch.setattr(attention, "grouped_attention", sdpa)
    assert_close(attn(x, context=memory, mask=mask), expected, **TOL)
    monkeypatch.undo()
    # a padded key changes nothing it may not see
    memory[1, 2:] = torch.randn(5, d)
    assert_close(attn(x, context=memory, mask=mask)[g:], expected[g:], **TOL)
    with pytest.raises(ValueError, match="cannot share"):
        attn(x[:5], context=memory, mask=mask)


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_autocast_runs_attention_in_fp32(monkeypatch, causal):
    """Under CPU bf16 autocast, SDPA gets fp32 q, k, v (its bf16 CPU kernels are slow), with the
    padding mask or is_causal as given, and the layer still returns what its bf16 projections
    give, close to the fp32 layer, forward and backward."""
    seen, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.dtype, k.dtype, v.dtype, kw["attn_mask"] is None, kw["is_causal"]))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    attn = MultiHeadAttention(16, 4).train()
    x = torch.randn(2, 5, 16)
    kw = (
        {"is_causal": True}
        if causal
        else {"mask": padding_mask(pad_batch([[5] * 5, [5] * 3]), PAD)}
    )
    expected = attn(x, **kw)
    expected.sum().backward()
    reference = attn.q_proj.weight.grad.clone()
    attn.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attn(x, **kw)
    f32 = torch.float32
    assert seen == [(f32, f32, f32, causal, causal)] * 2 and got.dtype == torch.bfloat16
    assert_close(got.float(), expected, atol=3e-2, rtol=3e-2)
    got.float().sum().backward()
    assert_close(attn.q_proj.weight.grad, reference, atol=3e-2, rtol=3e-2)


def test_cpu_autocast_runs_the_beams_grouped_attention_in_fp32(monkeypatch):
    """Beam search's grouped attention (a written-out softmax) under CPU bf16 autocast gets
    fp32 q, k, v as SDPA does: a softmax in bf16 keeps 3 significant digits."""
    seen, real = [], attention.grouped_attention
    spy = lambda q, k, v, m: seen.append((q.dtype, k.dtype, v.dtype)) or real(q, k, v, m)  # noqa: E731
    monkeypatch.setattr(attention, "grouped_attention", spy)
    attn = MultiHeadAttention(16, 4).eval()
    x, memory = torch.randn(6, 1, 16), torch.randn(2, 7, 16)
    expected = attn(x, context=memory.repeat_interleave(3, 0))  # SDPA: not grouped
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attn(x, context=memory)
    assert seen == [(torch.float32,) * 3] and got.dtype == torch.bfloat16
    assert_close(got.float(), expected, atol=3e-2, rtol=3e-2)


# ---------------------------------------------------------------------------------------------
# Norm placement (layers.py): post-LN x = LN(x + f(x)); pre-LN x = x + f(LN(x))


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_layer_norm_placement(tiny_cfg, pre_norm):
    layer = EncoderLayer(dataclasses.replace(tiny_cfg, pre_norm=pre_norm)).eval()
    for p in layer.parameters():  # LayerNorm starts as the identity affine map: make it not
        nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 5, tiny_cfg.d_model)
    mask = padding_mask(pad_batch([[5] * 5, [5] * 3]), PAD)
    attn, norm1 = (lambda h: layer.self_attn(h, mask=mask)), layer.self_attn_layer_norm
    ffn, norm2 = layer.ffn, layer.final_layer_norm
    if pre_norm:
        h = x + attn(norm1(x))
        expected = h + ffn(norm2(h))
    else:
        h = norm1(x + attn(x))
        expected = norm2(h + ffn(h))
    assert_close(layer(x, mask), expected)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_layer_norm_placement(tiny_cfg, pre_norm):
    # Each of the three sub-layers must use its own LayerNorm: with fresh weights every LayerNorm
    # is the identity, so they are told apart only after randomising them.
    layer = DecoderLayer(dataclasses.replace(tiny_cfg, pre_norm=pre_norm)).eval()
    for p in layer.parameters():
        nn.init.normal_(p, std=0.5)
    x, memory = torch.randn(2, 4, tiny_cfg.d_model), torch.randn(2, 5, tiny_cfg.d_model)
    mask = padding_mask(pad_batch([[5] * 5, [5] * 3]), PAD)
    subs = [
        (layer.self_attn_layer_norm, lambda h: layer.self_attn(h, is_causal=True)),
        (layer.cross_attn_layer_norm, lambda h: layer.cross_attn(h, context=memory, mask=mask)),
        (layer.final_layer_norm, layer.ffn),
    ]
    expected = x
    for norm, f in subs:
        expected = expected + f(norm(expected)) if pre_norm else norm(expected + f(expected))
    assert_close(layer(x, memory, mask), expected)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_residual_dropout_acts_on_every_sub_layer_output(tiny_cfg, pre_norm):
    # Paper §5.4: dropout on each sub-layer's output before the residual add. At p = 1 every
    # sub-layer's branch is zeroed, so a layer reduces to its LayerNorms (post-LN) or to the
    # identity (pre-LN); a sub-layer without the dropout would add its output.
    cfg = dataclasses.replace(tiny_cfg, pre_norm=pre_norm, dropout=1.0)
    enc, dec = EncoderLayer(cfg).train(), DecoderLayer(cfg).train()
    for p in [*enc.parameters(), *dec.parameters()]:
        nn.init.normal_(p, std=0.5)
    x, memory = torch.randn(2, 4, cfg.d_model), torch.randn(2, 5, cfg.d_model)
    with torch.no_grad():
        if pre_norm:
            assert_close(enc(x, None), x)
            assert_close(dec(x, memory, None), x)
        else:
            assert_close(enc(x, None), enc.final_layer_norm(enc.self_attn_layer_norm(x)))
            norms = (dec.self_attn_layer_norm, dec.cross_attn_layer_norm, dec.final_layer_norm)
            assert_close(dec(x, memory, None), norms[2](norms[1](norms[0](x))))


def test_embedding_dropout_acts_on_the_sum_of_tokens_and_positions(tiny_cfg):
    # Paper §5.4: dropout on the sums of the embeddings and the positional encodings. At p = 0.5
    # each element is 0 or twice the sum; at p = 1 nothing (neither token nor position) is left.
    ids = torch.randint(3, tiny_cfg.src_vocab_size, (2, 6))
    emb = Embedding(tiny_cfg.src_vocab_size, tiny_cfg.d_model, 16, dropout=0.5).train()
    full = emb.tokens(ids) * math.sqrt(tiny_cfg.d_model) + emb.pe[:6]
    out = emb(ids)
    dropped = out == 0
    assert 0 < dropped.float().mean() < 1
    assert_close(out[~dropped], 2 * full[~dropped])
    emb.dropout.p = 1.0
    assert torch.count_nonzero(emb(ids)) == 0


def test_initialisation_xavier_linears_zero_biases_normal_embeddings():
    # Xavier-uniform weight matrices with zero biases (as fairseq's and Marian's transformers),
    # LayerNorm as the identity, and embeddings N(0, d_model^-1/2) so that the √d_model scale
    # gives the token vectors unit variance per element. Large enough for the spreads to settle.
    d, d_ff, vocab = 128, 512, 4000
    cfg = ModelConfig(
        src_vocab_size=vocab,
        tgt_vocab_size=vocab,
        pad_id=0,
        d_model=d,
        n_heads=4,
        d_ff=d_ff,
        n_layers=1,
    )
    model = Transformer(cfg)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not model.out_proj]
    assert len(linears) == 6 + 10  # encoder 4 + 2, decoder 8 + 2 (out_proj is the embedding)
    for m in linears:
        fan_out, fan_in = m.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert m.weight.abs().max() <= bound
        assert abs(m.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.05
        assert torch.count_nonzero(m.bias) == 0
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0
    assert abs(model.src_embed.tokens.weight.std().item() * math.sqrt(d) - 1) < 0.02


def test_pre_ln_stacks_end_with_a_layer_norm(tiny_cfg):
    # pre-LN layers leave the residual stream unnormalised, so each stack ends with a LayerNorm
    # (the encoder's memory and what the output layer reads): with gain g and bias b, every
    # position's (h - b) / g has mean 0 and variance 1 over d_model
    model = model_for(dataclasses.replace(tiny_cfg, pre_norm=True))
    for stack in (model.encoder, model.decoder):
        nn.init.uniform_(stack.final_norm.weight, 0.5, 2.0)
        nn.init.normal_(stack.final_norm.bias)
    seen = []
    model.out_proj.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    src = pad_batch(random_seqs([5, 5], 24))
    memory = model.encode(src, None)
    model.decode(pad_batch(random_seqs([4, 4], 24)), memory, None)
    for h, stack in ((memory, model.encoder), (seen[0], model.decoder)):
        z = (h - stack.final_norm.bias) / stack.final_norm.weight
        assert_close(z.mean(-1), torch.zeros(z.shape[:-1]), atol=1e-4, rtol=0)
        assert_close(z.var(-1, unbiased=False), torch.ones(z.shape[:-1]), atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------
# Masking, causality, batching


@pytest.mark.parametrize("pre_norm", [False, True])
def test_padded_source_positions_cannot_change_outputs(tiny_cfg, pre_norm):
    model = model_for(dataclasses.replace(tiny_cfg, pre_norm=pre_norm))
    src = pad_batch(random_seqs([6, 3, 5], tiny_cfg.src_vocab_size))
    src_mask = model.src_mask(src)
    noisy = src.clone()  # new tokens where src is padding, but keep the original mask
    is_pad = src == PAD
    noisy[is_pad] = torch.randint(3, tiny_cfg.src_vocab_size, (int(is_pad.sum()),))
    memory, noisy_memory = model.encode(src, src_mask), model.encode(noisy, src_mask)
    assert not torch.allclose(memory[is_pad], noisy_memory[is_pad])  # the noise reached the model
    assert_close(noisy_memory[~is_pad], memory[~is_pad])

    tgt = pad_batch(random_seqs([4, 4, 4], tiny_cfg.tgt_vocab_size))
    assert_close(model.decode(tgt, noisy_memory, src_mask), model.decode(tgt, memory, src_mask))


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_is_causal(tiny_cfg, pre_norm):
    model = model_for(dataclasses.replace(tiny_cfg, pre_norm=pre_norm))
    vocab = tiny_cfg.tgt_vocab_size
    src = torch.randint(3, vocab, (2, 5))
    tgt = torch.randint(3, vocab, (2, 6))
    logits = model(src, tgt)
    for t in range(tgt.size(1) - 1):
        changed = tgt.clone()
        changed[:, t + 1 :] = (tgt[:, t + 1 :] - 3 + 1) % (vocab - 3) + 3  # every later token
        new_logits = model(src, changed)
        assert_close(new_logits[:, : t + 1], logits[:, : t + 1])
        assert not torch.allclose(new_logits[:, t + 1 :], logits[:, t + 1 :])


@pytest.mark.parametrize("pre_norm", [False, True])
def test_padded_batch_equals_per_sentence_runs(tiny_cfg, pre_norm):
    model = model_for(dataclasses.replace(tiny_cfg, pre_norm=pre_norm))
    srcs = random_seqs([4, 7, 2], tiny_cfg.src_vocab_size)
    tgts = random_seqs([6, 3, 5], tiny_cfg.tgt_vocab_size)
    batch_logits = model(pad_batch(srcs), pad_batch(tgts))
    for row, (src, tgt) in enumerate(zip(srcs, tgts)):
        alone = model(torch.tensor([src]), torch.tensor([tgt]))[0]
        assert_close(batch_logits[row, : len(tgt)], alone, **TOL)


# ---------------------------------------------------------------------------------------------
# Incremental decoding


def copied(x):
    """x with its dicts, lists, tuples and dataclasses copied around the same other objects: what
    FSDP hands a wrapped module when it casts or moves the inputs (bf16 mixed precision, CUDA)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        fields = {f.name: copied(getattr(x, f.name)) for f in dataclasses.fields(x)}
        return dataclasses.replace(x, **fields)
    if isinstance(x, dict):
        return {k: copied(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(copied(v) for v in x)
    return x


@pytest.mark.parametrize("copy_inputs", [False, True])  # True: as FSDP hands them over
@pytest.mark.parametrize(("n_layers", "n_dec_layers"), [(2, None), (3, 1)])
def test_cached_decoding_equals_teacher_forcing(tiny_cfg, n_layers, n_dec_layers, copy_inputs):
    tiny_cfg = dataclasses.replace(tiny_cfg, n_layers=n_layers, n_dec_layers=n_dec_layers)
    model = model_for(tiny_cfg)
    assert len(model.encoder.layers) == n_layers
    assert len(model.decoder.layers) == len(model.new_cache()) == (n_dec_layers or n_layers)
    inputs = copied if copy_inputs else lambda x: x  # the root's inputs, at every call
    if copy_inputs:  # and every decoder layer's
        for layer in model.decoder.layers:
            layer.register_forward_pre_hook(lambda module, args: copied(args))
    src = pad_batch(random_seqs([5, 2, 7], tiny_cfg.src_vocab_size))
    tgt = torch.randint(3, tiny_cfg.tgt_vocab_size, (3, 6))
    src_mask = model.src_mask(src)
    memory = model.encode(src, src_mask)
    full = model.decode(tgt, memory, src_mask)
    cache = model.new_cache()
    steps = [
        model.decode(tgt[:, i : i + 1], memory, src_mask, inputs(cache)) for i in range(tgt.size(1))
    ]
    assert_close(torch.cat(steps, dim=1), full, **TOL)


@torch.no_grad()
def greedy_uncached(model: Transformer, src, ids: SpecialIds, max_new: int) -> torch.Tensor:
    """Reference greedy search: re-decode the whole prefix every step, no cache."""
    src_mask = model.src_mask(src)
    memory = model.encode(src, src_mask)
    out = torch.full((src.size(0), 1), ids.start)
    done = torch.zeros(src.size(0), dtype=torch.bool)
    for _ in range(max_new):
        next_id = model.decode(out, memory, src_mask)[:, -1].argmax(-1)
        next_id = torch.where(done, ids.pad, next_id)
        out = torch.cat([out, next_id[:, None]], dim=1)
        done |= next_id == ids.eos
        if done.all():
            break
    return out[:, 1:]


def test_greedy_equals_uncached_greedy(tiny_cfg):
    model = model_for(tiny_cfg)
    src = pad_batch(random_seqs([5, 3, 6, 4], tiny_cfg.src_vocab_size))
    never = SpecialIds(pad=PAD, eos=-1, start=START)
    free_run = greedy_uncached(model, src, never, 10)
    # An untrained model has no real eos; call one of row 0's outputs eos so that decoding has
    # finished and unfinished rows (and pad after eos) to agree on.
    ids = SpecialIds(pad=PAD, eos=int(free_run[0, 3]), start=START)
    expected = greedy_uncached(model, src, ids, 10)
    assert greedy(model, src, ids, 10).tolist() == expected.tolist()
    first_eos = expected[0].tolist().index(ids.eos)
    assert (expected[0, first_eos + 1 :] == PAD).all()


def test_forward_does_not_go_through_wrapped_encode_and_decode(tiny_cfg):
    # train.py has FSDP wrap the instance's encode/decode for decoding; called inside forward,
    # the wrappers would all-gather the weights again on every training step
    model = model_for(tiny_cfg)
    src = pad_batch(random_seqs([5, 3], tiny_cfg.src_vocab_size))
    tgt = pad_batch(random_seqs([4, 6], tiny_cfg.tgt_vocab_size))
    expected = model(src, tgt)

    def wrapped(*args, **kwargs):
        raise AssertionError("forward called the instance's wrapper")

    model.encode, model.decode = wrapped, wrapped  # what register_fsdp_forward_method does
    torch.testing.assert_close(model(src, tgt), expected, rtol=0, atol=0)


def test_greedy_stops_when_every_row_has_eos(tiny_cfg):
    model = model_for(tiny_cfg)
    src = torch.randint(3, tiny_cfg.src_vocab_size, (1, 5))
    free_run = greedy(model, src, SpecialIds(pad=PAD, eos=-1, start=START), 10)[0].tolist()
    eos = free_run[3]
    out = greedy(model, src, SpecialIds(pad=PAD, eos=eos, start=START), 10)[0].tolist()
    assert out == free_run[: free_run.index(eos) + 1]


def test_reorder_cache_selects_rows(tiny_cfg):
    model = model_for(tiny_cfg)
    src = pad_batch(random_seqs([5, 2, 7], tiny_cfg.src_vocab_size))
    tgt = torch.randint(3, tiny_cfg.tgt_vocab_size, (3, 4))
    index = torch.tensor([2, 0, 0])  # select, drop and repeat rows, as beam search does

    def run(src, tgt, cache):
        src_mask = model.src_mask(src)
        memory = model.encode(src, src_mask)
        for i in range(tgt.size(1) - 1):
            model.decode(tgt[:, i : i + 1], memory, src_mask, cache)
        return memory, src_mask

    cache = model.new_cache()
    memory, src_mask = run(src, tgt, cache)
    reordered = reorder_cache(cache, index, cross_index=index)
    got = model.decode(tgt[index, -1:], memory[index], src_mask[index], reordered)

    fresh = model.new_cache()
    memory, src_mask = run(src[index], tgt[index], fresh)
    expected = model.decode(tgt[index, -1:], memory, src_mask, fresh)
    assert_close(got, expected, **TOL)

    # cross_index=None (beam search while no sentence leaves): only self-attention rows move
    kept = reorder_cache(cache, index, cross_index=None)
    for old, new in zip(cache, kept, strict=True):
        assert new["cross"] is old["cross"]
        assert torch.equal(new["self"].k, old["self"].k[index])


# ---------------------------------------------------------------------------------------------
# Embedding


def test_embedding_is_scaled_tokens_plus_positions():
    d, max_len = 16, 20
    emb = Embedding(30, d, max_len, dropout=0.0)
    ids = torch.randint(0, 30, (2, 7))
    expected = emb.tokens(ids) * math.sqrt(d) + sinusoidal_table(max_len, d)[:7]
    assert_close(emb(ids), expected)
    # With an offset (incremental decoding), positions start there.
    assert_close(emb(ids[:, :1], offset=4), emb.tokens(ids[:, :1]) * 4.0 + emb.pe[4])


def test_embedding_rejects_positions_past_max_len():
    emb = Embedding(30, 16, max_len=8, dropout=0.0)
    with pytest.raises(ValueError, match="max_len"):
        emb(torch.zeros(1, 9, dtype=torch.long))


def test_sinusoidal_table_values():
    d = 16
    table = sinusoidal_table(50, d)
    assert table.shape == (50, d)
    # Position 0: sin(0) = 0 in the first half, cos(0) = 1 in the second.
    assert_close(table[0], torch.cat([torch.zeros(d // 2), torch.ones(d // 2)]))
    assert table.abs().max() <= 1
    # Paper §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same angle); here
    # pair i's sine sits in column i and its cosine in column d/2 + i.
    pos, i = 7, 3
    angle = pos / 10000 ** (2 * i / d)
    assert table[pos, i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[pos, d // 2 + i].item() == pytest.approx(math.cos(angle), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Parameters and config


def expected_parameter_count(cfg: ModelConfig) -> int:
    d, f, v = cfg.d_model, cfg.d_ff, cfg.src_vocab_size
    attn = 4 * (d * d + d)
    ffn = d * f + f + f * d + d
    norm = 2 * d
    encoder_layer = attn + ffn + 2 * norm
    decoder_layer = 2 * attn + ffn + 3 * norm
    final_norms = 2 * norm if cfg.pre_norm else 0
    embeddings = v * d if cfg.share_embeddings else (v + cfg.tgt_vocab_size) * d
    # out_proj has no bias and reuses the target embedding: no parameters of its own.
    return embeddings + cfg.n_layers * (encoder_layer + decoder_layer) + final_norms


@pytest.mark.parametrize(
    "overrides",
    [{}, {"pre_norm": True}, {"share_embeddings": False, "tgt_vocab_size": 30}],
)
def test_parameter_count_matches_hand_computation(tiny_cfg, overrides):
    cfg = dataclasses.replace(tiny_cfg, **overrides)
    model = Transformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == expected_parameter_count(cfg)


def test_shared_embeddings_are_one_parameter(tiny_cfg):
    model = Transformer(tiny_cfg)
    weight = model.src_embed.tokens.weight
    assert model.tgt_embed.tokens.weight is weight
    assert model.out_proj.weight is weight


def test_unshared_embeddings_still_tie_the_output(tiny_cfg):
    model = Transformer(dataclasses.replace(tiny_cfg, share_embeddings=False, tgt_vocab_size=30))
    assert model.src_embed.tokens.weight is not model.tgt_embed.tokens.weight
    assert model.out_proj.weight is model.tgt_embed.tokens.weight
    assert model.out_proj.weight.shape == (30, tiny_cfg.d_model)


def test_shift_right_prepends_the_start_token_and_turns_ignored_labels_into_padding():
    # labels in transformers' convention mark ignored positions -100: never an embedding index
    assert shift_right(torch.tensor([[5, 6, -100]]), 1, 0).tolist() == [[1, 5, 6]]
    assert shift_right(torch.tensor([[5, -100, -100]]), 1, 0).tolist() == [[1, 5, 0]]
    assert shift_right(torch.tensor([[5, 6, 7], [8, 0, 0]]), 1, 0).tolist() == [
        [1, 5, 6],
        [1, 8, 0],
    ]


def test_model_config_rejects_heads_not_dividing_d_model():
    with pytest.raises(ValueError, match=r"n_heads \(3\).*d_model \(16\)"):
        ModelConfig(src_vocab_size=20, tgt_vocab_size=20, pad_id=0, d_model=16, n_heads=3)


@pytest.mark.parametrize("n_dec_layers", [0, -1])
def test_model_config_rejects_a_decoder_without_layers(n_dec_layers):
    # 0 once meant n_layers and -1 built a decoder of no layers, whose cache never grew
    with pytest.raises(ValueError, match=rf"n_dec_layers must be >= 1 or None: {n_dec_layers}"):
        ModelConfig(20, 20, pad_id=0, d_model=16, n_heads=2, n_dec_layers=n_dec_layers)


def test_grouped_attention_gives_a_row_with_nothing_to_see_zeros_as_sdpa_does():
    q, k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    mask = torch.tensor([[True] * 3 + [False] * 2, [False] * 5]).view(2, 1, 1, 5)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(expected[1], torch.zeros(2, 3, 4))  # torch's behaviour, the reference
    assert_close(attention.grouped_attention(q, k, v, mask), expected, **TOL)


def test_model_config_rejects_shared_embeddings_with_two_vocabularies():
    with pytest.raises(ValueError, match="share_embeddings"):
        ModelConfig(src_vocab_size=20, tgt_vocab_size=21, pad_id=0, d_model=16, n_heads=2)


@pytest.mark.parametrize("kind", ["dropout", "attn_dropout", "act_dropout", "word_dropout"])
def test_each_dropout_acts_alone_and_only_in_train_mode(tiny_cfg, kind, monkeypatch):
    off = dict(dropout=0.0, attn_dropout=0.0, act_dropout=0.0, word_dropout=0.0)
    model = Transformer(dataclasses.replace(tiny_cfg, **{**off, kind: 0.5}))
    src = torch.randint(3, tiny_cfg.src_vocab_size, (2, 5))
    tgt = torch.randint(3, tiny_cfg.tgt_vocab_size, (2, 4))
    rates, sdpa = [], F.scaled_dot_product_attention  # attention's dropout goes to SDPA

    def spy(*args, dropout_p=0.0, **kw):
        rates.append(dropout_p)
        return sdpa(*args, dropout_p=dropout_p, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model.train()
    assert not torch.allclose(model(src, tgt), model(src, tgt))
    assert set(rates) == {0.5 if kind == "attn_dropout" else 0.0}  # only attn_dropout's there
    model.eval()  # exact: the same weights without any dropout give the same output
    plain = Transformer(dataclasses.replace(tiny_cfg, **off)).eval()
    plain.load_state_dict(model.state_dict())
    assert_close(model(src, tgt), plain(src, tgt), atol=0, rtol=0)


def test_act_dropout_masks_the_feed_forward_hidden_units_in_train_mode_only(tiny_cfg):
    # The mask is drawn over the hidden units (B, T, d_ff), between GELU and fc2: redrawn from
    # the same seed, it gives the block's output exactly. The residual dropout (cfg.dropout)
    # belongs to the layer, outside the block.
    cfg = dataclasses.replace(tiny_cfg, dropout=0.0, act_dropout=0.5)
    model = Transformer(cfg)
    ffn = model.encoder.layers[0].ffn
    x = torch.randn(2, 5, cfg.d_model)
    ffn.train()
    torch.manual_seed(0)
    keep = torch.rand(2, 5, cfg.d_ff) >= 0.5
    torch.manual_seed(0)
    y = ffn(x)
    hidden = F.gelu(ffn.fc1(x)) * keep / 0.5
    assert_close(y, F.linear(hidden, ffn.fc2.weight, ffn.fc2.bias))
    assert not torch.allclose(y, ffn.eval()(x))
    assert model.decoder.layers[0].ffn.dropout.p == 0.5
    # in eval mode the model equals one built without act_dropout, with the same weights
    plain = Transformer(dataclasses.replace(cfg, act_dropout=0.0))
    plain.load_state_dict(model.state_dict())
    src = torch.randint(3, cfg.src_vocab_size, (2, 5))
    tgt = torch.randint(3, cfg.tgt_vocab_size, (2, 4))
    assert_close(model.eval()(src, tgt), plain.eval()(src, tgt), atol=0, rtol=0)


def test_word_dropout_drops_whole_source_tokens_in_train_mode_only(tiny_cfg):
    # What reaches the encoder, less the positions, is per source token either all zeros or its
    # embedding scaled by 1/(1-p); the decoder's input (the same shared table) is never dropped.
    cfg = dataclasses.replace(tiny_cfg, word_dropout=0.5)
    model = Transformer(cfg).train()
    seen = {}
    model.encoder.register_forward_pre_hook(lambda m, a: seen.__setitem__("enc", a[0]))
    model.decoder.register_forward_pre_hook(lambda m, a: seen.__setitem__("dec", a[0]))
    src = torch.randint(3, cfg.src_vocab_size, (8, 50))
    tgt = torch.randint(3, cfg.tgt_vocab_size, (8, 50))
    model(src, tgt)
    emb, scale = model.src_embed, math.sqrt(cfg.d_model)
    words = (seen["enc"] - emb.pe[:50]) / scale  # (B, S, D)
    dropped = words.abs().amax(-1) < 1e-6  # (B, S)
    assert_close(words[~dropped], emb.tokens(src)[~dropped] / 0.5)
    assert 0.35 < dropped.float().mean() < 0.65  # 400 tokens at p = 0.5
    assert dropped.any(1).all() and (~dropped).any(1).all()  # not whole sentences
    assert (dropped != dropped[:1]).any()  # drawn per sentence, not one mask for the batch
    assert_close(seen["dec"], emb.tokens(tgt) * scale + emb.pe[:50])
    # in eval mode the model equals one built without word_dropout, with the same weights
    plain = Transformer(dataclasses.replace(cfg, word_dropout=0.0))
    plain.load_state_dict(model.state_dict())
    assert_close(model.eval()(src, tgt), plain.eval()(src, tgt), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_cpu_dropout_keeps_one_minus_p_scaled_and_gradients_follow_the_mask(p, dtype):
    x = torch.ones(200_000, dtype=dtype, requires_grad=True)
    y = Dropout(p).train()(x)
    assert y.dtype == dtype
    kept = y != 0
    # the kept fraction is binomial: std sqrt(p(1-p)/n) <= 0.0012, so 0.006 is 5 sigma
    assert abs(kept.float().mean().item() - (1 - p)) < 0.006
    assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    y.sum().backward()
    assert_close(x.grad, y.detach())  # d(x * mask)/dx = mask: zero where dropped


def test_cpu_dropout_mask_is_uniforms_at_least_p_drawn_in_fp32():
    # the fast path itself: the same seed gives the mask U >= p with U ~ U[0, 1) in fp32
    x = torch.randn(64, 32)
    torch.manual_seed(0)
    keep = torch.rand(x.shape) >= 0.3
    torch.manual_seed(0)
    y = Dropout(0.3).train()(x.bfloat16())
    assert torch.equal(y != 0, keep & (x.bfloat16() != 0))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        Dropout(-0.1)


def test_dropout_edge_cases_and_seeding():
    x = torch.randn(4, 8)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    torch.manual_seed(3)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(3)
    assert torch.equal(a, Dropout(0.5).train()(x))


# ---------------------------------------------------------------------------------------------
# The copy task (the Annotated Transformer's first sanity check)


def copy_batch(n: int, vocab: int, eos: int, g: torch.Generator) -> torch.Tensor:
    """n random sequences of 5-8 symbols from 3 .. vocab - 1, each ended by eos, padded."""
    lengths = torch.randint(5, 9, (n,), generator=g).tolist()
    seqs = [torch.randint(3, vocab, (k,), generator=g).tolist() + [eos] for k in lengths]
    return pad_batch(seqs)


def test_copy_task_overfits():
    vocab, eos, steps = 12, 2, 250
    cfg = ModelConfig(
        src_vocab_size=vocab, tgt_vocab_size=vocab, pad_id=PAD, d_model=32, n_heads=4, d_ff=64,
        n_layers=2, dropout=0.0, max_len=16,
    )  # fmt: skip
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.9, 0.98))
    # 20 warmup steps, then linear decay to 0: without the decay, post-LN at this LR sometimes
    # spikes late and ends far from converged.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / 20, (steps - s) / (steps - 20))
    )
    for _ in range(steps):
        labels = copy_batch(64, vocab, eos, g)
        logits = model(labels, shift_right(labels, START, PAD))
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()

    model.eval()
    held_out = copy_batch(100, vocab, eos, torch.Generator().manual_seed(1))
    out = greedy(model, held_out, SpecialIds(pad=PAD, eos=eos, start=START), max_new=12)
    exact = 0
    for src, hyp in zip(held_out.tolist(), out.tolist()):
        n = src.index(eos) + 1
        exact += hyp[:n] == src[:n]
    assert exact >= 90, f"only {exact}/100 held-out sequences copied exactly (loss {loss:.3f})"
