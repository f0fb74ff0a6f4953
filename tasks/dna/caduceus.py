"""Caduceus (Schiff et al., "Caduceus: Bi-Directional Equivariant Long-Range DNA Sequence Modeling",
ICML 2024): pre-RMSNorm blocks of BiMamba, a Mamba (Gu & Dao, 2023) run over the sequence and over its
reverse with the input and output projections shared, the two outputs added.

Reverse-complement (RC) symmetry, `rc`:
- "ps" (Caduceus-PS, parameter sharing): the backbone runs on the sequence and on its reverse complement
  with the same weights. Caduceus writes this as one hidden state of 2·d channels [h(x), flip(h(rc x))]; the
  heads here read the two halves directly. The MLM head is RC-equivariant (logits(rc x) = the complement of
  logits(x), reversed) and the classifier RC-invariant, exactly.
- "ph" (Caduceus-Ph, post-hoc): a plain model trained with RC augmentation; in eval mode the classifier
  averages its logits over both strands.
- "none": a plain bidirectional Mamba.

The selective scan is a compact pure-torch loop over positions (states [B, D, N]); see `selective_scan`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.genome import COMPLEMENT, NUCLEOTIDES, VOCAB_SIZE, reverse_complement
from . import load_legacy_embed_scale, mean_pool


def selective_scan(u, dt, A, B, C):
    """Mamba's SSM, h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t and y_t = C_t · h_t, for u, Δ [B, L, D],
    A [D, N], B, C [B, L, N]. A loop over positions on [B, D, N] states: `unbind` keeps each step's backward
    cheap (indexing would make every step's gradient a full-size tensor, as in transformers' CPU path)."""
    decay = torch.exp(dt.unsqueeze(-1) * A)  # [B, L, D, N]
    inject = (dt * u).unsqueeze(-1) * B.unsqueeze(2)  # [B, L, D, N]
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    states = []
    for a, b in zip(decay.unbind(1), inject.unbind(1)):
        h = torch.addcmul(b, a, h)
        states.append(h)
    return (torch.stack(states, 1) @ C.unsqueeze(-1)).squeeze(-1)


class SelectiveSSM(nn.Module):
    """One direction of Mamba (v1) between its projections: causal depthwise conv → SiLU → selective SSM
    with input-dependent Δ, B, C, plus the skip D·u."""

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int, dt_min: float = 1e-3,
                 dt_max: float = 0.1):
        super().__init__()
        self.dt_rank, self.d_state = dt_rank, d_state
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, padding=d_conv - 1, groups=d_inner)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(d_inner, 1))  # S4D-real
        self.D = nn.Parameter(torch.ones(d_inner))
        with torch.no_grad():  # Δ starts log-uniform in [dt_min, dt_max]: dt_proj.bias = softplus⁻¹(Δ)
            nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
            dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # [B, L, d_inner]
        length = u.shape[1]
        u = F.silu(self.conv1d(u.transpose(1, 2))[..., :length]).transpose(1, 2)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        return selective_scan(u, dt, -torch.exp(self.A_log), B, C) + u * self.D


class BiMamba(nn.Module):
    """Mamba over the sequence and over its reverse, projections shared, outputs added (Caduceus's
    BiMamba with weight tying): x → in_proj → (u, z);
    y = out_proj((ssm_fwd(u) + flip(ssm_rev(flip(u)))) · SiLU(z)).
    Both directions share z and out_proj, so adding after the projection, as Caduceus does, is the same."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        d_inner, dt_rank = expand * d_model, math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.fwd = SelectiveSSM(d_inner, d_state, d_conv, dt_rank)
        self.rev = SelectiveSSM(d_inner, d_state, d_conv, dt_rank)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x):  # [B, L, d_model]
        u, z = self.in_proj(x).chunk(2, dim=-1)
        y = self.fwd(u) + self.rev(u.flip(1)).flip(1)
        return self.out_proj(y * F.silu(z))


class CaduceusBlock(nn.Module):
    """x + BiMamba(RMSNorm(x))."""

    def __init__(self, d_model: int, **mamba_args):
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.mixer = BiMamba(d_model, **mamba_args)

    def forward(self, x):
        return x + self.mixer(self.norm(x))


class Caduceus(nn.Module):
    """Tokens [B, L] → masked-nucleotide logits [B, L, 4] over A, C, G, T (head tied to the embedding), or, with
    `num_classes`, class logits [B, num_classes] from the mean over positions. `d_model` is the width of
    one strand (Caduceus-PS's hidden state has 2·d_model channels)."""

    def __init__(self, d_model: int, n_layer: int, num_classes: int | None = None, rc: str = "ps",
                 vocab_size: int = VOCAB_SIZE, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        if rc not in ("ps", "ph", "none"):
            raise ValueError(f"rc={rc!r}: use ps (equivariant), ph (post-hoc conjoining) or none")
        self.rc = rc
        self.embed = nn.Embedding(vocab_size, d_model)
        self.embed_scale = None  # a learnable (1,) scale after the embedding, set by the task for DyT-like norms
        self.register_load_state_dict_pre_hook(load_legacy_embed_scale)
        self.blocks = nn.ModuleList(CaduceusBlock(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
                                    for _ in range(n_layer))
        self.norm_f = nn.RMSNorm(d_model, eps=1e-5)
        self.classifier = nn.Linear(d_model, num_classes) if num_classes else None
        nn.init.normal_(self.embed.weight, std=0.02)
        for block in self.blocks:  # Mamba's rescaling of the residual branch by depth
            with torch.no_grad():
                block.mixer.out_proj.weight /= math.sqrt(n_layer)
        self.register_buffer("complement", COMPLEMENT[:NUCLEOTIDES].clone(), persistent=False)

    def no_weight_decay(self) -> list[str]:
        return [name for name, _ in self.named_parameters() if name.endswith(("A_log", ".D"))]

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        if self.embed_scale is not None:
            h = h * self.embed_scale
        for block in self.blocks:
            h = block(h)
        return self.norm_f(h)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.rc == "ps":
            rc_tokens = reverse_complement(tokens)
            h, h_rc = self.features(torch.cat([tokens, rc_tokens])).chunk(2)
            if self.classifier is None:  # forward-strand logits + complement of the reverse strand's
                head = self.embed.weight
                return F.linear(h, head[:NUCLEOTIDES]) + F.linear(h_rc.flip(1), head[self.complement])
            return self.classifier((mean_pool(h, tokens) + mean_pool(h_rc, rc_tokens)) / 2)
        if self.classifier is None:
            return F.linear(self.features(tokens), self.embed.weight[:NUCLEOTIDES])
        logits = self.classifier(mean_pool(self.features(tokens), tokens))
        if self.rc == "ph" and not self.training:
            rc_tokens = reverse_complement(tokens)
            logits = (logits + self.classifier(mean_pool(self.features(rc_tokens), rc_tokens))) / 2
        return logits
