"""What the trainer asks of the machine: peak dense bf16/fp16 tensor-core FLOP/s per GPU, for MFU (model FLOPs
utilisation; left out on CPU), and an allocator that keeps freed host memory."""
from __future__ import annotations

import ctypes
import os
import platform

import torch

# dense (no sparsity) peaks from the vendors' data sheets, TFLOP/s
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "V100": 125.0,
}


def peak_flops(override_tflops: float | None = None) -> float | None:
    """FLOP/s of one device: the config's value, else the table's entry for this GPU, else None."""
    if override_tflops:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS.items():  # most specific names first
        if key in name:
            return tflops * 1e12
    return None


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit hosts


def keep_freed_host_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next step instead of handing it back to the kernel.

    By default a tensor over the (adaptive) mmap threshold is mapped and unmapped at every allocation, and the top
    of the heap is trimmed whenever enough of it is free: each step then page-faults its activations in afresh.
    On a 2-core CPU (1 thread, beside other jobs) the ResNet default's step measured 4,700-5,100 faults and
    37-39 ms in processes that fell into this mode against none and 29-30 ms in those that did not (the mode
    depends on what ran before), so one loop took 25% longer from one process to the next. Allocations up to
    32 MiB from the heap and no trimming make every process the fast one; the cost is that the process keeps its
    peak. Left alone where the user tuned malloc through glibc's environment variables, and off glibc (musl,
    macOS, or a preloaded jemalloc/tcmalloc, whose own caches do this already). True when applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(key.startswith("MALLOC_") and key.endswith("_") for key in os.environ):
        return False
    libc = ctypes.CDLL("libc.so.6")
    # a trim threshold of -1 never trims (mallopt(3))
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, -1))
