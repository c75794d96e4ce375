"""Dropout (paper §5.4, P_drop), with a faster mask on CPU.

Same distribution as nn.Dropout: each element is kept with probability 1 - p and scaled by
1 / (1 - p). On CPU torch draws the mask with `bernoulli_`, which measured 2.5x slower than
drawing uniforms and comparing (forward + backward of a (128, 16, 256) fp32 tensor, 2 threads:
5.9 ms vs 2.3 ms): the masks took 10.5 % of a Multi30k-sized training step, and this made
the step 4-9 % faster. P(U >= p) = 1 - p for U ~ U[0, 1), so the comparison is exact. On GPUs
F.dropout is one fused kernel and is used unchanged.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.p >= 1.0:
            return F.dropout(x, self.p, training=True)
        # Uniforms in fp32 whatever x's dtype (a bf16 uniform would round p); the mask holds
        # 0 or 1/(1-p) in x's dtype: one multiply forward and one backward.
        keep = torch.rand(x.shape, device=x.device) >= self.p
        mask = keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
