"""Keep freed memory in the process on CPU: training and decoding steps reuse their buffers.

glibc gives large freed buffers back to the OS, so a loop that allocates the same big tensors
every step (logits, gradients, activations) faults their pages in again every step. The
figures are in docs/speed.md.
"""

import ctypes
import sys

import torch


def keep_freed_memory(device: torch.device | str = "cpu") -> bool:
    """Let glibc keep freed memory for the next step instead of giving it back to the OS.

    Only for a CPU `device` (elsewhere it returns False): on GPUs torch's caching allocator
    already keeps tensors' memory.

    By default glibc maps large buffers from the OS (above a threshold that adapts between 128 KB
    and 32 MB) and unmaps them when freed, and trims the top of its heap once twice that is free,
    so CPU training and decoding steps fault pages of their logits, gradients and activations in
    again. Kept, the whole Multi30k recipe trained 1.06-1.10x faster and decoding Multi30k val ran
    1.02-1.18x faster (docs/speed.md). The cost: the process's memory stays at its high-water
    mark, and large buffers can fragment the heap. Returns False off Linux and where the C
    library's mallopt does nothing (musl's stub); under an LD_PRELOADed allocator (jemalloc,
    tcmalloc) it may report True and change nothing.
    """
    if torch.device(device).type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
