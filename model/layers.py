"""Encoder and decoder layers (paper §3.1).

Norm placement, decided once here: post-LN as in the paper, x = LayerNorm(x + Dropout(f(x))).
With `pre_norm=True`: x = x + Dropout(f(LayerNorm(x))), and the stacks add a final LayerNorm
(transformer.py); pre-LN trains deep stacks without careful warmup but is not the paper's.
"""

import torch
from torch import nn

from .attention import Cache, MultiHeadAttention
from .config import ModelConfig
from .dropout import Dropout
from .feedforward import FeedForward


class _Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.dropout = Dropout(cfg.dropout)

    def residual(self, x: torch.Tensor, norm: nn.LayerNorm, f) -> torch.Tensor:
        """One sub-layer with its residual connection and LayerNorm."""
        if self.pre_norm:
            return x + self.dropout(f(norm(x)))
        return norm(x + self.dropout(f(x)))


class EncoderLayer(_Layer):
    """Self-attention, then feed-forward."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.act_dropout)
        self.final_layer_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, S, D), src_mask (B, 1, 1, S) -> (B, S, D)."""
        x = self.residual(x, self.self_attn_layer_norm, lambda h: self.self_attn(h, mask=src_mask))
        return self.residual(x, self.final_layer_norm, self.ffn)


class DecoderLayer(_Layer):
    """Causal self-attention, cross-attention over the encoder memory, then feed-forward."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.cross_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.act_dropout)
        self.final_layer_norm = nn.LayerNorm(cfg.d_model)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None,
        cache: dict[str, Cache] | None = None,
    ) -> torch.Tensor:
        """x (B, T, D), memory (B, S, D), src_mask (B, 1, 1, S) -> (B, T, D); memory and
        src_mask may have B / G rows, each serving G rows of x (see MultiHeadAttention).

        Without a cache, position t attends to positions <= t (SDPA's causal mask; padding at
        the end of a target is always in the future of real tokens, so no padding mask is
        needed). With a cache, x is the newest position(s) and the past comes from the cache.
        """
        self_cache = cross_cache = None
        if cache is not None:
            if "self" not in cache:
                raise ValueError("a decoding cache must come from Transformer.new_cache()")
            self_cache, cross_cache = cache["self"], cache["cross"]
            if self_cache.k is not None and x.size(1) > 1:
                raise ValueError("with a filled cache, decode one position at a time")
        # A single new position may attend to the whole cached past: no mask at all.
        causal = x.size(1) > 1
        x = self.residual(
            x,
            self.self_attn_layer_norm,
            lambda h: self.self_attn(h, is_causal=causal, cache=self_cache),
        )
        x = self.residual(
            x,
            self.cross_attn_layer_norm,
            lambda h: self.cross_attn(h, context=memory, mask=src_mask, cache=cross_cache),
        )
        return self.residual(x, self.final_layer_norm, self.ffn)
