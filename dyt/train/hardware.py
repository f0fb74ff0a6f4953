"""Peak dense bf16/fp16 tensor-core FLOP/s per GPU, for MFU (model FLOPs utilisation). Left out on CPU."""
from __future__ import annotations

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
