"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023), compact and with the official
code's module names (facebookresearch/DiT models.py), so its checkpoints load by name.

Patchify (timm's PatchEmbed) + fixed 2-D sin-cos positions; timestep embedding (sinusoid → MLP) plus class
embedding (with an extra null class for classifier-free guidance, dropped with probability `class_dropout`
in training) gives the condition c; each block is adaLN: LayerNorm without affine, then scale and shift
(and a residual gate) regressed from c. The final layer is adaLN too.

The adaLN-Zero initialisation (modulation and final layer at zero) is a separate step, `zero_init_()`,
so a model is always drawn with the same random weights and zeroed afterwards if wanted: the paper removes
it for DyT and keeps it for LayerNorm.
"""
from __future__ import annotations

import torch
from diffusers.models.embeddings import LabelEmbedding, get_2d_sincos_pos_embed, get_timestep_embedding
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Attention
from torch import nn

# the paper's registry: name → (depth, hidden size, heads, patch)
SIZES = {f"DiT-{name}/{patch}": (depth, hidden, heads, patch)
         for name, (depth, hidden, heads) in {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
                                              "XL": (28, 1152, 16)}.items()
         for patch in (2, 4, 8)}
# CPU-scale sizes for 32×32 pixel-space digits
SIZES["cpu"] = (6, 256, 8, 8)  # 16 tokens of 8×8 pixels: more width per token beat patch 4 at equal time
SIZES["debug"] = (2, 32, 2, 8)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """DiT's: a 256-d [cos, sin] sinusoid of t (max period 10000) through a two-layer SiLU MLP."""

    def __init__(self, hidden: int, frequencies: int = 256):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = get_timestep_embedding(t, self.frequencies, flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads=heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """`forward(x [N, C, H, W], t [N], y [N]) → [N, C or 2C, H, W]`: ε (and, with `learn_sigma`, the
    interpolation v of the log-variance between β_t and the posterior's, as in DiT/ADM). Class id
    `num_classes` is the null class of classifier-free guidance."""

    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, class_dropout: float = 0.1,
                 num_classes: int = 1000, learn_sigma: bool = True):
        super().__init__()
        self.in_channels, self.patch_size, self.num_classes = in_channels, patch_size, num_classes
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedding(num_classes, hidden_size, class_dropout)
        grid = input_size // patch_size
        pos = get_2d_sincos_pos_embed(hidden_size, grid, base_size=grid, device=torch.device("cpu"))
        self.register_buffer("pos_embed", pos.float().unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """DiT's initialisation without its zeroing (see `zero_init_`)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

    def zero_initialised(self) -> list[nn.Linear]:
        """The layers adaLN-Zero starts at zero: every modulation regressor and the final projection."""
        return [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                               self.final_layer.linear]

    @torch.no_grad()
    def zero_init_(self) -> None:
        for layer in self.zero_initialised():
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, p·p·C] → [N, C, H, W]."""
        p, c = self.patch_size, self.out_channels
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)  # drops labels in training mode
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


def build_dit(size: str, **kwargs) -> DiT:
    if size not in SIZES:
        raise ValueError(f"unknown DiT size {size!r}; known: {', '.join(SIZES)}")
    depth, hidden, heads, patch = SIZES[size]
    return DiT(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch, **kwargs)
