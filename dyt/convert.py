"""Find the normalization layers of any model, give each a role, and swap them for another norm.

Recognition is by type for torch's own norms and this library's, and by behaviour for everything else:
a leaf module with a 1-D `weight` (and maybe `bias`) is run on probe inputs and compared with LayerNorm
and RMSNorm over the last dim or over the channel dim of NCHW tensors. So the RMSNorm class of a
transformers model family released next month converts without a list of class names.
"""
from __future__ import annotations

import copy
import inspect
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .functional import POINTWISE
from .layers import SQUASHING_CLASSES, LayerNorm2d, PointwiseNorm, RMSNorm2d

ROLES = ("attn", "ffn", "final")
NORM_TYPES = ("dyt", "derf", "layernorm", "rmsnorm", "identity")
# options each target type accepts on top of the layer's own layout / affine / bias
_TYPE_OPTIONS = {
    "dyt": {"fn", "learn_alpha", "alpha_per_channel", "kernel"},
    "derf": {"learn_alpha", "alpha_per_channel", "shift_init", "kernel"},
    "layernorm": {"eps"},
    "rmsnorm": {"eps"},
    "identity": set(),
}
_COMMON_OPTIONS = {"elementwise_affine", "bias", "channels_last"}


def norm_options(norm_type: str) -> set[str]:
    """The options `convert` accepts for a norm type."""
    return _TYPE_OPTIONS[norm_type] | _COMMON_OPTIONS


_STATISTICS_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LocalResponseNorm)
# norms `convert` leaves alone unless `include` names them: their statistics are over the batch
INCLUDABLE = ("batchnorm",)
# the BatchNorm classes whose forward is the normalisation alone (subclasses such as timm's BatchNormAct2d also
# run an activation, which a replacement would drop)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class NormInfo:
    """What a norm layer computes, as far as a replacement must preserve it."""

    kind: str  # "layernorm", "rmsnorm", or a PointwiseNorm's fn ("tanh", "erf", …)
    shape: tuple[int, ...]
    channels_last: bool
    affine: bool
    bias: bool
    eps: float = 1e-6
    weight_offset: float = 0.0  # γ = weight + offset (Gemma-style RMSNorms store γ − 1)


@dataclass(frozen=True)
class Swap:
    """One norm layer found by `convert`: replaced, or skipped with a reason."""

    path: str
    role: str | None
    old: str
    new: str | None
    alpha_init: float | None = None
    shape: tuple[int, ...] = ()
    channels_last: bool = True
    reason: str = ""

    @property
    def skipped(self) -> bool:
        return self.new is None


class SwapList(list):
    """The swaps `convert` made, in model order; skipped norms are included with `new=None`."""

    @property
    def replaced(self) -> list[Swap]:
        return [s for s in self if not s.skipped]

    @property
    def skipped(self) -> list[Swap]:
        return [s for s in self if s.skipped]

    def __str__(self) -> str:
        return format_swaps(self)


# ---------------------------------------------------------------- recognising norms


def _eps_of(module: nn.Module) -> float:
    for name in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 1e-6


