"""Masked autoencoders (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022), the paper's
Table 2: pretrain a ViT by reconstructing the 75% of its patches it does not see, then fine-tune it.

The model is facebookresearch/mae models_mae.py `MaskedAutoencoderViT` on a timm ViT encoder: per-sample random
masking by argsort of uniform noise, the visible patches (with fixed 2-D sin-cos positions) through the encoder,
a light Transformer decoder of timm blocks over the encoded patches and a shared mask token, a linear
prediction of each patch's pixels, and the mean squared error over the masked patches only, of per-patch
normalised pixels with `norm_pix_loss`. Every LayerNorm, encoder's and decoder's, is converted like any other
task's (jiachenzhu/DyT other_tasks/MAE/dynamic-tanh.patch converts the whole MaskedAutoencoderViT).

    python train.py task=mae norm=dyt                                   # → outputs/mae/norm:dyt
    python train.py task=mae norm=dyt task.stage=finetune init_from=outputs/mae/norm:dyt
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from .ssl import IMAGENET_MEAN, IMAGENET_STD, SelfSupervisedViT, denormalize, plot_knn_curve, unwrap

log = logging.getLogger("dyt.train")


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
    """MAE's per-sample shuffle: the patches with the smallest noise are kept. x [N, L, D] → (the kept patches
    [N, int(L·(1 − mask_ratio)), D] in noise order, mask [N, L] with 1 = removed, the order that undoes the
    shuffle [N, L])."""
    n, length, dim = x.shape
    keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device) if noise is None else noise
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    kept = x.gather(1, shuffle[:, :keep, None].expand(-1, -1, dim))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    return kept, mask.gather(1, restore), restore


def sincos_position_embedding(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions with a zero row for the class token, [1, 1 + H·W, dim]: MAE's
    util/pos_embed.py frequencies (1/10000^(i/(dim/4)) per axis), from timm's builder, whose channels are MAE's
    in another fixed order (an equivalent embedding: every weight it meets is initialised channel-symmetrically)."""
    patches = build_sincos2d_pos_embed(list(grid), dim)
    return torch.cat([torch.zeros(1, dim), patches])[None]


