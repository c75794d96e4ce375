"""All attention masks are built here, but for the decoder's causal mask in training and
one-pass decoding: SDPA builds that one from is_causal=True (layers.py), which lets it pick a
flash kernel; causal_mask() is its reference, for the tests.

Polarity: boolean, True = "may attend", broadcastable to (B, H, Tq, Tk). This is what
`F.scaled_dot_product_attention` takes. `nn.MultiheadAttention` uses the OPPOSITE polarity
(True = "masked out"): invert before comparing with it.

    causal_mask(4)          padding_mask([[a, b, <pad>]])
    q\\k  0 1 2 3            keys:    a  b  <pad>
     0   1 0 0 0            any q:   1  1   0
     1   1 1 0 0
     2   1 1 1 0
     3   1 1 1 1
"""

import torch


def padding_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, S) token ids -> (B, 1, 1, S) bool, False on padding keys."""
    return (ids != pad_id)[:, None, None, :]


def causal_mask(t: int, device=None) -> torch.Tensor:
    """(T, T) bool, True on and below the diagonal: position i sees positions <= i."""
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder input from labels: prepend the start token, drop the last position.

    (B, T) -> (B, T). Padding in the labels stays padding (an ignored label of -100 too).
    """
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 0] = start_id
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_id)
