"""Position-wise feed-forward network (paper §3.3)."""

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    """x -> fc2(GELU(fc1(x))). Deviation: GELU instead of the paper's ReLU.

    Dropout is applied to the block's output by the layer (the paper's residual dropout), not
    inside it, as in the paper.
    """

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        return self.fc2(F.gelu(self.fc1(x)))
