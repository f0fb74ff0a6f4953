"""dyt: Dynamic Tanh and its point-wise relatives, and a norm swap for any timm / transformers /
diffusers model; the other ways to train without norms that the paper compares against (`dyt.norm_free`:
SkipInit, Fixup, σReparam). Importable on its own: nothing here imports the suite's tasks or trainer."""
from . import norm_free
from .convert import NORM_TYPES, Swap, SwapList, auto_alpha, convert, describe_norm, format_swaps
from .functional import POINTWISE, dynamic_tanh, pointwise_function, pointwise_norm
from .kernels import KERNELS, get_default_kernel, set_default_kernel
from .layers import (
    Derf,
    DynamicHardTanh,
    DynamicSigmoid,
    DynamicTanh,
    LayerNorm2d,
    PointwiseNorm,
    RMSNorm2d,
    ScaledEmbedding,
)
from .optim import param_groups

__all__ = [
    "KERNELS", "NORM_TYPES", "POINTWISE", "Derf", "DynamicHardTanh", "DynamicSigmoid", "DynamicTanh", "LayerNorm2d", "PointwiseNorm",
    "RMSNorm2d", "ScaledEmbedding", "Swap", "SwapList", "auto_alpha", "convert", "describe_norm", "dynamic_tanh", "format_swaps",
    "get_default_kernel", "norm_free", "param_groups", "pointwise_function", "pointwise_norm", "set_default_kernel",
]
