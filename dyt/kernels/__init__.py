"""Fused Dynamic Tanh: forward and backward in one pass each, on CPU (C++) and GPU (Triton).

`dynamic_tanh(x, alpha, weight, bias, channels_last=…, kernel=…)` is the entry point; `kernel` picks the
implementation (see `dispatch`), `set_default_kernel` the process-wide default.
"""
from .dispatch import KERNELS, dynamic_tanh, get_default_kernel, set_default_kernel

__all__ = ["KERNELS", "dynamic_tanh", "get_default_kernel", "set_default_kernel"]
