"""Learning rate as a function of the optimizer step, set on the optimizer by the trainer each step.

A function of the global step has no state to save and cannot be stepped once per process (the pitfall of
handing a scheduler to `accelerator.prepare`)."""
from __future__ import annotations

import math


def warmup_cosine(step: int, *, peak: float, total: int, warmup: int = 0, min_ratio: float = 0.0) -> float:
    """lr for optimizer step `step` (0-based): linear warm-up over `warmup` steps to `peak`, then a cosine
    to `min_ratio × peak` at step `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
