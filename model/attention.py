"""Multi-head attention (paper §3.2), one class for self- and cross-attention.

Shape legend:
    B batch, S source length, T target length, Tq query length, Tk key length,
    D d_model, H heads, Dh head dim (D // H).

Masks are boolean, True = may attend (see masks.py), broadcastable to (B, H, Tq, Tk).
"""

import torch
import torch.nn.functional as F
from torch import nn


class Cache:
    """One attention's decoding cache: keys and values (B, H, Tk, Dh), None until first filled.
    Self-attention appends one step per call; cross-attention fills it once from the encoder
    memory and reuses it.

    A plain object, not a dict: FSDP rebuilds the dicts, lists and tuples passed to a wrapped
    module when it casts or moves the inputs (its bf16 mixed precision, a CUDA device), so keys
    written into such a dict land in a copy and the next step starts from nothing. That is how
    FSDP-trained runs once scored greedy val BLEU 1.5 on a GPU where one process scored 98.7.
    An object is passed through as it is, and every copy of a container holds this same one.
    Keep it a plain class: FSDP copies dataclasses and namedtuples as well.
    """

    __slots__ = ("k", "v")

    def __init__(self, k: torch.Tensor | None = None, v: torch.Tensor | None = None):
        self.k, self.v = k, v


class MultiHeadAttention(nn.Module):
    """softmax(QKᵀ/√Dh)V over H heads; `context=None` means self-attention."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        # Deviation: the projections have biases, the paper's W^Q, W^K, W^V, W^O none. fairseq
        # and Marian have them too, and export.py maps them onto MarianMTModel's.
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """x (B, Tq, D), context (B, Tk, D) or (B / G, Tk, D), or None -> (B, Tq, D).

        `is_causal` lets SDPA build the causal mask itself (and pick a flash kernel); use it only
        without `mask`. With `cache`, x holds the new positions only. A context of B / G rows
        (and its mask) serves G consecutive rows of x each: beam search's K beams of a sentence.
        """
        b, tq, d = x.shape
        grouped = context is not None and context.size(0) != b
        if grouped:
            if b % context.size(0):
                raise ValueError(f"{b} query rows cannot share {context.size(0)} memory rows")
            # Beam search: the G = B / B_mem consecutive rows of one sentence share its memory,
            # so they attend to it as G·Tq queries of one row, and neither the memory nor its
            # cache is repeated G times.
            x = x.reshape(context.size(0), -1, d)  # (B_mem, G·Tq, D)
        q = self._split(self.q_proj(x))  # (B, H, Tq, Dh); grouped: (B_mem, H, G·Tq, Dh)
        if context is None:  # self-attention: keys are x, plus the cached past when decoding
            k, v = self._split(self.k_proj(x)), self._split(self.v_proj(x))  # (B, H, Tq, Dh)
            if cache is not None:
                if cache.k is not None:
                    k = torch.cat([cache.k, k], dim=2)  # (B, H, Tk, Dh)
                    v = torch.cat([cache.v, v], dim=2)  # (B, H, Tk, Dh)
                cache.k, cache.v = k, v
        elif cache is not None and cache.k is not None:  # cross-attention, memory projected
            k, v = cache.k, cache.v  # (B, H, S, Dh)
        else:
            k = self._split(self.k_proj(context))  # (B, H, S, Dh)
            v = self._split(self.v_proj(context))  # (B, H, S, Dh)
            if cache is not None:  # contiguous, so that every step's matmuls need no copy
                k, v = k.contiguous(), v.contiguous()
                cache.k, cache.v = k, v
        if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
            # Half precision on CPU (autocast, or a model cast to bf16): the CPU flash kernel's
            # bf16 backward is slow (on an AMX Xeon a bf16 training step measured 0.6-0.9x fp32
            # with it, 1.1-1.5x without; docs/speed.md), so attention runs in fp32 there while
            # the projections stay bf16 (beam search's grouped attention too: its softmax in
            # fp32). Not the paper's: a CPU speed measure.
            with torch.autocast("cpu", enabled=False):
                out = self._attend(q.float(), k.float(), v.float(), mask, is_causal, grouped)
            out = out.to(q.dtype)
        else:
            out = self._attend(q, k, v, mask, is_causal, grouped)  # (B, H, Tq, Dh)
        out = out.transpose(1, 2)  # (B, Tq, H, Dh); grouped: (B_mem, G·Tq, H, Dh)
        return self.out_proj(out.reshape(b, tq, d))  # (B, Tq, D)

    def _attend(self, q, k, v, mask, is_causal, grouped):
        if grouped and not self.training and q.device.type == "cpu":
            return grouped_attention(q, k, v, mask)  # (B_mem, H, G·Tq, Dh)
        return self._sdpa(q, k, v, mask, is_causal)  # (B, H, Tq, Dh)

    def _sdpa(self, q, k, v, mask, is_causal):
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, H, Tq, Dh)


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(QKᵀ/√Dh)V written out, for the beams of a sentence attending to its memory.

    q (B, H, Tq, Dh), k and v (B, H, Tk, Dh) -> (B, H, Tq, Dh), as SDPA without dropout: a row
    with no key to attend to gives zeros, as SDPA's does (decoding has none, since every source
    holds at least its </s>). On CPU, SDPA's flash kernel is slow for a handful of queries per
    row: with Tq = K beams this measured 2.5-3.5x faster (docs/speed.md).
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.size(-1) ** -0.5  # (B, H, Tq, Tk)
    if mask is None:
        return torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, H, Tq, Dh)
    weights = torch.softmax(scores.masked_fill(~mask, -torch.inf), dim=-1)  # (B, H, Tq, Tk)
    if (empty := ~mask.any(-1, keepdim=True)).any():  # NaN rows (a sync, but only on CPU)
        weights = weights.masked_fill(empty, 0.0)
    return torch.matmul(weights, v)  # (B, H, Tq, Dh)