def _reference(kind: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    if kind == "layernorm":
        return F.layer_norm(x, x.shape[-1:], eps=eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _single_input(module: nn.Module) -> bool:
    """A norm we can replace takes the tensor alone (Mamba2's gated RMSNorm also takes a gate)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) == 1


@torch.no_grad()
def _probe(module: nn.Module, size: int) -> NormInfo | None:
    """Run a CPU float32 copy with random γ, β on probe inputs; name the norm whose formula it matches. On the
    CPU whatever the default device (transformers builds models under `torch.device("meta")`)."""
    with torch.device("cpu"):
        return _probe_on_cpu(module, size)


def _probe_on_cpu(module: nn.Module, size: int) -> NormInfo | None:
    probe = copy.deepcopy(module).to_empty(device="cpu").float()
    gen = torch.Generator().manual_seed(0)
    weight, bias = getattr(probe, "weight", None), getattr(probe, "bias", None)
    if isinstance(weight, torch.Tensor):
        weight.copy_(torch.rand(size, generator=gen) + 0.5)
    if isinstance(bias, torch.Tensor):
        bias.copy_(torch.randn(size, generator=gen))
    gamma = weight if isinstance(weight, torch.Tensor) else torch.ones(size)
    beta = bias if isinstance(bias, torch.Tensor) else torch.zeros(size)
    eps = _eps_of(module)
    # an offset mean makes LayerNorm and RMSNorm clearly different at any width
    probes = {True: torch.randn(2, 3, size, generator=gen) * 2 + 1,
              False: torch.randn(2, size, 2, 3, generator=gen) * 2 + 1}
    for channels_last, x in probes.items():
        try:
            y = probe(x)
        except Exception:  # a layout the module does not accept
            continue
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            continue
        x_last, y_last = (x, y) if channels_last else (x.movedim(1, -1), y.movedim(1, -1))
        for kind in ("layernorm", "rmsnorm"):
            normalized = _reference(kind, x_last, eps)
            for offset in (0.0, 1.0):
                if torch.allclose(y_last, normalized * (gamma + offset) + beta, rtol=1e-3, atol=1e-3):
                    return NormInfo(kind, (size,), channels_last, isinstance(weight, torch.Tensor),
                                    isinstance(bias, torch.Tensor), eps, offset)
    return None


def _probe_size(module: nn.Module) -> int | None:
    """The normalised width of a leaf module that might be a norm, or None if it cannot be one."""
    if any(True for _ in module.children()) or list(module.buffers()):
        return None
    params = dict(module.named_parameters())
    if params:
        weight = params.get("weight")
        if weight is None or weight.ndim != 1 or set(params) - {"weight", "bias"}:
            return None
        if "bias" in params and params["bias"].shape != weight.shape:
            return None
        return weight.numel()
    if "norm" not in type(module).__name__.lower():
        return None
    shape = getattr(module, "normalized_shape", None) or getattr(module, "dim", None)
    if isinstance(shape, int):
        return shape
    if isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 1:
        return int(shape[0])
    return None


def _describe_batchnorm(module: nn.Module) -> NormInfo | str:
    """BatchNorm as a channels-first norm over dim 1 (N, C, …): γ and β per channel, running statistics dropped."""
    if type(module) not in _BATCHNORMS:
        return f"a BatchNorm subclass ({type(module).__name__}) whose forward does more than normalise"
    return NormInfo("batchnorm", (module.num_features,), False, module.affine, module.affine, module.eps)


def describe_norm(module: nn.Module) -> NormInfo | str | None:
    """NormInfo for a norm we can replace, a reason string for one we leave alone, None otherwise. BatchNorm is
    described (kind "batchnorm"); `convert` replaces it only when asked (`include`)."""
    if isinstance(module, PointwiseNorm):
        return NormInfo(module.fn, module.normalized_shape, module.channels_last, module.weight is not None,
                        module.bias is not None)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _describe_batchnorm(module)
    if isinstance(module, _STATISTICS_NORMS):
        return "uses batch or group statistics"
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        kind = "layernorm" if isinstance(module, nn.LayerNorm) else "rmsnorm"
        shape = tuple(module.normalized_shape)
        affine = module.elementwise_affine
        has_bias = getattr(module, "bias", None) is not None
        if type(module) in (nn.LayerNorm, nn.RMSNorm, LayerNorm2d, RMSNorm2d):
            channels_last = type(module) in (nn.LayerNorm, nn.RMSNorm)
            return NormInfo(kind, shape, channels_last, affine, has_bias, module.eps or 1e-6)
        if len(shape) == 1:  # a subclass (timm's LayerNorm2d …): its layout is what it does
            info = _probe(module, shape[0])
            if info is not None:
                return info
        return f"a {kind} subclass whose layout could not be determined"
    size = _probe_size(module)
    if size is None:
        return None
    info = _probe(module, size)
    if info is None:
        return None
    if not _single_input(module):
        return "its forward takes inputs besides the tensor"
    return info


def _pointwise_class(fn: str) -> type[PointwiseNorm]:
    """The layer class of `norm=dyt fn=…`: the named relatives, else PointwiseNorm with that fn (erf without
    Derf's shift is PointwiseNorm too: `norm=derf` is Derf)."""
    return SQUASHING_CLASSES[fn] if fn in ("tanh", "hardtanh", "sigmoid") else PointwiseNorm


def _is_target(module: nn.Module, norm_type: str, options: Mapping) -> bool:
    """Already the requested norm: leave it as it is, which makes convert idempotent."""
    if norm_type == "dyt":
        fn = options.get("fn", "tanh")
        return type(module) is _pointwise_class(fn) and module.fn == fn
    target = {"derf": (SQUASHING_CLASSES["erf"],), "layernorm": (nn.LayerNorm, LayerNorm2d),
              "rmsnorm": (nn.RMSNorm, RMSNorm2d), "identity": (nn.Identity,)}[norm_type]
    return type(module) in target


# ---------------------------------------------------------------- roles and α₀

# inside a numbered block (blocks.3., layers.11., transformer_blocks.0.)
_IN_BLOCK = re.compile(r"(^|\.)\d+\.")
_ATTN_NAME = re.compile(
    r"(input_layernorm|norm1|ln_?1|attn_norm|attention_norm|self_attn_layer_norm|norm_attn|"
    r"(?<![a-z_])layers\.\d+\.layer_norm)(\.norm)?$"
)
_FFN_NAME = re.compile(r"(post_attention_layernorm|norm2|norm3|ln_?2|ffn_norm|mlp_norm|final_layer_norm)(\.norm)?$")

RoleRule = Mapping[str, str] | Callable[[str], str | None] | None


def default_roles(paths: list[str]) -> dict[str, str]:
    """Roles from the naming of timm ViT/ConvNeXt, transformers LLaMA-family and wav2vec 2.0, and DiT.

    In a numbered block: attention-block names (`norm1`, `input_layernorm`, wav2vec 2.0's `layer_norm`)
    are `attn`, everything else `ffn`. Outside blocks: norms after the last block are `final`
    (`norm`, `fc_norm`, `model.norm`, `norm_out`, `head.norm`), those before it `ffn` (stems, embeddings).
    """
    last_in_block = max((i for i, p in enumerate(paths) if _IN_BLOCK.search(p)), default=-1)
    roles = {}
    for i, path in enumerate(paths):
        if _IN_BLOCK.search(path):
            roles[path] = "attn" if _ATTN_NAME.search(path) and not _FFN_NAME.search(path) else "ffn"
        else:
            roles[path] = "final" if i > last_in_block else "ffn"
    return roles


def assign_roles(paths: list[str], rules: RoleRule = None) -> dict[str, str]:
    """Roles for the given norm paths: `rules` first (regex → role, searched in order, or a callable
    path → role or None), the defaults of `default_roles` for whatever the rules leave."""
    roles = default_roles(paths)
    for path in paths:
        chosen = None
        if callable(rules):
            chosen = rules(path)
        elif rules:
            chosen = next((role for pattern, role in rules.items() if re.search(pattern, path)), None)
        if chosen is not None:
            if chosen not in ROLES:
                raise ValueError(f"role {chosen!r} for {path!r} is not one of {', '.join(ROLES)}")
            roles[path] = chosen
    return roles


# The paper's α₀ for LLMs (attention-block norm, FFN and final norms) by model width.
_AUTO_WIDTHS = (1024, 2048, 4096, 5120, 8192)
_AUTO_ATTN = (1.0, 1.0, 0.8, 0.6, 0.2)
_AUTO_OTHER = (1.0, 0.5, 0.2, 0.15, 0.05)


def auto_alpha(width: int, role: str = "ffn") -> float:
    """α₀ from the paper's LLM table (widths 1024 … 8192), interpolated linearly in log-width between
    its rows and clamped outside them: attention-block norms take the attention column, FFN and final
    norms the other."""
    column = _AUTO_ATTN if role == "attn" else _AUTO_OTHER
    return float(np.interp(math.log(width), [math.log(w) for w in _AUTO_WIDTHS], column))


def _note_clamped_auto(alpha_init, widths: list[int], norm_type: str) -> None:
    """`auto` outside the paper's LLM table takes its nearest row: say so once, it is an adjustment."""
    uses_auto = alpha_init == "auto" or (isinstance(alpha_init, Mapping) and "auto" in alpha_init.values())
    outside = sorted({w for w in widths if not _AUTO_WIDTHS[0] <= w <= _AUTO_WIDTHS[-1]})
    if norm_type in ("dyt", "derf") and uses_auto and outside:
        logging.getLogger("dyt").warning(
            "alpha_init=auto: widths %s are outside the paper's LLM table (%d–%d); they take its nearest row "
            "(α₀ %s / %s for attention / the rest)", ", ".join(map(str, outside)), _AUTO_WIDTHS[0], _AUTO_WIDTHS[-1],
            f"{auto_alpha(outside[0], 'attn'):g}", f"{auto_alpha(outside[0], 'ffn'):g}")


def resolve_alpha(alpha_init, role: str, width: int) -> float:
    """α₀ for one layer from a number, "auto", or a per-role mapping {attn, ffn, final} of those."""
    if isinstance(alpha_init, Mapping):
        missing = [r for r in ROLES if r not in alpha_init]
        unknown = [k for k in alpha_init if k not in ROLES]
        if unknown or missing:
            raise ValueError(
                f"alpha_init per role needs exactly the keys {{attn, ffn, final}}; "
                f"missing {missing}, unknown {unknown}"
            )
        alpha_init = alpha_init[role]
    if alpha_init == "auto":
        return auto_alpha(width, role)
    if isinstance(alpha_init, str):
        raise ValueError(f"alpha_init must be a number, 'auto' or a mapping {{attn, ffn, final}}; got {alpha_init!r}")
    value = float(alpha_init)
    if not value > 0:
        raise ValueError(f"alpha_init must be > 0 (got {value}); try 0.5, the paper's default")
    return value


# ---------------------------------------------------------------- building replacements


def parse_norm(norm, alpha_init=None, options: Mapping | None = None) -> tuple[str, object, dict]:
    """Split a norm spec (a type name, or a mapping / config with `type` and options) into
    (type, alpha_init, options), checking both against what the type accepts."""
    options = dict(options or {})
    if isinstance(norm, Mapping) or hasattr(norm, "keys"):
        spec = {k: norm[k] for k in norm.keys()}
        norm = spec.pop("type", None)
        spec_alpha = spec.pop("alpha_init", None)
        alpha_init = spec_alpha if alpha_init is None else alpha_init
        options = {**spec, **options}
    if norm not in NORM_TYPES:
        raise ValueError(f"unknown norm type {norm!r}; known: {', '.join(NORM_TYPES)}")
    allowed = norm_options(norm)
    unknown = sorted(k for k in options if k not in allowed)
    if unknown:
        raise ValueError(f"norm {norm!r} takes no option {', '.join(unknown)}; it takes: {', '.join(sorted(allowed))}")
    if norm == "dyt" and options.get("fn", "tanh") not in POINTWISE:
        raise ValueError(f"dyt fn must be one of {', '.join(POINTWISE)} (dyt.functional.POINTWISE), "
                         f"got {options['fn']!r}")
    return norm, (0.5 if alpha_init is None else alpha_init), options


def _factory_of(module: nn.Module, model: nn.Module) -> dict:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.parameters()), None)
    if tensor is None:
        return {}
    return {"device": tensor.device, "dtype": tensor.dtype if tensor.is_floating_point() else None}


def build_norm(norm_type: str, info: NormInfo, alpha: float | None, options: Mapping, factory: Mapping) -> nn.Module:
    """The replacement layer: the old layer's shape, layout, affine-ness and bias-ness unless options say
    otherwise."""
    channels_last = options.get("channels_last", info.channels_last)
    affine = options.get("elementwise_affine", info.affine)
    bias = options.get("bias", info.bias) and affine
    shape = info.shape if channels_last else info.shape[-1]
    if norm_type in ("dyt", "derf"):
        fn = "erf" if norm_type == "derf" else options.get("fn", "tanh")
        cls = SQUASHING_CLASSES["erf"] if norm_type == "derf" else _pointwise_class(fn)
        extra = {k: options[k] for k in ("learn_alpha", "alpha_per_channel", "shift_init", "kernel") if k in options}
        if cls is PointwiseNorm:
            extra["fn"] = fn
        return cls(shape, alpha, channels_last, affine, bias, **extra, **factory)
    if norm_type == "layernorm":
        cls = nn.LayerNorm if channels_last else LayerNorm2d
        return cls(shape, eps=options.get("eps", info.eps), elementwise_affine=affine, bias=bias, **factory)
    if norm_type == "rmsnorm":  # RMSNorm has no β: a LayerNorm's bias is dropped
        cls = nn.RMSNorm if channels_last else RMSNorm2d
        return cls(shape, eps=options.get("eps", info.eps), elementwise_affine=affine, **factory)
    return nn.Identity()


@torch.no_grad()
def _copy_affine(old: nn.Module, new: nn.Module, info: NormInfo) -> None:
    """Carry γ and β over so a converted pretrained checkpoint starts from its trained affine."""
    for name, offset in (("weight", info.weight_offset), ("bias", 0.0)):
        src, dst = getattr(old, name, None), getattr(new, name, None)
        if not isinstance(src, torch.Tensor) or not isinstance(dst, torch.Tensor):
            continue
        if src.is_meta or dst.is_meta or src.shape != dst.shape:
            continue
        dst.copy_(src.to(dst.dtype) + offset)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, module)


