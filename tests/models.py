"""Tiny models from the libraries the suite supports, built from configs (nothing is downloaded)."""
import timm
import torch
from torch import nn


def tiny_vit(**kwargs):
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=3, **kwargs)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def tiny_wav2vec2(**kwargs):
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_feat_extract_layers=2,
                            codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8,
                            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, **kwargs)
    return Wav2Vec2ForPreTraining(config)


def tiny_diffusers_dit():
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2,
                                 sample_size=8, patch_size=2, num_embeds_ada_norm=10)


class NextMonthRMSNorm(nn.Module):
    """A weight-only RMSNorm as a model family released after this code would write it."""

    def __init__(self, dim, eps=1e-6, offset=False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))
        self.eps, self.offset = eps, offset

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * (1 + self.weight if self.offset else self.weight)
