"""A from-scratch encoder-decoder Transformer (Vaswani et al., 2017)."""

from .config import ModelConfig
from .masks import causal_mask, padding_mask, shift_right
from .transformer import Transformer, cache_length, reorder_cache

__all__ = [
    "ModelConfig",
    "Transformer",
    "cache_length",
    "causal_mask",
    "padding_mask",
    "reorder_cache",
    "shift_right",
]
