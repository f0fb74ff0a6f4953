"""What the self-supervised ViT tasks share (the paper's Table 2: MAE and DINO): two stages, a timm ViT
backbone, a k-NN probe of the frozen features, and the MAE fine-tuning recipe.

`task.stage=pretrain`: the method's objective on unlabelled images (the subclass's model and loss); every
evaluation scores the frozen features by a weighted k-NN vote over a bank of training images (`val/knn_acc`,
the headline), DINO's eval_knn.py protocol, so a sweep sees representation quality without a fine-tuning run.
`task.stage=finetune`: image classification from the pretrained backbone, chained by `init_from=<pretraining
run>` (the backbone's weights load, the pooling norm and the head are new), with the MAE fine-tuning recipe:
layer-wise lr decay (`trainer.optim.layer_decay`, BEiT's rule as facebookresearch/mae util/lr_decay.py),
drop path, mixup / cutmix, label smoothing, RandAugment and random erasing (the image-classification task's
data and loss). Without `init_from` the same command is the from-scratch reference of the same shape and budget.

The fine-tuned classifier keeps the backbone at the module path the pretraining gave it (`encoder` in MAE,
`teacher.backbone` in DINO, whose fine-tuning starts from the teacher as DINO's evaluations do), so
`init_from` finds every backbone tensor by name.
"""
from __future__ import annotations

import re
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from dyt.train.config import ConfigError
from dyt.train.task import Headline

from .data.image_folder import check_image_folder, image_folder
from .image_classification import ImageClassification

