"""The contract between the trainer and a task. The trainer knows nothing of images, text or audio."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Headline:
    """The task's paper metric, named in summary.json (`val/acc`, higher is better; `val/loss`, lower)."""

    name: str
    higher_is_better: bool


class Task:
    """Subclass per task. The trainer calls, in order: build_model → (convert) → adapt_to_norm →
    build_data → loss per micro-step → evaluate every `eval_every` steps and at the end."""

    headline = Headline("val/loss", higher_is_better=False)
    flops_per_sample: float | None = None  # forward + backward FLOPs per sample, for MFU where a GPU peak is known
    norm_roles: dict[str, str] | None = None  # module-path regex → attn / ffn / final, before dyt's defaults
    loss_is_nll: bool = False  # train/loss is a mean negative log-likelihood: also log train/ppl = exp(train/loss)
    norm_exclude: tuple[str, ...] = ()  # module-path regexes of norms the paper keeps (wav2vec 2.0's GroupNorm)
    # module-path regex of the repeated blocks: the units of FSDP sharding, activation checkpointing and
    # per-block compilation (trainer.strategy=fsdp, trainer.activation_checkpointing, trainer.compile)
    shard_units: str | None = None
    # DDP: some parameters may get no gradient in a step (layer drop skips whole layers)
    unused_parameters: bool = False
    # a convolutional model that runs faster with NHWC weights and inputs (trainer.channels_last)
    prefers_channels_last: bool = False
    # layer-wise lr decay (trainer.optim.layer_decay < 1): a method (parameter name, layer_decay) → the factor on
    # that parameter's lr; None: the task has no order of layers and the trainer refuses a decay
    lr_scale = None
    # task-section mappings handed to a library's config (wav2vec 2.0's `model`: Wav2Vec2Config fields): keys the
    # task's config file does not list, which `check_config` checks against that library instead
    open_sections: tuple[str, ...] = ()

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """Raise dyt.train.config.ConfigError (one line: the key and the fix) for a task section that cannot
        run — e.g. a data folder without its expected layout. Called before any work starts."""

    @property
    def name(self) -> str:
        return self.cfg.name

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def adapt_to_norm(self, model: nn.Module, norm: DictConfig) -> None:
        """Norm-dependent changes after the swap (DiT's zero-init, LLaMA's embedding scale)."""

    def build_data(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    collate_fn = None

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def eval_step(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        """Sums over one batch (e.g. correct, count, loss_sum): the trainer adds them up across batches
        and processes and hands the totals to `eval_metrics`."""
        raise NotImplementedError

    def eval_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, batches, reduce) -> dict[str, float]:
        """Metrics on the validation set. `reduce(dict of tensors)` sums over processes. Tasks whose metric
        is not a sum (FID) override this."""
        totals: dict[str, torch.Tensor] = {}
        for batch in batches:
            for key, value in self.eval_step(model, batch).items():
                totals[key] = totals.get(key, 0) + value.detach().double()
        totals = reduce(totals)
        return self.eval_metrics({k: float(v) for k, v in totals.items()})

    def set_step(self, step: int, max_steps: int) -> None:
        """Called before every optimizer step, for schedules inside the task (wav2vec 2.0's Gumbel temperature)."""

    def count(self, batch) -> tuple[int, int | None]:
        """(samples, tokens or None) in a batch, for throughput."""
        first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values()))
        return len(first), None

    def on_run_end(self, model: nn.Module, run_dir, tracker) -> None:
        """Artifacts after training (sample grids, …); called on the main process only."""

    def describe_data(self, train_set: Dataset, val_set: Dataset) -> dict:
        """What the run reads, made after `build_data` on the main process: logged in one line before training
        and kept in summary.json (`data`). Tasks say more (classes, tokens, hours, contigs) and how a split the
        data lack was made."""
        def size(dataset):
            return len(dataset) if hasattr(dataset, "__len__") else "streamed"

        return {"train": size(train_set), "val": size(val_set)}

    def artifacts(self) -> dict:
        """What the run's numbers depend on besides the config, made or read by `build_data`: name → a file or
        folder (Path), bytes, text or an array (tokenizer, token file, synthesised speech, gene predictions,
        latent cache, the metric's network, the user's data). Their content hashes go to summary.json's
        `provenance` (dyt.train.provenance), so runs that differ in them are not pooled."""
        return {}
