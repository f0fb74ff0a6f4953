"""DyT and its point-wise relatives: `γ·f(α·x [+ s]) + β`, no statistics, no ε.

One base class serves every variant so that any norm can become any other (see `dyt.convert`):
the squashing function, scalar or per-channel α, fixed α (the no-α ablation), affine-ness, bias-ness
and the layout (channels-last, or channels-first for NCHW tensors as in ConvNeXt) are all switches.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .functional import POINTWISE, dynamic_tanh, pointwise_norm
from .kernels import dispatch
from .kernels.dispatch import check_kernel, compiled, get_default_kernel

Shape = int | Sequence[int]


def _as_shape(normalized_shape: Shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(int(s) for s in normalized_shape)


class PointwiseNorm(nn.Module):
    """`γ·f(α·x) + β` where f is the class's squashing function, or `fn`: any function of the registry
    `dyt.functional.POINTWISE` (DyISRU is `PointwiseNorm(C, fn="isru")`).

    Args:
        normalized_shape: the trailing shape γ and β cover (channels-last), or the channel count C
            (channels-first, γ and β broadcast as [C, 1, 1] over NCHW).
        alpha_init: α₀. The paper's default is 0.5 outside LLMs.
        channels_last: False for NCHW tensors (ConvNeXt's LayerNorm2d).
        elementwise_affine: False gives `f(α·x)` alone (DiT, whose adaLN supplies scale and shift).
        bias: False drops β (LLaMA, the RMSNorm analogue).
        learn_alpha: False keeps α fixed at α₀ (with α₀ = 1 this is the paper's no-α ablation).
        alpha_per_channel: one α per channel instead of the paper's single scalar.
        kernel: the implementation (`dyt.kernels`): "auto" (fused where it applies: tanh and isru on CPU and
            CUDA), "eager", "compiled", "cpu", "triton"; None (default) follows the process default
            (`dyt.kernels.set_default_kernel`). Functions without a fused kernel (hardtanh, sigmoid, erf, and
            new ones) run the eager formula unless "compiled" is asked for.
        fn: the point-wise function, a name in `dyt.functional.POINTWISE`; default: the class's.
    """

    fn = "tanh"

    def __init__(
        self,
        normalized_shape: Shape,
        alpha_init: float = 0.5,
        channels_last: bool = True,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        learn_alpha: bool = True,
        alpha_per_channel: bool = False,
        kernel: str | None = None,
        fn: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not alpha_init > 0:
            raise ValueError(f"alpha_init must be > 0, got {alpha_init}")
        if fn is not None:
            if fn not in POINTWISE:
                raise ValueError(f"unknown point-wise function {fn!r}; known: {', '.join(POINTWISE)}")
            self.fn = fn
        self.normalized_shape = _as_shape(normalized_shape)
        if not channels_last and len(self.normalized_shape) != 1:
            raise ValueError("channels-first layout normalises one channel dim: give normalized_shape=C")
        self.alpha_init = float(alpha_init)
        self.channels_last = channels_last
        self.elementwise_affine = elementwise_affine
        self.alpha_per_channel = alpha_per_channel
        self.kernel = check_kernel(kernel)
        factory = {"device": device, "dtype": dtype}
        alpha = torch.empty(self.normalized_shape[-1] if alpha_per_channel else 1, **factory)
        if learn_alpha:
            self.alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("alpha", alpha)
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    @property
    def learn_alpha(self) -> bool:
        return isinstance(self.alpha, nn.Parameter)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(self.alpha_init)
            if self.weight is not None:
                self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    @property
    def width(self) -> int:
        """C, the number of elements γ covers (DyISRU's √C)."""
        return math.prod(self.normalized_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.pointwise(x, self.alpha, self.weight, self.bias, fn=self.fn, width=self.width,
                                  channels_last=self.channels_last, kernel=self.kernel)

    def _formula(self, x: torch.Tensor, *params: torch.Tensor | None, **kwargs) -> torch.Tensor:
        """The formula, compiled when the layer's kernel (or the process default) says "compiled"."""
        if (self.kernel or get_default_kernel()) == "compiled":
            return compiled(self.fn, self.channels_last)(x, *params, width=self.width, **kwargs)
        return pointwise_norm(x, *params, fn=self.fn, channels_last=self.channels_last, width=self.width, **kwargs)

    def extra_repr(self) -> str:
        shape = self.normalized_shape[0] if len(self.normalized_shape) == 1 else self.normalized_shape
        parts = [
            f"{shape}",
            *([f"fn={self.fn}"] if self.fn != type(self).fn else []),
            f"alpha_init={self.alpha_init:g}",
            "channels_last" if self.channels_last else "channels_first",
        ]
        if not self.elementwise_affine:
            parts.append("elementwise_affine=False")
        elif self.bias is None:
            parts.append("bias=False")
        if not self.learn_alpha:
            parts.append("learn_alpha=False")
        if self.alpha_per_channel:
            parts.append("alpha_per_channel=True")
        if self.kernel is not None:
            parts.append(f"kernel={self.kernel}")
        return ", ".join(parts)


class DynamicTanh(PointwiseNorm):
    """DyT (Zhu et al., CVPR 2025): `γ·tanh(α·x) + β` with α one learnable scalar; by default the fused
    one-pass kernels of `dyt.kernels` (see `kernel`)."""

    fn = "tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn != "tanh":  # DynamicTanh(C, fn=…) is PointwiseNorm(C, fn=…)
            return super().forward(x)
        return dynamic_tanh(x, self.alpha, self.weight, self.bias, channels_last=self.channels_last,
                            kernel=self.kernel)


class DynamicHardTanh(PointwiseNorm):
    """The paper's squashing ablation: `γ·hardtanh(α·x) + β`."""

    fn = "hardtanh"


class DynamicSigmoid(PointwiseNorm):
    """The paper's squashing ablation: `γ·sigmoid(α·x) + β`."""

    fn = "sigmoid"


class Derf(PointwiseNorm):
    """Derf (arXiv 2512.10938): `γ·erf(α·x + s) + β`, α₀ = 0.5 and a learnable scalar shift s₀ = 0."""

    fn = "erf"

    def __init__(self, normalized_shape: Shape, alpha_init: float = 0.5, *args, shift_init: float = 0.0, **kwargs):
        self.shift_init = float(shift_init)
        super().__init__(normalized_shape, alpha_init, *args, **kwargs)

    def reset_parameters(self) -> None:
        if not hasattr(self, "shift"):
            self.shift = nn.Parameter(torch.empty(1, device=self.alpha.device, dtype=self.alpha.dtype))
        super().reset_parameters()
        with torch.no_grad():
            self.shift.fill_(self.shift_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._formula(x, self.alpha, self.weight, self.bias, shift=self.shift)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", shift_init={self.shift_init:g}"


SQUASHING_CLASSES: dict[str, type[PointwiseNorm]] = {
    cls.fn: cls for cls in (DynamicTanh, DynamicHardTanh, DynamicSigmoid, Derf)
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of NCHW tensors (as timm's LayerNorm2d), the ConvNeXt baseline."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class RMSNorm2d(nn.RMSNorm):
    """RMSNorm over the channel dim of NCHW tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class ScaledEmbedding(nn.Embedding):
    """`embed(x)·s` with one learnable scalar s: without it DyT's early activations are too small.

    s has shape (1,), as the paper's `shared_scale` (jiachenzhu/DyT other_tasks/LLaMA/fms_fsdp/models/llama.py):
    FSDP2's `fully_shard` rejects 0-dim parameters. Checkpoints written when s was 0-dim still load."""

    @classmethod
    def wrap(cls, embedding: nn.Embedding, scale: float) -> "ScaledEmbedding":
        # built on the meta device and handed the existing weight: no memory, and no draw from the RNG,
        # so a DyT run keeps the non-norm weights of the RMSNorm run with the same seed
        with torch.device("meta"):
            scaled = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx)
        scaled.weight = embedding.weight
        scaled.scale = nn.Parameter(torch.full((1,), scale, device=embedding.weight.device, dtype=embedding.weight.dtype))
        return scaled

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the load shim: a 0-dim scale from an older checkpoint becomes shape (1,) (load_state_dict hands each
        # module a copy of the dict, so rewriting the entry is the usual way: BatchNorm does it too)
        key = prefix + "scale"
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, learnable scale"