def convert(
    model: nn.Module,
    norm="dyt",
    *,
    alpha_init=None,
    roles: RoleRule = None,
    exclude: Iterable[str] = (),
    include: Iterable[str] = (),
    **options,
) -> SwapList:
    """Replace every normalization layer of `model` in place by the chosen norm; return what was done.

    Args:
        norm: "dyt", "derf", "layernorm", "rmsnorm" or "identity", or a mapping / config with `type`,
            `alpha_init` and options (for dyt: `fn` tanh | hardtanh | sigmoid, `learn_alpha`,
            `alpha_per_channel`, `kernel` (see `dyt.kernels`); derf: `shift_init`, `kernel`; all:
            `elementwise_affine`, `bias`, `channels_last`).
        alpha_init: α₀ (default 0.5): a number, "auto" (from each layer's width by the paper's LLM
            table, see `auto_alpha`), or per role {attn, ffn, final}.
        roles: regex → role mapping or a callable path → role, before the defaults of `default_roles`.
        exclude: regexes of module paths to leave alone (reported as skipped).
        include: kinds of norm left alone by default to convert too: "batchnorm" turns BatchNorm1d/2d/3d (and
            SyncBatchNorm) into channels-first layers over dim 1, γ and β kept, the running statistics dropped
            (the paper's Appendix D: DyT in place of BatchNorm in ResNet-50 and VGG19).

    Recognised: nn.LayerNorm, nn.RMSNorm and their subclasses (timm's LayerNorm, LayerNorm2d), any leaf
    module that behaves as LayerNorm or RMSNorm over the last dim or the NCHW channel dim (the RMSNorms
    of transformers models, diffusers' norms), and this library's layers. BatchNorm (unless included),
    GroupNorm and friends are left alone and reported as skipped. γ and β are copied from the old layer; device and
    dtype are kept. A layer that already is the requested norm is left as it is, so convert is
    idempotent.
    """
    norm_type, alpha_init, options = parse_norm(norm, alpha_init, options)
    include = tuple(include)
    unknown = [kind for kind in include if kind not in INCLUDABLE]
    if unknown:
        raise ValueError(f"include={unknown[0]!r} is unknown; convert can include: {', '.join(INCLUDABLE)}")
    exclude = [re.compile(p) for p in exclude]
    found: list[tuple[str, nn.Module, NormInfo]] = []
    skipped: dict[str, Swap] = {}
    for path, module in model.named_modules():
        if not path:
            continue
        if _is_target(module, norm_type, options):
            if norm_type != "identity":  # so that a model already in the requested norm reports its norms
                skipped[path] = Swap(path, None, type(module).__name__, None, reason=f"already {norm_type}")
            continue
        info = describe_norm(module)
        if info is None:
            continue
        if isinstance(info, NormInfo) and info.kind in INCLUDABLE and info.kind not in include:
            info = f"uses batch statistics; include=('{info.kind}',) converts it"
        if isinstance(info, NormInfo) and any(p.search(path) for p in exclude):
            info = "excluded"
        if isinstance(info, str):
            skipped[path] = Swap(path, None, type(module).__name__, None, reason=info)
        else:
            found.append((path, module, info))
    # norms nested inside a norm we replace go with it
    found = [f for f in found if not any(f[0].startswith(p + ".") for p, _, _ in found if p != f[0])]

    role_of = assign_roles([p for p, _, _ in found], roles)
    _note_clamped_auto(alpha_init, [info.shape[-1] for _, _, info in found], norm_type)
    done: dict[str, Swap] = {}
    for path, module, info in found:
        role = role_of[path]
        alpha = resolve_alpha(alpha_init, role, info.shape[-1]) if norm_type in ("dyt", "derf") else None
        new = build_norm(norm_type, info, alpha, options, _factory_of(module, model))
        _copy_affine(module, new, info)
        _set_submodule(model, path, new)
        done[path] = Swap(path, role, type(module).__name__, type(new).__name__, alpha, info.shape,
                          getattr(new, "channels_last", info.channels_last))
    order = {p: i for i, (p, _) in enumerate(model.named_modules())}
    merged = sorted({**skipped, **done}.values(), key=lambda s: order.get(s.path, len(order)))
    return SwapList(merged)


