"""Token embedding scaled by sqrt(d_model) plus sinusoidal positions (paper §3.4, §3.5)."""

import math

import torch
from torch import nn

from .dropout import Dropout


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """(max_len, d_model) table of sin/cos at geometric wavelengths 2π … 10000·2π.

    Deviation from the paper: the sines fill the first half of the vector and the cosines the
    second half, instead of interleaving them. It is a fixed permutation of the same features (the
    model cannot tell the difference) and it is the layout Marian uses, so an exported model
    needs no weight shuffling.
    """
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2) / d_model)
    angles = pos * inv_freq  # (max_len, ceil(D/2))
    half = d_model // 2 + d_model % 2
    table = torch.zeros(max_len, d_model)
    table[:, :half] = torch.sin(angles)
    table[:, half:] = torch.cos(angles[:, : d_model // 2])
    return table


class Embedding(nn.Module):
    """ids -> sqrt(d_model)·E[ids] + PE[position], then dropout."""

    def __init__(self, vocab_size: int, d_model: int, max_len: int, dropout: float):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.tokens.weight, std=d_model**-0.5)
        # persistent=False: derived from the config, so checkpoints need not carry it.
        self.register_buffer("pe", sinusoidal_table(max_len, d_model), persistent=False)
        self.scale = math.sqrt(d_model)
        self.dropout = Dropout(dropout)

    def forward(
        self, ids: torch.Tensor, offset: int = 0, word_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, D). `offset` is the position of ids[:, 0] (incremental decoding);
        `word_mask` (B, T, 1) scales each token's vector before positions are added (word dropout).
        """
        t = ids.size(1)
        if offset + t > self.pe.size(0):
            raise ValueError(f"sequence of {offset + t} exceeds max_len {self.pe.size(0)}")
        x = self.tokens(ids)
        if word_mask is not None:
            x = x * word_mask
        return self.dropout(x * self.scale + self.pe[offset : offset + t])
