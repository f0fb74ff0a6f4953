"""An exponential moving average of the weights, kept beside the model in the model's own layout (plain
tensors under DDP, the local shards under FSDP), so it needs no second model and shards for free."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class WeightEma:
    """timm's ModelEmaV3 update, `ema ← ema + (1 − decay)·(param − ema)` after every optimizer step;
    `swapped_in()` evaluates the model with the averaged weights and puts the trained ones back."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)

    @contextmanager
    @torch.no_grad()
    def swapped_in(self):
        trained = [p.detach().clone() for p in self.params]
        torch._foreach_copy_([p.detach() for p in self.params], self.shadow)
        try:
            yield
        finally:
            torch._foreach_copy_([p.detach() for p in self.params], trained)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        # checkpoints of the earlier timm ModelEmaV3 hold the averaged model's state dict, keys under `module.`
        state = {k.removeprefix("module."): v for k, v in state.items()}
        for name, tensor in zip(self.names, self.shadow):
            tensor.copy_(state[name])
