"""Make multi-process launches on a CPU-only host (tests, laptops) run what they ask for.

accelerate 1.x has two silent traps on a host without GPUs (see ../shared/notes/fsdp-on-cpu.md):
  - a MULTI_GPU launch (torchrun) without ACCELERATE_USE_CPU=true gives N unrelated
    single-process runs instead of DDP over gloo;
  - an FSDP launch never becomes FSDP: accelerate switches to DistributedType.FSDP only when
    its base distributed type is GPU-like (MULTI_GPU, NPU, XPU, ...), never MULTI_CPU.
When, and only when, this process belongs to a multi-process launch and CUDA is absent, we
ask for CPU DDP, or, for FSDP, present the gloo process group to accelerate as MULTI_GPU on
device "cpu". On GPUs nothing changes.
"""

import os

import torch


def setup_cpu_launch() -> str | None:
    """Call before creating the Accelerator. Returns what was changed ("ddp", "fsdp") or None."""
    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        os.environ["ACCELERATE_USE_CPU"] = "true"
        return "ddp"
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"  # PartialState.set_device keeps this device

    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        return "gloo", DistributedType.MULTI_GPU

    PartialState._prepare_backend = _prepare_backend
    return "fsdp"
