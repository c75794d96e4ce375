"""Position-wise feed-forward network (paper §3.3)."""

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import Dropout


class FeedForward(nn.Module):
    """x -> fc2(Dropout(GELU(fc1(x)))). Deviations: GELU instead of the paper's ReLU, and the
    optional dropout on the hidden activations (`act_dropout`: fairseq's activation_dropout,
    tensor2tensor's relu_dropout; 0 = the paper's block).

    The paper's residual dropout on the block's output is applied by the layer, not here.
    """

    def __init__(self, d_model: int, d_ff: int, act_dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.dropout = Dropout(act_dropout)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))
