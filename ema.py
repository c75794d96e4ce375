"""An exponential moving average of the weights (not in the paper; fairseq's --ema-decay, timm's
ModelEmaV2): after every optimizer step, ema = decay * ema + (1 - decay) * weights.

It mirrors `model.parameters()` as this process holds them: whole tensors in one process, each
rank's own shards under FSDP2 (DTensors), so the update needs no communication. `swapped()` puts
the average into the model for a while (validation, the weights a checkpoint holds) and then
puts the trained weights back; it is collective only through what runs inside it."""

from contextlib import contextmanager
from pathlib import Path

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        with torch.no_grad():
            self.shadow = [p.detach().clone() for p in _params(model)]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One step. The decay ramps up as (1 + n) / (10 + n) (TF's num_updates, timm's
        warmup) so that the first, random weights are forgotten within a few hundred steps."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, _params(model), 1.0 - decay)

    @contextmanager
    def swapped(self, model: torch.nn.Module):
        params = _params(model)
        with torch.no_grad():
            trained = [p.detach().clone() for p in params]
            for p, s in zip(params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(_params(model), trained):
                    p.copy_(t)

    def save(self, path: Path) -> None:
        """This process's part (its shards under FSDP), for --resume."""
        local = [s.to_local() if hasattr(s, "to_local") else s for s in self.shadow]
        torch.save({"updates": self.updates, "shadow": local}, path)

    def load(self, path: Path) -> None:
        saved = torch.load(path, weights_only=True)
        shapes = [tuple(t.shape) for t in saved["shadow"]]
        local = [s.to_local() if hasattr(s, "to_local") else s for s in self.shadow]
        if shapes != [tuple(t.shape) for t in local]:
            raise ValueError(
                "its moving average has other shapes than this model's parameters "
                "(another model size, or another number of processes under FSDP)"
            )
        with torch.no_grad():
            for s, t in zip(local, saved["shadow"]):
                s.copy_(t)
        self.updates = saved["updates"]


def _params(model: torch.nn.Module) -> list:
    """The parameters as sharded DTensors under FSDP2: its root module keeps them gathered after a
    forward (here, validation's), which would swap in other tensors."""
    if hasattr(model, "reshard"):
        model.reshard()
    return list(model.parameters())
