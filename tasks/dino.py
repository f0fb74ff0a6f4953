"""DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021), the paper's
Table 2: self-distillation with no labels, then fine-tuning.

facebookresearch/dino main_dino.py, item by item: a student and a teacher of the same architecture (a timm ViT
and DINO's projection head: a 3-layer MLP with GELU, L2 normalisation, and a weight-normalised last layer whose
norm is fixed at 1 with `norm_last_layer`); multi-crop, 2 global and several local crops (DataAugmentationDINO),
the teacher seeing only the global ones; the cross-entropy between the teacher's centred and sharpened softmax
and the student's, over every pair of different crops; the centre an EMA of the teacher's outputs (momentum
0.9, averaged over every process); the teacher temperature warmed up linearly per epoch; the teacher an EMA of
the student whose momentum rises from `momentum_teacher` to 1 by a cosine over the run; the last layer frozen
for the first epochs. The teacher is a submodule of the task's model that gets no gradients; this task, not
the trainer, moves it after every optimizer step. Every LayerNorm of student and teacher is converted
(jiachenzhu/DyT other_tasks/DINO/dynamic-tanh.patch converts both backbones; the heads have none).

    python train.py task=dino norm=dyt                                   # → outputs/dino/norm:dyt
    python train.py task=dino norm=dyt task.stage=finetune init_from=outputs/dino/norm:dyt

Fine-tuning starts from the teacher's backbone (DINO evaluates the teacher: eval_knn.py, eval_linear.py
`--checkpoint_key teacher`); the DyT repo fine-tunes DINO with MAE's code (other_tasks/DINO/README.md).
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dyt.train.config import ConfigError

from .ssl import IMAGENET_MEAN, IMAGENET_STD, SelfSupervisedViT, plot_knn_curve, unwrap

log = logging.getLogger("dyt.train")


# ---------------------------------------------------------------- model


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with torch's weight normalisation, w = g·v/‖v‖ (rows), as DINOHead's
    `nn.utils.weight_norm(nn.Linear(bottleneck, out, bias=False))` with g filled with 1. A plain module rather
    than torch's hook or parametrisation: its `frozen` pass detaches both tensors (the first epochs' frozen
    last layer), and nothing has to survive copying or sharding."""

    def __init__(self, in_dim: int, out_dim: int, learn_norm: bool = False):
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=learn_norm)

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        v, g = (self.weight_v.detach(), self.weight_g.detach()) if frozen else (self.weight_v, self.weight_g)
        return F.linear(x, g * v / v.norm(dim=1, keepdim=True))


class DinoHead(nn.Module):
    """vision_transformer.py DINOHead (no batch norm): MLP → L2 normalisation → weight-normalised layer."""

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        if layers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            dims = [in_dim] + [hidden_dim] * (layers - 1)
            modules = []
            for a, b in zip(dims[:-1], dims[1:]):
                modules += [nn.Linear(a, b), nn.GELU()]
            self.mlp = nn.Sequential(*modules, nn.Linear(hidden_dim, bottleneck_dim))
        for module in self.mlp.modules():  # DINOHead._init_weights, before the last layer exists
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_norm=not norm_last_layer)

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2), frozen=freeze_last_layer)


class MultiCrop(nn.Module):
    """utils.py MultiCropWrapper: one backbone pass per run of crops of equal resolution, one head pass."""

    def __init__(self, backbone: nn.Module, head: DinoHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[torch.Tensor], freeze_last_layer: bool = False) -> torch.Tensor:
        features, start = [], 0
        for end in range(1, len(crops) + 1):
            if end == len(crops) or crops[end].shape[-1] != crops[start].shape[-1]:
                features.append(self.backbone(torch.cat(crops[start:end])))
                start = end
        return self.head(torch.cat(features), freeze_last_layer)


