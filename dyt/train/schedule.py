"""Learning rate as a function of the optimizer step, set on the optimizer by the trainer each step.

A function of the global step has no state to save and cannot be stepped once per process (the pitfall of
handing a scheduler to `accelerator.prepare`). The shapes are the official codebases' own, so a paper row
runs the schedule its paper ran (`trainer.optim.schedule`)."""
from __future__ import annotations

import math

SCHEDULES = ("cosine", "fms_fsdp", "linear", "constant", "step")


def warmup_cosine(step: int, *, peak: float, total: int, warmup: int = 0, min_ratio: float = 0.0) -> float:
    """lr for optimizer step `step` (0-based): linear warm-up over `warmup` steps to `peak`, then a cosine
    to `min_ratio × peak` at step `total` (timm, the ConvNeXt codebase)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def fms_fsdp(step: int, *, peak: float, total: int, warmup: int = 0, min_ratio: float = 0.1) -> float:
    """foundation-model-stack/fms-fsdp (main_training_llama.py), the paper's LLaMA code: the lower of a
    parabolic warm-up 1 − (1 − x/w)² and a cosine over the whole run (not after the warm-up) to min_ratio:
    `min(1 - (1 - min(x, w)/w)**2, 0.1 + 0.5*(1 - 0.1)*(1 + cos(min(x, N)/N*pi)))`, x the step, from 0 as
    LambdaLR counts (its first step runs at lr 0)."""
    rise = 1.0 - (1.0 - min(step, warmup) / warmup) ** 2 if warmup > 0 else 1.0
    fall = min_ratio + 0.5 * (1 - min_ratio) * (1 + math.cos(min(step, total) / total * math.pi))
    return peak * min(rise, fall)


def linear(step: int, *, peak: float, total: int, warmup: int = 0, min_ratio: float = 0.0) -> float:
    """fairseq's polynomial_decay with power 1 (wav2vec 2.0): linear warm-up, then linear decay to
    `min_ratio × peak` (fairseq's end_learning_rate, 0) at `total`. fairseq sets the lr after each update,
    starting at peak/w, so its first two updates share that lr: step s runs at max(s, 1)/w."""
    if warmup > 0 and step <= warmup:
        return peak * max(step, 1) / warmup
    if step >= total:
        return peak * min_ratio
    remaining = 1 - (step - warmup) / (total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * remaining)


def constant(step: int, *, peak: float, total: int, warmup: int = 0, min_ratio: float = 1.0) -> float:
    """DiT: the lr is constant (after an optional linear warm-up)."""
    return peak * (step + 1) / warmup if step < warmup else peak


def step_decay(step: int, *, peak: float, step_size: int, gamma: float = 0.1, warmup: int = 0) -> float:
    """torch's StepLR (torchvision's classification recipe): the lr times `gamma` every `step_size` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * gamma ** (step // step_size)


def learning_rate(schedule: str, step: int, *, peak: float, total: int, warmup: int = 0,
                  min_ratio: float = 0.0, step_size: int = 0, gamma: float = 0.1) -> float:
    if schedule == "step":
        return step_decay(step, peak=peak, step_size=step_size, gamma=gamma, warmup=min(warmup, total))
    shapes = {"cosine": warmup_cosine, "fms_fsdp": fms_fsdp, "linear": linear, "constant": constant}
    return shapes[schedule](step, peak=peak, total=total, warmup=min(warmup, total), min_ratio=min_ratio)
