"""HyenaDNA (Nguyen et al., "HyenaDNA: Long-Range Genomic Sequence Modeling at Single Nucleotide
Resolution", NeurIPS 2023): a decoder of pre-LayerNorm blocks whose token mixer is the Hyena operator
(Poli et al., "Hyena Hierarchy", ICML 2023), on single-nucleotide tokens.

Hyena operator of order 2: a projection to three streams (x0, x1, v), a short causal depthwise convolution
of each, then y = x0 · (h ∗ (x1 · v)) with h an implicit long filter as long as the sequence: a small MLP
with sine activations of a positional encoding, times an exponential decay window (fast for some channels,
slow for others). The convolution is computed by FFT in O(L log L) and made causal by zero-padding to 2L.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.genome import NUCLEOTIDES, VOCAB_SIZE
from . import load_legacy_embed_scale, mean_pool


class Sin(nn.Module):
    """sin(ω·x) with a learnable frequency per channel (the implicit filter's activation)."""

    def __init__(self, dim: int, w: float):
        super().__init__()
        self.freq = nn.Parameter(torch.full((1, dim), float(w)))

    def forward(self, x):
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    """The implicit long filter h[d, t] = MLP(z_t)[d] · exp(-|δ_d| t) for t in [0, 1] over `max_len`
    positions, plus a per-channel skip D (`bias`).

    The MLP is Linear → Sin, then `inner_mlps` × (Linear → Sin), then a bias-free Linear to d_model. The
    official filter (hyena-dna and caduceus `src/models/sequence/hyena.py`, `HyenaFilter`) has
    `num_inner_mlps=2` and one Sin module, with one learnable frequency, reused after every Linear
    (`shared_sin=True`); the compact CPU default has one inner layer and a Sin of its own after each."""

    def __init__(self, d_model: int, max_len: int, order: int = 64, emb_dim: int = 5, w: float = 10.0,
                 fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5, target: float = 1e-2,
                 inner_mlps: int = 1, shared_sin: bool = False):
        super().__init__()
        bands = (emb_dim - 1) // 2
        t = torch.linspace(0, 1, max_len)[:, None]
        angle = 2 * math.pi * torch.arange(max_len)[:, None] / max_len
        z = torch.exp(-1j * torch.linspace(1e-4, bands - 1, bands)[None] * angle)
        self.register_buffer("z", torch.cat([t, z.real, z.imag], dim=-1), persistent=False)  # [L, emb_dim]
        self.register_buffer("t", t, persistent=False)
        decay = torch.linspace(math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct, d_model)
        self.register_buffer("decay", decay.abs(), persistent=False)
        shared = Sin(order, w)

        def activation():
            return shared if shared_sin else Sin(order, w)

        layers = [nn.Linear(emb_dim, order), activation()]
        for _ in range(inner_mlps):
            layers += [nn.Linear(order, order), activation()]
        self.mlp = nn.Sequential(*layers, nn.Linear(order, d_model, bias=False))
        self.bias = nn.Parameter(torch.randn(d_model))

    def forward(self, length: int) -> torch.Tensor:
        """The filter for `length` positions: [d_model, length]."""
        return (self.mlp(self.z[:length]) * torch.exp(-self.t[:length] * self.decay)).T


def fft_conv(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Causal convolution of u [B, D, L] with k [D, L] by FFT, plus u · skip, computed in at least float32 and
    returned in u's dtype. Under fp16 autocast u arrives in half precision: cuFFT computes half only at
    power-of-two sizes, and a long sum in half loses the small filter taps; the official `fftconv_ref`
    likewise casts u to the (float32) filter's dtype and the result back."""
    length, dtype = u.shape[-1], u.dtype
    work = torch.promote_types(torch.promote_types(dtype, k.dtype), torch.float32)
    u, k = u.to(work), k.to(work)
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * length) * torch.fft.rfft(k, n=2 * length), n=2 * length)
    return (y[..., :length] + u * skip.to(work)[:, None]).to(dtype)


class HyenaOperator(nn.Module):
    def __init__(self, d_model: int, max_len: int, short_filter: int = 3, **filter_args):
        super().__init__()
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.short_filter = nn.Conv1d(3 * d_model, 3 * d_model, short_filter, padding=short_filter - 1,
                                      groups=3 * d_model)
        self.filter = HyenaFilter(d_model, max_len, **filter_args)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D]
        length = x.shape[1]
        x0, x1, v = self.short_filter(self.in_proj(x).transpose(1, 2))[..., :length].chunk(3, dim=1)
        v = fft_conv(v * x1, self.filter(length), self.filter.bias)
        return self.out_proj((v * x0).transpose(1, 2))


class HyenaBlock(nn.Module):
    """x + Hyena(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, d_inner: int, max_len: int, **operator_args):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.mixer = HyenaOperator(d_model, max_len, **operator_args)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_inner), nn.GELU(approximate="tanh"), nn.Linear(d_inner, d_model))

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HyenaDNA(nn.Module):
    """Tokens [B, L] → next-nucleotide logits [B, L, 4] over A, C, G, T (head tied to the embedding), or,
    with `num_classes`, class logits [B, num_classes] from the mean over positions. `max_len` is the
    filters' positional grid (the official `l_max`, the pretraining length + 2); shorter inputs use its
    first positions. `embed_dropout` drops embedding outputs (the official `embed_dropout`, 0.1)."""

    def __init__(self, d_model: int, n_layer: int, max_len: int, d_inner: int | None = None,
                 num_classes: int | None = None, vocab_size: int = VOCAB_SIZE, filter_order: int = 64,
                 emb_dim: int = 5, short_filter: int = 3, w: float = 10.0, filter_inner_mlps: int = 1,
                 filter_shared_sin: bool = False, embed_dropout: float = 0.0):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.embed_scale = None  # a learnable (1,) scale after the embedding, set by the task for DyT-like norms
        self.register_load_state_dict_pre_hook(load_legacy_embed_scale)
        self.embed_dropout = nn.Dropout(embed_dropout)
        self.blocks = nn.ModuleList(
            HyenaBlock(d_model, d_inner or 4 * d_model, max_len, short_filter=short_filter, order=filter_order,
                       emb_dim=emb_dim, w=w, inner_mlps=filter_inner_mlps, shared_sin=filter_shared_sin)
            for _ in range(n_layer))
        self.norm_f = nn.LayerNorm(d_model)
        self.classifier = nn.Linear(d_model, num_classes) if num_classes else None
        self.apply(self._init)
        for name, param in self.named_parameters():  # GPT-2 style: residual outputs scaled by depth
            if name.endswith(("mixer.out_proj.weight", "mlp.2.weight")):
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> list[str]:
        """The implicit filters train without weight decay, as in HyenaDNA."""
        return [name for name, _ in self.named_parameters() if ".filter." in name]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds the model's max_len {self.max_len}")
        h = self.embed(tokens)
        if self.embed_scale is not None:
            h = h * self.embed_scale
        h = self.embed_dropout(h)
        for block in self.blocks:
            h = block(h)
        h = self.norm_f(h)
        if self.classifier is None:
            return F.linear(h, self.embed.weight[:NUCLEOTIDES])
        return self.classifier(mean_pool(h, tokens))
