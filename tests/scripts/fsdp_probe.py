"""Launched by tests under accelerate: prints how the model was wrapped and what each rank holds."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root
from distributed import setup_cpu_launch  # noqa: E402

setup_cpu_launch()
from accelerate import Accelerator  # noqa: E402

from model import ModelConfig, Transformer  # noqa: E402

accelerator = Accelerator()
model = Transformer(ModelConfig(120, 120, 0, d_model=32, n_heads=4, d_ff=64, n_layers=2))
total = sum(p.numel() for p in model.parameters())
optimizer = torch.optim.AdamW(model.parameters())
model, optimizer = accelerator.prepare(model, optimizer)
local = sum(
    p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters()
)
with open(f"{sys.argv[1]}.rank{accelerator.process_index}.json", "w") as f:
    json.dump(
        {
            "type": type(model).__name__,
            "distributed_type": str(accelerator.distributed_type),
            "local": local,
            "total": total,
            "world": accelerator.num_processes,
        },
        f,
    )
