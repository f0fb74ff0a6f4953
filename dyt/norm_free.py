"""The other ways to train without normalization layers that the DyT paper compares against (its Table 9):
SkipInit, Fixup and σReparam, as methods applied to a timm / transformers model the way `dyt.convert` is.

Each removes every norm (`convert(model, "identity")`, BatchNorm included) and then changes the model:

- `skipinit` (De & Smith, "Batch Normalization Biases Residual Blocks Towards the Identity Function in Deep
  Networks", NeurIPS 2020; ReZero, Bachlechner et al. 2021, is the same for Transformers): a learnable scalar
  at the end of each residual branch, initialised to 0, so the network starts as the identity on its residual
  stream.
- `fixup` (Zhang, Dauphin, Ma, "Fixup Initialization: Residual Learning Without Normalization", ICLR 2019,
  §3 "Fixup"): (1) the classification layer and the last weight layer of each residual branch initialised
  to 0; (2) the other weight layers of each branch keep their initialisation scaled by L^(-1/(2m-2)), L the
  number of residual branches, m the weight layers along a branch; (3) a scalar multiplier (1) at the end of
  each branch, and scalar biases (0) before each weight layer of a branch, before the activations that follow
  a bias-free layer, and after the multiplier.
- `sigma_reparam` (Zhai et al., "Stabilizing Transformer Training by Preventing Attention Entropy Collapse",
  ICML 2023; apple/ml-sigma-reparam vision/layers.py `SNLinear`, `SpectralNormedWeight`, `convert_to_sn`,
  `remove_all_normalization_layers`): every Linear and Conv weight becomes `Ŵ = γ·W/σ(W)`, σ(W) from one
  power-iteration step per training forward (u from the SVD at the start), γ a learnable scalar initialised to
  σ(W), so the layer starts as it was.

Residual branches are found by name (`BLOCKS`): timm ViT blocks (`ls1`, `ls2`), timm ConvNeXt blocks, timm ResNet
Bottleneck and BasicBlock, transformers LLaMA-family decoder layers. A model with none of them gets one line that
says so (`NotApplicable`) for `skipinit` and `fixup`; `sigma_reparam` needs only Linear or Conv layers.

The changes are parameters and hooks on the existing modules, so module paths (and the checkpoint keys of every
weight `skipinit` and `fixup` keep) do not move; σReparam's weights move under torch's `parametrizations.weight`.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .convert import INCLUDABLE, Swap, SwapList, convert, format_swaps

METHODS = ("skipinit", "fixup", "sigma_reparam")


class NotApplicable(ValueError):
    """The method cannot be applied to this model (one line that says why)."""


@dataclass(frozen=True)
class Branch:
    """One residual branch of a block, by the paths of its modules inside the block."""

    end: str  # the module whose output is the branch's output (before the residual add)
    scaled: tuple[str, ...]  # Fixup: the weight layers before the last, scaled by L^(-1/(2m-2))
    last: str  # Fixup: the last weight layer, initialised to 0
    depth: int  # m, the weight layers along the branch (parallel projections count once)
    activations: tuple[str, ...] = ()  # Fixup: activations after a bias-free layer, a scalar bias before each


@dataclass(frozen=True)
class Block:
    name: str
    requires: tuple[str, ...]  # submodule paths a block of this kind has
    branches: tuple[Branch, ...]
    absent: tuple[str, ...] = ()  # … and paths it has not (a BasicBlock has no conv3)


# the residual blocks the methods know, by their module names; the first that matches a module wins
BLOCKS = (
    Block("timm ViT block", ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "ls1", "ls2"), (
        Branch("ls1", ("attn.qkv",), "attn.proj", 2),
        Branch("ls2", ("mlp.fc1",), "mlp.fc2", 2))),
    Block("timm ConvNeXt block", ("conv_dw", "mlp.fc1", "mlp.fc2", "drop_path", "shortcut"), (
        Branch("drop_path", ("conv_dw", "mlp.fc1"), "mlp.fc2", 3),)),
    Block("timm ResNet Bottleneck", ("conv1", "conv2", "conv3", "bn3", "act1", "act2"), (
        Branch("bn3", ("conv1", "conv2"), "conv3", 3, ("act1", "act2")),)),
    Block("timm ResNet BasicBlock", ("conv1", "conv2", "bn2", "act1"), (
        Branch("bn2", ("conv1",), "conv2", 2, ("act1",)),), absent=("conv3",)),
    Block("transformers decoder layer", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), (
        Branch("self_attn.o_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj", 2),
        Branch("mlp.down_proj", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", 2))),
)
# classification heads, zero-initialised by Fixup (timm: `head`, `head.fc`, `fc`; transformers: `lm_head`)
HEADS = ("head", "head.fc", "fc", "lm_head", "classifier")
_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def residual_branches(model: nn.Module) -> list[tuple[str, Block, Branch]]:
    """(block path, block kind, branch) for every residual branch of the model, in model order."""
    found = []
    for path, module in model.named_modules():
        for block in BLOCKS:
            if all(_has(module, p) for p in block.requires) and not any(_has(module, p) for p in block.absent):
                found += [(path, block, branch) for branch in block.branches]
                break
    return found


def _branches_or_fail(model: nn.Module, method: str) -> list[tuple[str, Block, Branch]]:
    found = residual_branches(model)
    if not found:
        kinds = ", ".join(b.name for b in BLOCKS)
        raise NotApplicable(f"norm={method} needs residual blocks it knows ({kinds}); "
                            f"{type(model).__name__} has none")
    return found


# ---------------------------------------------------------------- the hooks (module-level: models deep-copy)


def _scale_output(module, args, output):
    return output * module.skipinit_scale


def _fixup_output(module, args, output):
    return output * module.fixup_scale + module.fixup_bias


def _bias_input(module, args):
    return (args[0] + module.fixup_bias_in, *args[1:])


def _scalar(value: float, like: nn.Module, model: nn.Module) -> nn.Parameter:
    """A learnable scalar of shape (1,) (FSDP2 rejects 0-dim parameters) on the model's device and dtype."""
    ref = next(like.parameters(), None)
    ref = next(model.parameters()) if ref is None else ref
    return nn.Parameter(torch.full((1,), float(value), device=ref.device, dtype=ref.dtype))


