"""Forward hooks that read what the point-wise norms see: α and the std of each layer's input; and what a
LayerNorm or RMSNorm computes before its affine, to compare a replacement with."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .convert import NormInfo, describe_norm
from .layers import PointwiseNorm


def pointwise_norms(model: nn.Module) -> Iterator[tuple[str, PointwiseNorm]]:
    for path, module in model.named_modules():
        if isinstance(module, PointwiseNorm):
            yield path, module


def alpha_values(model: nn.Module) -> dict[str, float]:
    """Each DyT-like layer's α (the mean over channels where α is per channel). In a model sharded by FSDP
    every process must call it: a sharded α is gathered."""
    values = {}
    for path, module in pointwise_norms(model):
        alpha = module.alpha.detach()
        if hasattr(alpha, "full_tensor"):  # a DTensor shard
            alpha = alpha.full_tensor()
        values[path] = alpha.float().mean().item()
    return values


@contextmanager
def record_input_std(model: nn.Module):
    """Within the block, every forward of a DyT-like layer stores the std of its input (the paper's Fig. 8
    compares α with 1/std). Yields the dict path → std; hooks are removed on exit."""
    stds: dict[str, float] = {}
    handles = []
    for path, module in pointwise_norms(model):
        def hook(_module, args, path=path):
            stds[path] = args[0].detach().float().std().item()
        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield stds
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture_norm_io(model: nn.Module, paths: list[str]):
    """Within the block, store each listed module's input and output tensors (detached, on CPU) from its
    latest forward: the raw material for the paper's Fig. 2/4 input–output scatter plots."""
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for path in paths:
        def hook(_module, args, output, path=path):
            captured[path] = (args[0].detach().float().cpu(), output.detach().float().cpu())
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def statistic_norms(model: nn.Module) -> list[tuple[str, NormInfo]]:
    """The model's LayerNorms and RMSNorms (those that normalise by statistics), with what each computes."""
    return [(path, info) for path, module in model.named_modules()
            if isinstance(info := describe_norm(module), NormInfo) and info.kind in ("layernorm", "rmsnorm")]


def normalized(x: torch.Tensor, info: NormInfo) -> torch.Tensor:
    """What a LayerNorm or RMSNorm described by `info` computes before its affine, channels last."""
    if not info.channels_last:
        x = x.movedim(1, -1)
    if info.kind == "layernorm":
        return F.layer_norm(x, x.shape[-1:], eps=info.eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + info.eps)