class Dino(nn.Module):
    """Student and teacher (its weights copied from the student's, no gradients), the centre of the teacher's
    outputs, and how many student steps the teacher has followed (both buffers: they resume with the run)."""

    def __init__(self, student: MultiCrop, teacher: MultiCrop, out_dim: int, global_crops: int = 2):
        super().__init__()
        self.student, self.teacher, self.global_crops = student, teacher, global_crops
        teacher.load_state_dict(student.state_dict())  # main_dino.py: teacher and student start equal
        teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("teacher_steps", torch.zeros(1, dtype=torch.long))

    def forward(self, crops, freeze_last_layer: bool = False, features: bool = False):
        """(student outputs of every crop, teacher outputs of the global crops), crop after crop; with
        `features=True` (crops: a batch of images) the teacher backbone's class token, the k-NN features."""
        if features:
            return self.teacher.backbone(crops)
        with torch.no_grad():
            teacher = self.teacher(crops[:self.global_crops])
        return self.student(crops, freeze_last_layer), teacher

    def teacher_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher, student) parameters in matching order."""
        student = dict(self.student.named_parameters())
        names = [name for name, _ in self.teacher.named_parameters()]
        return [p for _, p in self.teacher.named_parameters()], [student[name] for name in names]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """main_dino.py: param_k ← m·param_k + (1 − m)·param_q, every teacher parameter."""
        teacher, student = self.teacher_pairs()
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, [p.detach() for p in student], alpha=1 - momentum)


def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, *, crops: int,
              global_crops: int, teacher_temp: float, student_temp: float):
    """main_dino.py DINOLoss.forward: the teacher's softmax of its centred outputs at `teacher_temp`, the
    student's log-softmax at `student_temp`, cross-entropy over every (teacher crop, other student crop) pair,
    averaged. Returns (loss, the teacher's probabilities)."""
    student = (student_out.float() / student_temp).chunk(crops)
    probs = F.softmax((teacher_out.float() - center) / teacher_temp, dim=-1).detach()
    total, terms = 0.0, 0
    for i, q in enumerate(probs.chunk(global_crops)):
        for v, s in enumerate(student):
            if v != i:  # never the same view
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                terms += 1
    return total / terms, probs


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float) -> None:
    """DINOLoss.update_center: the batch mean of the teacher's outputs over every process, into an EMA."""
    batch = teacher_out.float().sum(dim=0, keepdim=True)
    count = len(teacher_out)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch)
        count *= dist.get_world_size()
    center.mul_(momentum).add_(batch / count, alpha=1 - momentum)


# ---------------------------------------------------------------- data


class PILGaussianBlur:
    """utils.py GaussianBlur: with probability p, PIL's Gaussian blur of a radius drawn from [min, max]."""

    def __init__(self, p: float, radius: tuple[float, float] = (0.1, 2.0)):
        self.p, self.radius = p, radius

    def __call__(self, image):
        from PIL import ImageFilter

        if random.random() > self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.radius)))


class MultiCropTransform:
    """main_dino.py DataAugmentationDINO: two global crops (the first always blurred, the second rarely blurred
    and sometimes solarised) and `local_crops` small ones, each flipped and colour-jittered. (The embedded
    digits: tasks.data.multicrop_digits, the same recipe a batch at a time.)"""

    def __init__(self, cfg):
        self.local_crops = cfg.local_crops_number
        from torchvision import transforms as T

        bicubic = T.InterpolationMode.BICUBIC
        flip_and_jitter = T.Compose([
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            T.RandomGrayscale(p=0.2)])
        normalize = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        crop = T.RandomResizedCrop(cfg.global_crop_size, scale=tuple(cfg.global_crops_scale), interpolation=bicubic)
        self.global1 = T.Compose([crop, flip_and_jitter, PILGaussianBlur(1.0), normalize])
        self.global2 = T.Compose([crop, flip_and_jitter, PILGaussianBlur(0.1), T.RandomSolarize(128, p=0.2),
                                  normalize])
        self.local = T.Compose([
            T.RandomResizedCrop(cfg.local_crop_size, scale=tuple(cfg.local_crops_scale), interpolation=bicubic),
            flip_and_jitter, PILGaussianBlur(0.5), normalize])

    def __call__(self, image) -> list[torch.Tensor]:
        return [self.global1(image), self.global2(image)] + [self.local(image) for _ in range(self.local_crops)]


# ---------------------------------------------------------------- task