class NormFreeChanges(SwapList):
    """What a method did: the norms removed (the list, as `convert` reports them: `replaced` counts norms) and
    the other changes (`changes`), printed together."""

    def __init__(self, swaps: Iterable[Swap], changes: Iterable[Swap], method: str):
        super().__init__(swaps)
        self.changes, self.method = list(changes), method

    def __str__(self) -> str:
        table = format_swaps([*self, *self.changes]).rsplit("\n", 1)[0]  # without convert's count line
        return (f"{self.method}:\n{table}\n{len(self.replaced)} norms removed, {len(self.skipped)} kept, "
                f"{len(self.changes)} other changes")


def _remove_norms(model: nn.Module, exclude: Iterable[str]) -> SwapList:
    return convert(model, "identity", exclude=exclude, include=INCLUDABLE)


# ---------------------------------------------------------------- SkipInit


def skipinit(model: nn.Module, *, init: float = 0.0, exclude: Iterable[str] = ()) -> NormFreeChanges:
    """Remove every norm; scale each residual branch's output by a learnable scalar `skipinit_scale` = init (0)."""
    branches = _branches_or_fail(model, "skipinit")
    swaps = _remove_norms(model, exclude)
    changes = []
    for block_path, _, branch in branches:
        path = f"{block_path}.{branch.end}" if block_path else branch.end
        end = model.get_submodule(path)
        end.register_parameter("skipinit_scale", _scalar(init, end, model))
        end.register_forward_hook(_scale_output)
        changes.append(Swap(path, None, type(end).__name__, f"{type(end).__name__} × s (s₀ = {init:g})"))
    return NormFreeChanges(swaps, changes, "skipinit")


# ---------------------------------------------------------------- Fixup


def fixup_factor(branches: int, depth: int) -> float:
    """Fixup's rescaling of the weight layers inside a branch: L^(-1/(2m-2)) (Zhang et al. 2019, §3, rule 2)."""
    return branches ** (-1.0 / (2 * depth - 2))


def _add_input_bias(module: nn.Module, model: nn.Module) -> None:
    module.register_parameter("fixup_bias_in", _scalar(0.0, module, model))
    module.register_forward_pre_hook(_bias_input)


@torch.no_grad()
def fixup(model: nn.Module, *, exclude: Iterable[str] = ()) -> NormFreeChanges:
    """Remove every norm, then Fixup's three rules (module docstring). The initialisation of the layers Fixup
    does not zero is the model's own, rescaled."""
    branches = _branches_or_fail(model, "fixup")
    L = len(branches)
    swaps = _remove_norms(model, exclude)
    changes = []

    def name(block_path, inner):
        return f"{block_path}.{inner}" if block_path else inner

    for block_path, _, branch in branches:
        factor = fixup_factor(L, branch.depth)
        for inner in branch.scaled:
            layer = model.get_submodule(name(block_path, inner))
            layer.weight.mul_(factor)
            _add_input_bias(layer, model)
            changes.append(Swap(name(block_path, inner), None, type(layer).__name__,
                                f"W × L^(-1/(2m-2)) = {factor:.4g} (L {L}, m {branch.depth}), + b_in"))
        last = model.get_submodule(name(block_path, branch.last))
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
        _add_input_bias(last, model)
        changes.append(Swap(name(block_path, branch.last), None, type(last).__name__, "W = 0, + b_in"))
        for inner in branch.activations:
            act = model.get_submodule(name(block_path, inner))
            _add_input_bias(act, model)
            changes.append(Swap(name(block_path, inner), None, type(act).__name__, "+ b_in"))
        end = model.get_submodule(name(block_path, branch.end))
        end.register_parameter("fixup_scale", _scalar(1.0, end, model))
        end.register_parameter("fixup_bias", _scalar(0.0, end, model))
        end.register_forward_hook(_fixup_output)
        changes.append(Swap(name(block_path, branch.end), None, type(end).__name__, "× s + b (s₀ 1, b₀ 0)"))
    head = next(((p, model.get_submodule(p)) for p in HEADS
                 if _has(model, p) and isinstance(model.get_submodule(p), nn.Linear)), None)
    if head is not None:
        head[1].weight.zero_()
        if head[1].bias is not None:
            head[1].bias.zero_()
        changes.append(Swap(head[0], None, "Linear", "W = 0 (classification layer)"))
    return NormFreeChanges(swaps, changes, "fixup")