class MaskedAutoencoder(nn.Module):
    """`MaskedAutoencoderViT` around a timm ViT encoder (num_classes=0, no pooling): its patch embedding, class
    token, position embedding (frozen, sin-cos), blocks and final norm are the encoder's, kept under `encoder.`
    so fine-tuning loads them by name."""

    def __init__(self, encoder: nn.Module, *, decoder_dim: int, decoder_depth: int, decoder_heads: int,
                 mask_ratio: float = 0.75, norm_pix_loss: bool = True):
        super().__init__()
        self.encoder = encoder
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        embed = encoder.patch_embed
        self.patch, self.channels, self.grid = embed.patch_size[0], embed.proj.in_channels, tuple(embed.grid_size)
        mlp_ratio = encoder.blocks[0].mlp.fc1.out_features / encoder.embed_dim  # models_mae: the encoder's
        layer_norm = partial(nn.LayerNorm, eps=1e-6)  # models_mae: partial(nn.LayerNorm, eps=1e-6)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + embed.num_patches, decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio, qkv_bias=True, norm_layer=layer_norm)
            for _ in range(decoder_depth))
        self.decoder_norm = layer_norm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch ** 2 * self.channels)
        self._initialize()

    @torch.no_grad()
    def _initialize(self) -> None:
        """models_mae.py initialize_weights: frozen sin-cos positions; the patch embedding as a linear layer
        (xavier_uniform over its flattened kernel); class and mask tokens normal(0.02); every nn.Linear
        xavier_uniform with zero bias (the encoder's too); LayerNorm ones and zeros."""
        self.encoder.pos_embed.requires_grad_(False)
        self.encoder.pos_embed.copy_(sincos_position_embedding(self.grid, self.encoder.embed_dim))
        self.decoder_pos_embed.copy_(sincos_position_embedding(self.grid, self.decoder_pos_embed.shape[-1]))
        weight = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------ patches

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] → [N, L, p·p·C], each patch's pixels in (row, column, channel) order as models_mae."""
        n, c, h, w = images.shape
        p = self.patch
        x = images.reshape(n, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        n, (h, w), p, c = len(patches), self.grid, self.patch, self.channels
        x = patches.reshape(n, h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(n, c, h * p, w * p)

    # ------------------------------------------------------------ forward

    def encode(self, images: torch.Tensor, noise: torch.Tensor | None = None):
        encoder = self.encoder
        x = encoder.patch_embed(images) + encoder.pos_embed[:, 1:]
        x, mask, restore = random_masking(x, self.mask_ratio, noise)
        cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(len(x), -1, -1)
        x = encoder.blocks(encoder.norm_pre(torch.cat([cls, x], dim=1)))
        return encoder.norm(x), mask, restore

    def decode(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        masked = self.mask_token.expand(len(x), restore.shape[1] + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], masked], dim=1)  # the class token is set aside while unshuffling
        patches = patches.gather(1, restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """The patches to predict: pixels, or with norm_pix_loss each patch normalised by its own mean and
        (unbiased) variance, + 1e-6."""
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def reconstruction_loss(self, images, pred, mask) -> torch.Tensor:
        """Mean squared error per patch, averaged over the removed patches only (models_mae forward_loss)."""
        per_patch = (pred.float() - self.target(images).float()).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None, features: bool = False):
        """(loss, predicted patches, mask), or with `features=True` the frozen features of the whole image: the
        encoder's patch tokens after its final norm, averaged (MAE fine-tunes on averaged patch tokens)."""
        if features:
            tokens = self.encoder.forward_features(images)
            return tokens[:, self.encoder.num_prefix_tokens:].mean(dim=1)
        latent, mask, restore = self.encode(images, noise)
        pred = self.decode(latent, restore)
        return self.reconstruction_loss(images, pred, mask), pred, mask


class MaskedAutoencoderTask(SelfSupervisedViT):
    backbone_path = "encoder"

    def build_pretrain_model(self) -> nn.Module:
        mae = self.cfg.mae
        # models_mae.py: no drop path in pretraining; no pooling (the decoder reads every token)
        encoder = self.backbone(num_classes=0, global_pool="", drop_path_rate=0.0)
        return MaskedAutoencoder(encoder, decoder_dim=mae.decoder.dim, decoder_depth=mae.decoder.depth,
                                 decoder_heads=mae.decoder.heads, mask_ratio=mae.mask_ratio,
                                 norm_pix_loss=mae.norm_pix_loss)

    def pretrain_data(self):
        val, bank = self._eval_sets()
        if self.embedded:
            from .data.mnist import DigitImages, collate_digits

            # the digits' augmentation (the image-classification task's small shifts and rotations, a batch at a
            # time) in place of main_pretrain.py's RandomResizedCrop(0.2–1) + flip, which would cut digits apart
            # and mirror them
            train_x, train_y, _, _ = self._digits()
            self.collate_fn = collate_digits
            return (DigitImages(train_x, train_y, augment=self.cfg.augment.digits, pad_to=self.cfg.data.digit_size),
                    val, bank)
        from torchvision import transforms
        from .data.image_folder import image_folder

        # main_pretrain.py's transform_train
        transform = transforms.Compose([
            transforms.RandomResizedCrop(self.image_size, scale=tuple(self.cfg.mae.crop_scale),
                                         interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        return image_folder(Path(self.cfg.data.root) / "train", transform), val, bank

    def pretrain_loss(self, model, batch):
        loss, _, _ = model(batch[0])
        return loss, {}

    def features(self, model, images):
        return model(images, features=True)

    # ------------------------------------------------------------ evaluation: k-NN and the loss on fixed masks

    def reset_eval_randomness(self) -> None:
        self._eval_masks = torch.Generator().manual_seed(0)

    def eval_sums(self, model, images):
        """The reconstruction loss of the validation images under masks drawn from a generator reset at every
        evaluation: the same masks at each evaluation and for every norm."""
        noise = torch.rand(len(images), unwrap(model).grid[0] * unwrap(model).grid[1], generator=self._eval_masks)
        loss, _, _ = model(images, noise=noise.to(images.device))
        return {"loss_sum": loss.float() * len(images)}

    # ------------------------------------------------------------ artifacts

    def on_run_end(self, model, run_dir, tracker) -> None:
        if self.finetune:
            return
        path = self.write_reconstructions(unwrap(model), Path(run_dir) / "reconstructions.png")
        tracker.log_image("reconstructions", path, 0)
        curve = plot_knn_curve(run_dir, Path(run_dir) / "knn_curve.png")
        log.info("reconstructions: %s%s", path, f"; k-NN curve: {curve}" if curve else "")

    @torch.no_grad()
    def write_reconstructions(self, model: MaskedAutoencoder, out: Path, count: int = 10) -> Path:
        """A grid of validation images, one column each (the digits: the first of each class): the masked input
        (removed patches grey), the reconstruction (the visible patches as they are, the removed ones
        predicted: the MAE demo's paste) and the original. With norm_pix_loss the model predicts normalised
        patches, so each predicted patch is shown with its true patch's mean and variance restored. Masks from a
        fixed seed: every run draws the same ones."""
        from torchvision.utils import save_image

        device = next(model.parameters()).device
        val, _ = self._eval_sets()
        if self.embedded:
            chosen = [int((val.labels == c).nonzero()[0]) for c in range(self.num_classes)][:count]
        else:
            chosen = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:count].tolist()
        batch = [val[i] for i in chosen]
        images = (self.collate_fn(batch)[0] if self.collate_fn else torch.stack([item[0] for item in batch])).to(device)
        noise = torch.rand(len(images), model.grid[0] * model.grid[1], generator=torch.Generator().manual_seed(0))
        _, pred, mask = model(images, noise=noise.to(device))
        pred = pred.float()
        if model.norm_pix_loss:
            patches = model.patchify(images)
            mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        removed = model.unpatchify(mask[..., None].expand(-1, -1, pred.shape[-1])).bool()  # [N, C, H, W]
        pasted = torch.where(removed, model.unpatchify(pred), images)  # the MAE demo's x·(1 − mask) + y·mask
        original = denormalize(images, self.embedded)
        grid = torch.cat([original.masked_fill(removed, 0.5), denormalize(pasted, self.embedded), original])
        if grid.shape[-1] < 64:  # small digits: 4× larger, pixels kept sharp
            grid = torch.nn.functional.interpolate(grid, scale_factor=4, mode="nearest")
        save_image(grid, out, nrow=len(images), padding=2, pad_value=1.0)
        return out