class DinoTask(SelfSupervisedViT):
    backbone_path = "teacher.backbone"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.step, self.max_steps = 0, 1
        self.followed: dict[int, int] = {}  # id(model) → student steps its teacher has followed (mirrors the buffer)
        self.owed: int | None = None  # the student steps done once the optimizer step after the last loss is taken

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        patch = cls.patch_size(cfg)
        for key in ("global_crop_size", "local_crop_size"):
            size = cfg.dino[key]
            if cfg.stage == "pretrain" and size % patch:
                raise ConfigError(f"task.dino.{key}={size} is not a multiple of task.size={cfg.size}'s patch size "
                                  f"{patch}; e.g. task.dino.{key}={max(patch, size // patch * patch)}")

    @property
    def unused_parameters(self) -> bool:
        # the frozen last layer gets no gradient in the first epochs (main_dino.py sets its .grad to None)
        return not self.finetune and self.cfg.dino.freeze_last_layer_epochs > 0

    # ------------------------------------------------------------ schedules, functions of the step

    def set_step(self, step: int, max_steps: int) -> None:
        self.step, self.max_steps = step, max_steps

    def momentum(self, step: int) -> float:
        """utils.cosine_scheduler(momentum_teacher, 1, epochs, niter_per_ep)[step]: a half cosine to 1."""
        base = self.cfg.dino.momentum_teacher
        return 1 + 0.5 * (base - 1) * (1 + math.cos(math.pi * step / self.max_steps))

    def epoch(self, step: int) -> int:
        return step // self.cfg.dino.steps_per_epoch

    def teacher_temp(self, step: int) -> float:
        """DINOLoss.teacher_temp_schedule[epoch]: linspace(warmup_teacher_temp, teacher_temp, warm-up epochs),
        then teacher_temp."""
        d = self.cfg.dino
        epoch, warmup = self.epoch(step), d.warmup_teacher_temp_epochs
        if epoch >= warmup:
            return d.teacher_temp
        return d.warmup_teacher_temp + (d.teacher_temp - d.warmup_teacher_temp) * epoch / max(warmup - 1, 1)

    def last_layer_frozen(self, step: int) -> bool:
        """utils.cancel_gradients_last_layer: no update of the head's last layer in the first epochs."""
        return self.epoch(step) < self.cfg.dino.freeze_last_layer_epochs

    # ------------------------------------------------------------ model

    def build_pretrain_model(self) -> nn.Module:
        d = self.cfg.dino
        # main_dino.py: the student with drop path, the teacher without; both return the normed class token
        # of any crop size (dynamic_img_size: the position embedding is interpolated, as DINO's ViT does)
        student = self.backbone(num_classes=0, global_pool="token", drop_path_rate=self.cfg.model.drop_path_rate,
                                dynamic_img_size=True)
        nn.init.trunc_normal_(student.cls_token, std=0.02)  # DINO's ViT (timm draws it at std 1e-6)
        head = dict(hidden_dim=d.head.hidden_dim, bottleneck_dim=d.head.bottleneck_dim, layers=d.head.layers,
                    norm_last_layer=d.head.norm_last_layer)
        student = MultiCrop(student, DinoHead(student.embed_dim, d.out_dim, **head))
        teacher = self.backbone(num_classes=0, global_pool="token", drop_path_rate=0.0, dynamic_img_size=True)
        teacher = MultiCrop(teacher, DinoHead(teacher.embed_dim, d.out_dim, **head))
        return Dino(student, teacher, d.out_dim)

    def adapt_to_norm(self, model, norm) -> None:
        if not self.finetune:  # the converted norms of the teacher are new parameters: no gradients for them either
            model.teacher.requires_grad_(False)

    def pretrain_data(self):
        val, bank = self._eval_sets()
        if self.embedded:  # a batch at a time (the per-sample pipeline cost a third of a step)
            from .data.multicrop_digits import DigitCropRecipe, MultiCropCollate, MultiCropDigits

            train_x, train_y, _, _ = self._digits()
            recipe = DigitCropRecipe(self.cfg.dino)
            self.collate_fn = MultiCropCollate(recipe)
            return MultiCropDigits(train_x, train_y, recipe, self.cfg.data.digit_size), val, bank
        from .data.image_folder import image_folder

        return image_folder(Path(self.cfg.data.root) / "train", MultiCropTransform(self.cfg.dino)), val, bank

    # ------------------------------------------------------------ the teacher follows the student

    def follow_student(self, model: Dino, steps: int) -> None:
        """Bring the teacher to `steps` student steps: the EMA update main_dino.py makes right after each
        optimizer step, made here before the next forward (or evaluation) with that step's momentum. Resumes
        exactly: the count is a buffer saved with the weights."""
        done = self.followed.get(id(model))
        if done is None:
            done = int(model.teacher_steps.item())
        if done < steps:
            model.update_teacher(self.momentum(steps - 1))
            model.teacher_steps.fill_(steps)
            done = steps
        self.followed[id(model)] = done

    def pretrain_loss(self, model, batch):
        crops, _ = batch
        dino, d = unwrap(model), self.cfg.dino
        self.follow_student(dino, self.step)
        student_out, teacher_out = model(crops, freeze_last_layer=self.last_layer_frozen(self.step))
        temp = self.teacher_temp(self.step)
        loss, probs = dino_loss(student_out, teacher_out, dino.center, crops=len(crops),
                                global_crops=dino.global_crops, teacher_temp=temp, student_temp=d.student_temp)
        update_center(dino.center, teacher_out, d.center_momentum)
        self.owed = self.step + 1
        # a collapse shows here: entropy → 0 (one dimension wins) or → log(out_dim) (uniform)
        return loss, {"teacher_entropy": torch.special.entr(probs).sum(dim=-1).mean(),
                      "teacher_temp": temp, "momentum": self.momentum(self.step)}

    def features(self, model, images):
        return model(images, features=True)

    def evaluate(self, model, batches, reduce):
        if not self.finetune and self.owed is not None:
            self.follow_student(unwrap(model), self.owed)  # the k-NN reads the teacher after the last step
        return super().evaluate(model, batches, reduce)

    def on_run_end(self, model, run_dir, tracker) -> None:
        if self.finetune:
            return
        curve = plot_knn_curve(run_dir, Path(run_dir) / "knn_curve.png")
        if curve is not None:
            tracker.log_image("knn_curve", curve, 0)
            log.info("k-NN curve: %s", curve)