# ---------------------------------------------------------------- σReparam


class SigmaReparam(nn.Module):
    """The parametrization `W ↦ γ·W/σ(W)` (torch.nn.utils.parametrize), W seen as a matrix [out, in·k…].

    σ(W) = vᵀ·W·u after one power-iteration step from the stored u (v = Wu/‖Wu‖, u ← Wᵀv/‖Wᵀv‖, u kept only in
    training), with the gradient flowing through W and not through u, v, as `SpectralNormedWeight.get_sigma` of
    apple/ml-sigma-reparam; u starts as the top right singular vector and γ as σ(W) (the SVD), so the layer
    starts as it was. In fp32 whatever the autocast (the official `FP32SpectralNormedWeight`)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        matrix = weight.detach().flatten(1)
        if weight.is_meta:  # shapes only (FSDP's other ranks): rank 0's values arrive by broadcast
            u, sigma = torch.empty(matrix.shape[1], device="meta"), torch.empty((), device="meta")
        else:
            _, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
            u, sigma = vh[0], s[0]
        self.register_buffer("u", u.float())
        self.gamma = nn.Parameter(sigma.reshape(1).to(weight.dtype))

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            matrix = weight.flatten(1).float()
            with torch.no_grad():
                v = F.normalize(matrix @ self.u, dim=0)
                u = F.normalize(matrix.t() @ v, dim=0)
                if self.training:
                    self.u.copy_(u)
            return torch.dot(v, matrix @ u)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * (self.gamma / self.sigma(weight)).to(weight.dtype)

    def extra_repr(self) -> str:
        return "W ↦ γ·W/σ(W)"


def sigma_reparam(model: nn.Module, *, exclude: Iterable[str] = ()) -> NormFreeChanges:
    """Remove every norm; reparameterise the weight of every Linear and Conv layer as `γ·W/σ(W)`."""
    layers = [(p, m) for p, m in model.named_modules()
              if isinstance(m, _WEIGHT_LAYERS) and not parametrize.is_parametrized(m, "weight")]
    if not layers:
        raise NotApplicable(f"norm=sigma_reparam needs Linear or Conv layers; {type(model).__name__} has none")
    swaps = _remove_norms(model, exclude)
    changes = []
    for path, layer in layers:
        kind = type(layer).__name__
        parametrize.register_parametrization(layer, "weight", SigmaReparam(layer.weight))
        changes.append(Swap(path, None, kind, f"{kind}, W = γ·W/σ(W)"))
    return NormFreeChanges(swaps, changes, "sigma_reparam")


@torch.no_grad()
def effective_spectral_norms(model: nn.Module) -> dict[str, tuple[float, float]]:
    """(γ, σ of the weight the layer uses) for every σReparam layer: equal once the power iteration converged.
    Reading them leaves the power iteration where it was (the parametrizations run in eval mode)."""
    out = {}
    for path, module in model.named_modules():
        reparam = module.parametrizations.weight[0] if parametrize.is_parametrized(module, "weight") else None
        if isinstance(reparam, SigmaReparam):
            training = reparam.training
            reparam.eval()
            try:
                effective = module.weight.flatten(1).float()
            finally:
                reparam.train(training)
            out[path] = (float(reparam.gamma), float(torch.linalg.matrix_norm(effective, ord=2)))
    return out


def check_applicable(model: nn.Module, method: str) -> None:
    """Raise NotApplicable (one line) when `method` cannot be applied to `model` (built on the meta device is
    enough: only module names and types are read)."""
    if method in ("skipinit", "fixup"):
        _branches_or_fail(model, method)
    elif not any(isinstance(m, _WEIGHT_LAYERS) for m in model.modules()):
        raise NotApplicable(f"norm=sigma_reparam needs Linear or Conv layers; {type(model).__name__} has none")


def apply(model: nn.Module, method: str, *, exclude: Iterable[str] = ()) -> NormFreeChanges:
    """`skipinit`, `fixup` or `sigma_reparam` by name (`norm=` of a run)."""
    methods = {"skipinit": skipinit, "fixup": fixup, "sigma_reparam": sigma_reparam}
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return methods[method](model, exclude=exclude)



__all__ = ["BLOCKS", "METHODS", "NotApplicable", "SigmaReparam", "apply", "check_applicable",
           "effective_spectral_norms", "fixup",
           "fixup_factor", "residual_branches", "sigma_reparam", "skipinit"]
