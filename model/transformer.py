"""The encoder-decoder Transformer (paper §3): encode once, decode step by step or in one pass."""

import torch
from torch import nn

from .attention import Cache
from .config import ModelConfig
from .dropout import Dropout
from .embedding import Embedding
from .layers import DecoderLayer, EncoderLayer
from .masks import padding_mask

# Decoding state: one {"self": Cache, "cross": Cache} per decoder layer. The dicts may be copied
# on the way into a layer (see Cache); the Cache objects in them are what the layers fill.
DecoderCache = list[dict[str, Cache]]


class Encoder(nn.Module):
    """N encoder layers (+ a final LayerNorm when pre-LN)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_mask)
        return self.final_norm(x)


class Decoder(nn.Module):
    """N decoder layers, or n_dec_layers (+ a final LayerNorm when pre-LN)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()

    def forward(self, x, memory, src_mask, cache: DecoderCache | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, src_mask, None if cache is None else cache[i])
        return self.final_norm(x)


class Transformer(nn.Module):
    """src ids (B, S), tgt ids (B, T) -> logits (B, T, V_tgt)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.src_embed = Embedding(cfg.src_vocab_size, cfg.d_model, cfg.max_len, cfg.dropout)
        if cfg.share_embeddings:
            self.tgt_embed = self.src_embed
        else:
            self.tgt_embed = Embedding(cfg.tgt_vocab_size, cfg.d_model, cfg.max_len, cfg.dropout)
        # Deviation (not in the paper, off by default): in training, drop whole source tokens.
        self.word_dropout = Dropout(cfg.word_dropout)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.out_proj = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self._init_weights()
        # The pre-softmax projection shares the target embedding matrix (paper §3.4).
        self.out_proj.weight = self.tgt_embed.tokens.weight

    def _init_weights(self):
        for name, p in self.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith(".bias") and "layer_norm" not in name:
                nn.init.zeros_(p)

    def src_mask(self, src: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, 1, 1, S) bool, True = may attend."""
        return padding_mask(src, self.cfg.pad_id)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None) -> torch.Tensor:
        """src (B, S), src_mask (B, 1, 1, S) or None (no padding) -> memory (B, S, D)."""
        word_mask = None
        if self.training and self.word_dropout.p > 0:
            # One draw per sentence and token (as Nematus's dropout_source), 0 or 1/(1-p) over
            # the whole embedding vector: a dropped token keeps only its position, so the
            # encoder must infer the word from context. fp32 ones: no read of a parameter FSDP
            # may hold sharded here.
            word_mask = self.word_dropout(torch.ones(*src.shape, 1, device=src.device))
        return self.encoder(self.src_embed(src, word_mask=word_mask), src_mask)

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None,
        cache: DecoderCache | None = None,
    ) -> torch.Tensor:
        """tgt (B, T), memory (B, S, D), src_mask (B, 1, 1, S) or None -> logits (B, T, V).

        With a `cache` (from `new_cache`), tgt holds only the positions not decoded yet. Memory
        and src_mask may hold one row per G rows of tgt (beam search: one per sentence, K beams).
        """
        offset = cache_length(cache)
        return self.out_proj(self.decoder(self.tgt_embed(tgt, offset), memory, src_mask, cache))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """src (B, S), tgt (B, T) decoder input -> logits (B, T, V) (teacher forcing)."""
        src_mask = self.src_mask(src)
        # The class's encode/decode, not the instance's: train.py lets FSDP wrap those for
        # decoding, and a wrapped call inside forward gathers the weights once more (measured
        # with FSDP2: the embeddings 4 times a step instead of 2, the layers 9 instead of 8).
        cls = type(self)
        return cls.decode(self, tgt, cls.encode(self, src, src_mask), src_mask)

    def new_cache(self) -> DecoderCache:
        return [{"self": Cache(), "cross": Cache()} for _ in self.decoder.layers]


def cache_length(cache: DecoderCache | None) -> int:
    """Number of target positions already decoded into `cache`."""
    if not cache or "self" not in cache[0] or cache[0]["self"].k is None:
        return 0
    return cache[0]["self"].k.size(2)


def reorder_cache(
    cache: DecoderCache, index: torch.Tensor, *, cross_index: torch.Tensor | None
) -> DecoderCache:
    """Select (and repeat) batch rows of every cached tensor, e.g. for beam search.

    Self-attention rows (and any other part) follow `index`; cross-attention rows follow
    `cross_index`, and stay as they are when it is None: beam search keeps one cross-attention
    row per sentence, shared by its beams, and moves them only when a sentence leaves.
    """

    def select(part: str, c: Cache) -> Cache:
        rows = cross_index if part == "cross" else index
        if rows is None:
            return c
        return Cache(*(None if t is None else t.index_select(0, rows) for t in (c.k, c.v)))

    return [{part: select(part, c) for part, c in layer.items()} for layer in cache]