STAGES = ("pretrain", "finetune")
# size → (timm model, overrides): the paper's backbones, and CPU sizes shaped for 28×28 digits (patch 4: 7×7
# patches, so that 75% masking leaves 12 visible and a 12-pixel local crop is 3×3 patches)
BACKBONES = {
    "debug": ("vit_tiny_patch16_224", dict(patch_size=7, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2)),
    "cpu": ("vit_tiny_patch16_224", dict(patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2)),
    "B/16": ("vit_base_patch16_224", {}),
    "B/8": ("vit_base_patch8_224", {}),
    "L/16": ("vit_large_patch16_224", {}),
}
# DINO's eval_knn.py and main_dino.py normalise ImageNet images with these (torchvision's) statistics
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP (FSDP2 shards in place: the model is its own)."""
    return getattr(model, "module", model)


class BackboneClassifier(nn.Module):
    """A timm ViT classifier kept at the module path `path` (e.g. `teacher.backbone`): its parameters are named
    as the pretraining named the backbone's, so `init_from` loads them."""

    def __init__(self, vit: nn.Module, path: str):
        super().__init__()
        *parents, leaf = path.split(".")
        node = self
        for part in parents:
            node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.add_module(leaf, vit)
        self.path = path

    @property
    def vit(self) -> nn.Module:
        return self.get_submodule(self.path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit(images)

    def no_weight_decay(self) -> set[str]:
        """timm's list (position embedding, class token) under this path: the `listed` weight-decay rule."""
        return {f"{self.path}.{name}" for name in self.vit.no_weight_decay()}


def vit_lr_scale(name: str, num_blocks: int, layer_decay: float) -> float:
    """BEiT's layer-wise lr decay as facebookresearch/mae util/lr_decay.py assigns it (`name` relative to the
    ViT): the patch embedding, class token and position embedding are layer 0, block i is layer i + 1, all else
    (final norms, head) layer num_blocks + 1, and layer l trains at layer_decay^(num_blocks + 1 − l) × the lr."""
    if name in ("cls_token", "pos_embed", "reg_token") or name.startswith("patch_embed"):
        layer = 0
    elif name.startswith("blocks."):
        layer = int(name.split(".")[1]) + 1
    else:
        layer = num_blocks + 1
    return layer_decay ** (num_blocks + 1 - layer)


@torch.no_grad()
def knn_predict(features: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Weighted k-NN of facebookresearch/dino eval_knn.py `knn_classifier`: cosine similarities of the
    L2-normalised features to the bank's, the k most similar vote for their class with weight exp(sim / T);
    the class with the most weight wins. Returns the predicted classes."""
    similarity = F.normalize(features.float(), dim=1) @ bank.T
    top, index = similarity.topk(min(k, len(bank)), dim=1)
    votes = torch.zeros(len(features), num_classes, device=features.device)
    votes.scatter_add_(1, bank_labels[index], (top / temperature).exp())
    return votes.argmax(1)


def plot_knn_curve(run_dir: Path, out: Path) -> Path | None:
    """The k-NN accuracy of the evaluations in a run's metrics.jsonl, against the step."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    points = [(r["step"], r["val/knn_acc"]) for r in rows if "val/knn_acc" in r]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(*zip(*points), "o-")
    ax.set_xlabel("step")
    ax.set_ylabel("val k-NN top-1")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


class SelfSupervisedViT(ImageClassification):
    """Two stages on one ViT backbone. Subclasses give `backbone_path` (where the pretraining model keeps the
    backbone that fine-tuning starts from) and the pretraining stage: `build_pretrain_model`,
    `pretrain_data`, `pretrain_loss`, `features` (the frozen features the k-NN probe scores)."""

    backbone_path = ""
    # the final norms (encoder, decoder, pooled features) are `final`; in-block ones follow dyt's defaults
    norm_roles = {r"(^|\.)(norm|fc_norm|decoder_norm)$": "final"}
    shard_units = r"(.*\.)?(decoder_)?blocks\.\d+"  # every ViT block: encoder, decoder, student and teacher
    prefers_channels_last = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.finetune = cfg.stage == "finetune"
        self.headline = Headline("val/acc", True) if self.finetune else Headline("val/knn_acc", True)
        self.knn_bank = None

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.stage not in STAGES:
            raise ConfigError(f"task.stage={cfg.stage} is unknown; use pretrain or finetune")
        if cfg.size not in BACKBONES:
            raise ConfigError(f"task.size={cfg.size} is unknown for {cfg.name}; known: {', '.join(BACKBONES)}")
        check_image_folder(cfg.data, needs_val=True)  # pretraining reads all of train/: validation is its own folder

    @staticmethod
    def patch_size(cfg) -> int:
        """The backbone's patch size: `task.model.kwargs.patch_size`, the size's preset, or timm's name."""
        name, preset = BACKBONES[cfg.size]
        kwargs = cfg.model.get("kwargs") or {}
        return int(kwargs.get("patch_size") or preset.get("patch_size") or re.search(r"patch(\d+)", name).group(1))

    # ------------------------------------------------------------ models

    def backbone(self, **kwargs) -> nn.Module:
        """The timm ViT of `task.size` for these images (`task.model.kwargs` on top), with LayerNorm."""
        name, preset = BACKBONES[self.cfg.size]
        options = {"img_size": self.image_size, **preset, **(self.cfg.model.get("kwargs") or {}), **kwargs}
        return timm.create_model(name, pretrained=False, in_chans=self.channels, **options)

    def build_model(self) -> nn.Module:
        if not self.finetune:
            return self.build_pretrain_model()
        # MAE's models_vit.py with global_pool: the patch tokens averaged, then fc_norm (the encoder's final
        # norm is dropped), a new linear head; main_finetune.py initialises it with trunc_normal_(std=2e-5)
        vit = self.backbone(num_classes=self.num_classes, global_pool="avg",
                            drop_path_rate=self.cfg.model.drop_path_rate)
        nn.init.trunc_normal_(vit.head.weight, std=2e-5)
        return BackboneClassifier(vit, self.backbone_path)

    def build_pretrain_model(self) -> nn.Module:
        raise NotImplementedError

    def lr_scale(self, name: str, layer_decay: float) -> float:
        """Layer-wise lr decay over the backbone's blocks; parameters outside the backbone count as its last
        layer (lr × 1)."""
        prefix = self.backbone_path + "."
        return vit_lr_scale(name.removeprefix(prefix) if name.startswith(prefix) else "", self._depth(), layer_decay)

    def _depth(self) -> int:
        """The backbone's number of blocks (of a copy built on the meta device: no memory, no random draws)."""
        if not hasattr(self, "_num_blocks"):
            with torch.device("meta"):
                self._num_blocks = len(self.backbone().blocks)
        return self._num_blocks

    # ------------------------------------------------------------ data

    def build_data(self):
        if self.finetune:
            return super().build_data()
        train, val, bank = self.pretrain_data()
        self.knn_bank = bank
        return train, val

    def pretrain_data(self):
        """(training images for the objective, labelled validation images, the k-NN bank: labelled training
        images without augmentation)."""
        raise NotImplementedError

    def _digits(self):
        """The embedded digits: (train images, train labels, val images, val labels) as uint8 and int64."""
        from .data.mnist import mnist_digits, split_indices

        images, labels = mnist_digits()
        train_idx, val_idx = split_indices(labels, self.cfg.data.val_fraction)
        return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]

    def _eval_sets(self):
        """(validation set, k-NN bank) without augmentation: the digits as they are; ImageNet resized to 256
        and centre-cropped to 224, bicubic (DINO eval_knn.py, MAE's evaluation transform)."""
        from torch.utils.data import Subset

        from .data.mnist import DigitImages

        knn = self.cfg.knn
        if self.embedded:  # batched by collate_digits (the subclass's collate_fn)
            train_x, train_y, val_x, val_y = self._digits()
            size = self.cfg.data.digit_size
            bank, val = DigitImages(train_x, train_y, pad_to=size), DigitImages(val_x, val_y, pad_to=size)
        else:
            from timm.data import create_transform
            root = Path(self.cfg.data.root)
            transform = create_transform(self.image_size, is_training=False, interpolation="bicubic",
                                         crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD)
            bank, val = image_folder(root / "train", transform), image_folder(root / "val", transform)
        if knn.bank_size and knn.bank_size < len(bank):  # a fixed random subset: the same at every evaluation
            chosen = torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[:knn.bank_size]
            bank = Subset(bank, chosen.sort().values.tolist())
        return val, bank

    # ------------------------------------------------------------ loss and evaluation

    def loss(self, model, batch):
        if self.finetune:
            return super().loss(model, batch)
        if not model.training:
            # a sharded evaluation pads a lighter process with uncounted forwards of a validation batch: the
            # forward the evaluation runs, so every process gathers the same parameters
            return self.features(model, batch[0]).sum() * 0, {}
        return self.pretrain_loss(model, batch)

    def pretrain_loss(self, model, batch):
        raise NotImplementedError

    def features(self, model, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def count(self, batch):
        return len(batch[-1]), None  # labels last: a multi-crop batch's first entry is its list of crops

    @torch.no_grad()
    def evaluate(self, model, batches, reduce):
        if self.finetune:
            return super().evaluate(model, batches, reduce)
        device = next(model.parameters()).device
        self.reset_eval_randomness()
        bank, bank_labels = self._bank_features(model, device)
        totals: dict[str, torch.Tensor] = {}
        for batch in batches:
            images, labels = batch
            predicted = knn_predict(self.features(model, images), bank, bank_labels, self.num_classes,
                                    self.cfg.knn.k, self.cfg.knn.temperature)
            sums = {"knn_correct": (predicted == labels).sum(), "count": torch.tensor(len(labels), device=device),
                    **self.eval_sums(model, images)}
            for key, value in sums.items():
                totals[key] = totals.get(key, 0) + value.detach().double()
        totals = {k: float(v) for k, v in reduce(totals).items()}
        count = totals.pop("count")
        metrics = {"knn_acc": totals.pop("knn_correct") / count}
        metrics.update({k.removesuffix("_sum"): v / count for k, v in totals.items()})
        return metrics

    def eval_sums(self, model, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Further sums over a validation batch (e.g. MAE's reconstruction loss as `loss_sum`)."""
        return {}

    def reset_eval_randomness(self) -> None:
        """Called before each evaluation (MAE: the same masks at every evaluation)."""

    def _bank_features(self, model, device):
        """The k-NN bank's features, L2-normalised, computed whole on every process (equal forwards on each, as
        a sharded model needs) and its labels."""
        from torch.utils.data import DataLoader

        loader = DataLoader(self.knn_bank, batch_size=self.cfg.knn.batch_size, shuffle=False,
                            collate_fn=self.collate_fn)
        features, labels = [], []
        for images, targets in loader:
            features.append(F.normalize(self.features(model, images.to(device)).float(), dim=1))
            labels.append(targets.to(device))
        return torch.cat(features), torch.cat(labels)


def digit_mean_std() -> tuple[tuple[float], tuple[float]]:
    from .data.mnist import MEAN, STD

    return (MEAN,), (STD,)


def denormalize(images: torch.Tensor, embedded: bool) -> torch.Tensor:
    """Normalised images back to [0, 1] for pictures."""
    mean, std = digit_mean_std() if embedded else (IMAGENET_MEAN, IMAGENET_STD)
    mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0, 1)