# ---------------------------------------------------------------- reporting


def format_swaps(swaps: Iterable[Swap]) -> str:
    """A compact table: layers that differ only in their block index are one row (`blocks.*.norm1 ×12`)."""
    swaps = list(swaps)
    groups: dict[tuple, int] = {}
    for s in swaps:
        pattern = re.sub(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)", "*", s.path)
        change = f"{s.old} → {s.new}" if not s.skipped else f"{s.old} kept ({s.reason})"
        layout = "" if s.skipped or s.channels_last else "channels_first"
        alpha = "" if s.alpha_init is None else f"{s.alpha_init:g}"
        key = (pattern, s.role or "-", change, alpha, layout)
        groups[key] = groups.get(key, 0) + 1
    rows = [[*key, n] for key, n in groups.items()]
    if not rows:
        return "no normalization layers found"
    table = [(f"{r[0]} ×{r[5]}" if r[5] > 1 else r[0], r[1], r[2], r[3], r[4]) for r in rows]
    head = ("layer", "role", "change", "α₀", "layout")
    widths = [max(len(str(c)) for c in col) for col in zip(head, *table)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (head, *table)]
    replaced = sum(not s.skipped for s in swaps)
    skipped = sum(s.skipped for s in swaps)
    return "\n".join(lines + [f"{replaced} replaced, {skipped} skipped"])
