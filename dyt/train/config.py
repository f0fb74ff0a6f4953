"""Structured schemas for the trainer and norm sections, and the checks every run passes before work starts.

The schemas make a mistyped key (`norm.alpha_innit=1`, `trainer.max_step=5`) an error that names it;
`validate` turns values that would fail later (α₀ ≤ 0, a missing data path) into one-line errors now.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A bad config: the message is one line that names the key and the fix."""


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd (with momentum; its weight decay is L2 through the gradient, torchvision's)
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # the paper's vision code kept α out of weight decay, its LLaMA code decayed it: say which
    decay_alpha: bool = False
    # parameters kept out of weight decay, by rule (dyt.optim.NO_DECAY_RULES): timm's default; [] decays all
    no_decay: list[str] = field(default_factory=lambda: ["one_dim", "listed"])
    schedule: str = "cosine"  # cosine | fms_fsdp | linear | constant | step (dyt.train.schedule)
    step_size: int = 0  # schedule=step: the lr is multiplied by `gamma` every this many steps
    gamma: float = 0.1
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # the schedule ends at min_lr_ratio × lr
    clip_grad: Optional[float] = 1.0
    # layer-wise lr decay (MAE fine-tuning): the lr of layer i of n is layer_decay^(n - i) × the schedule's; 1.0 = off
    layer_decay: float = 1.0


@dataclass
class TrainerConfig:
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 64  # per process and micro-step
    grad_accum: int = 1
    # the paper's batch whatever the number of processes: sets grad_accum = global / (batch_size × processes)
    global_batch_size: Optional[int] = None
    mixed_precision: str = "no"  # no | bf16 | fp16
    log_every: int = 10
    eval_every: int = 200  # and always at the end
    max_eval_batches: Optional[int] = None
    ckpt_every: int = 200  # and always at the end
    keep_last: int = 2
    num_workers: int = 0
    ema_decay: Optional[float] = None  # also evaluate an EMA of the weights (timm ModelEmaV3)
    # ddp: every process holds the whole model (accelerate's DDP); fsdp: parameters, gradients and optimizer
    # state sharded over the processes (torch's FSDP2 `fully_shard`, per unit the task names); hsdp: sharded
    # within groups of `shard_size` processes (default: one node's), replicated across the groups
    strategy: str = "ddp"
    shard_size: Optional[int] = None
    activation_checkpointing: str = "none"  # none | full | every_<k> (every k-th sharding unit) — recompute in backward
    reshard_after_forward: bool = True  # fsdp: free gathered parameters after each unit's forward (ZeRO-3)
    compile: bool = False  # torch.compile each sharding unit (each block), or the whole model if the task names none
    tf32: bool = False  # CUDA: TF32 matmuls and convolutions for fp32 (the vision rows' A100 default)
    # convolutions in channels-last memory (NHWC, faster tensor-core convolutions) for tasks that ask (ConvNeXt):
    # null = on CUDA under ddp, true = always, false = never
    channels_last: Optional[bool] = None
    check_every: int = 10  # steps between divergence / preemption checks (and at every log, eval, checkpoint)
    dist_timeout_s: int = 1800  # process-group timeout: rank 0 tokenising a corpus must not trip the barrier
    fail_on_divergence: bool = False  # a diverged run ends with exit code 0 unless set: sweeps go on
    requeue_on_preempt: bool = True  # under Slurm, `scontrol requeue` after the preemption checkpoint
    progress: str = "auto"  # auto (a bar on a terminal) | bar | log
    peak_tflops: Optional[float] = None  # per device, for MFU; default from a table of GPUs (none on CPU)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class NormConfig:
    """The norm every normalization layer becomes (`dyt.convert`); None leaves a switch at its default."""

    # dyt | derf | layernorm | rmsnorm | identity | native (the model's own norms, untouched) |
    # skipinit | fixup | sigma_reparam (norms removed and the model changed: dyt.norm_free)
    type: str = "dyt"
    alpha_init: Any = 0.5  # a number, "auto" (from the width), or {attn, ffn, final}
    fn: Optional[str] = None  # dyt: a function of dyt.functional.POINTWISE (tanh, hardtanh, sigmoid, isru, …)
    learn_alpha: Optional[bool] = None
    alpha_per_channel: Optional[bool] = None
    shift_init: Optional[float] = None  # derf
    elementwise_affine: Optional[bool] = None
    bias: Optional[bool] = None
    eps: Optional[float] = None  # layernorm, rmsnorm
    kernel: Optional[str] = None  # dyt / derf implementation: auto | eager | compiled | triton | cpu (dyt.kernels)


def register_schemas() -> None:
    store = ConfigStore.instance()
    store.store(name="trainer_schema", node=TrainerConfig, package="trainer")
    store.store(group="norm", name="_schema", node=NormConfig)


NORM_SWITCHES = ("fn", "learn_alpha", "alpha_per_channel", "shift_init", "elementwise_affine", "bias", "eps",
                 "kernel")
ALPHA_NORMS = ("dyt", "derf")


NATIVE = "native"


def norm_spec(norm: DictConfig) -> dict:
    """The `dyt.convert` spec of a norm section: its type, α₀ and the switches that are set and that the
    type takes (a sweep may set `norm.fn` for every norm it crosses; identity ignores it)."""
    from dyt.convert import norm_options

    spec = {"type": norm.type}
    if norm.type in ALPHA_NORMS:
        alpha = norm.alpha_init
        spec["alpha_init"] = OmegaConf.to_container(alpha) if isinstance(alpha, DictConfig) else alpha
    allowed = norm_options(norm.type)
    spec.update({k: norm[k] for k in NORM_SWITCHES if norm.get(k) is not None and k in allowed})
    return spec


def _check_alpha(alpha, key: str = "norm.alpha_init") -> None:
    if isinstance(alpha, (DictConfig, dict)):
        roles = {"attn", "ffn", "final"}
        if set(alpha.keys()) != roles:
            raise ConfigError(f"{key} per role needs exactly the keys attn, ffn, final (got {', '.join(map(str, alpha.keys()))})")
        for role in sorted(roles):
            _check_alpha(alpha[role], f"{key}.{role}")
        return
    if alpha == "auto":
        return
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={alpha!r} is not a number, 'auto' or {{attn,ffn,final}}; e.g. {key}=0.5") from None
    if not value > 0:
        raise ConfigError(f"{key}={alpha} must be > 0; the paper uses 0.5 outside LLMs (e.g. {key}=0.5)")


# keys naming inputs that must exist before a run starts (outputs such as cache_dir may not exist yet)
def _is_input_path_key(key: str) -> bool:
    return key in ("root", "path", "init_from") or key.endswith("_path")


def _check_paths(tree: dict, prefix: str) -> None:
    for key, value in tree.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            _check_paths(value, full)
        elif _is_input_path_key(str(key)) and value == "???":
            raise ConfigError(f"{full} is required here (this config trains on real data); add {full}=/path/to/data")
        elif _is_input_path_key(str(key)) and isinstance(value, str) and value and not Path(str(value)).expanduser().exists():
            raise ConfigError(f"{full}={value} does not exist; point {full} at a local path (or drop it to use the embedded data)")


def _check_keys(node: DictConfig, schema, prefix: str) -> None:
    """`+key=` overrides and YAML files can add keys a schema does not know: name them."""
    known = [f.name for f in fields(schema)]
    unknown = [k for k in node.keys() if k not in known]
    if unknown:
        raise ConfigError(f"unknown config key {prefix}.{unknown[0]}; {prefix} takes: {', '.join(known)}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError (one line naming the key and the fix) for values that cannot run."""
    from dyt.convert import NORM_TYPES  # light: dyt.convert imports torch only
    from dyt.functional import POINTWISE
    from dyt.norm_free import METHODS

    stages = cfg.task.get("schedule")
    if stages is not None and cfg.task.get("stage") not in stages:  # trainer.* interpolate from the stage's schedule
        raise ConfigError(f"task.stage={cfg.task.get('stage')} is unknown; use {' or '.join(map(str, stages))}")
    _check_keys(cfg.norm, NormConfig, "norm")
    _check_keys(cfg.trainer, TrainerConfig, "trainer")
    _check_keys(cfg.trainer.optim, OptimConfig, "trainer.optim")
    if cfg.norm.type not in (*NORM_TYPES, *METHODS, NATIVE):
        known = ", ".join((*NORM_TYPES, *METHODS, NATIVE))
        raise ConfigError(f"norm.type={cfg.norm.type!r} is unknown; known: {known}")
    if cfg.norm.type in ALPHA_NORMS:
        _check_alpha(cfg.norm.alpha_init)
    if cfg.norm.type == "dyt" and cfg.norm.fn is not None and cfg.norm.fn not in POINTWISE:
        raise ConfigError(f"norm.fn={cfg.norm.fn!r} is unknown; use one of {', '.join(POINTWISE)} "
                          "(dyt.functional.POINTWISE)")
    if cfg.norm.kernel is not None:
        from dyt.kernels import KERNELS

        if cfg.norm.kernel not in KERNELS:
            raise ConfigError(f"norm.kernel={cfg.norm.kernel!r} is unknown; use one of {', '.join(KERNELS)}")
    trainer = cfg.trainer
    if trainer.mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(f"trainer.mixed_precision={trainer.mixed_precision!r}; use no, bf16 or fp16")
    if trainer.strategy not in ("ddp", "fsdp", "hsdp"):
        raise ConfigError(f"trainer.strategy={trainer.strategy!r}; use ddp, fsdp or hsdp")
    if trainer.strategy != "ddp" and trainer.mixed_precision == "fp16":
        raise ConfigError(f"trainer.mixed_precision=fp16 does not go with trainer.strategy={trainer.strategy}; use bf16")
    if trainer.shard_size is not None and trainer.shard_size < 1:
        raise ConfigError(f"trainer.shard_size={trainer.shard_size} must be ≥ 1 (processes per shard group)")
    if not re.fullmatch(r"none|full|every_[1-9]\d*", str(trainer.activation_checkpointing)):
        raise ConfigError(f"trainer.activation_checkpointing={trainer.activation_checkpointing!r}; use none, full or "
                          "every_<k> (e.g. every_2)")
    if trainer.progress not in ("auto", "bar", "log"):
        raise ConfigError(f"trainer.progress={trainer.progress!r}; use auto, bar or log")
    for key in ("max_steps", "batch_size", "grad_accum", "log_every", "eval_every", "ckpt_every", "keep_last",
                "check_every", "dist_timeout_s"):
        if trainer[key] < 1:
            raise ConfigError(f"trainer.{key}={trainer[key]} must be ≥ 1")
    if trainer.optim.lr <= 0:
        raise ConfigError(f"trainer.optim.lr={trainer.optim.lr:g} must be > 0")
    if not 0 < trainer.optim.layer_decay <= 1:
        raise ConfigError(f"trainer.optim.layer_decay={trainer.optim.layer_decay} must be in (0, 1]; 1.0 is off")
    from dyt.optim import NO_DECAY_RULES

    from .schedule import SCHEDULES

    if trainer.optim.name not in ("adamw", "sgd"):
        raise ConfigError(f"trainer.optim.name={trainer.optim.name!r} is unknown; use adamw or sgd")
    if trainer.optim.schedule == "step" and trainer.optim.step_size < 1:
        raise ConfigError("trainer.optim.schedule=step needs trainer.optim.step_size ≥ 1 (steps between decays)")
    if trainer.optim.schedule not in SCHEDULES:
        raise ConfigError(f"trainer.optim.schedule={trainer.optim.schedule!r} is unknown; use {', '.join(SCHEDULES)}")
    for rule in trainer.optim.no_decay:
        if rule not in NO_DECAY_RULES:
            raise ConfigError(f"trainer.optim.no_decay has {rule!r}; known rules: {', '.join(NO_DECAY_RULES)}")
    for key in cfg.get("required") or []:
        if OmegaConf.select(cfg, key, default=None, throw_on_missing=False) in (None, "???", ""):
            raise ConfigError(f"{key} is required by this paper row ({cfg.get('group') or 'experiment'}); "
                              f"add {key}=/path/to/its/data")
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise ConfigError(f"seed={cfg.get('seed')!r} must be an integer, e.g. seed=1")
    if trainer.global_batch_size:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if trainer.global_batch_size % (trainer.batch_size * world):
            raise ConfigError(f"trainer.global_batch_size={trainer.global_batch_size} is not a multiple of "
                              f"trainer.batch_size × processes = {trainer.batch_size} × {world}; change trainer.batch_size")
    from .tracking import missing_logger

    problem = missing_logger(cfg.logger)  # an unknown tracker, or one whose package is not installed
    if problem:
        raise ConfigError(problem)
    _check_task_keys(cfg.task, _task_class(cfg.task).open_sections)
    _check_paths({"task": OmegaConf.to_container(cfg.task, resolve=True)}, "")
    _check_init_from(cfg.get("init_from"))
    _task_class(cfg.task).check_config(cfg.task)
    if trainer.optim.layer_decay != 1.0 and _task_class(cfg.task).lr_scale is None:
        raise ConfigError(f"trainer.optim.layer_decay={trainer.optim.layer_decay:g} needs a task that orders its layers "
                          f"(mae, dino); task={cfg.task.name} has no order: leave it at 1.0")
    if cfg.norm.type in METHODS:
        _check_norm_free(cfg)


def _check_norm_free(cfg: DictConfig) -> None:
    """skipinit / fixup need residual blocks dyt.norm_free knows: read them off the model built on the meta device."""
    import torch

    from dyt.norm_free import NotApplicable, check_applicable

    with torch.device("meta"):
        model = _task_class(cfg.task)(cfg.task).build_model()
    try:
        check_applicable(model, cfg.norm.type)
    except NotApplicable as err:
        raise ConfigError(f"{err} (task {cfg.task.name}); norm=dyt or another norm applies to any task") from None


TASK_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "task"


def _check_task_keys(task: DictConfig, open_sections: tuple[str, ...] = ()) -> None:
    """The task section has no schema: its keys are those of its config file (configs/task/<name>.yaml), so
    a mistyped `+task.data.roott=…` is named instead of silently ignored. A mapping that is `{}` there (timm
    kwargs, LlamaConfig overrides, a size's model fields), or that the task names in `open_sections`, takes any
    key (the task checks those)."""
    path = TASK_CONFIGS / f"{task.get('name')}.yaml"
    if not path.exists():
        return
    known = OmegaConf.load(path).get("task")
    if known is None:
        return

    def walk(node, reference, prefix: str) -> None:
        for key in node.keys():
            full = f"{prefix}.{key}"
            if key not in reference:
                raise ConfigError(f"unknown config key {full}; {prefix} takes: {', '.join(map(str, reference.keys()))}")
            child, ref = node._get_node(key), reference._get_node(key)
            if full.removeprefix("task.") in open_sections:
                continue
            if OmegaConf.is_dict(child) and OmegaConf.is_dict(ref) and len(ref) > 0:
                walk(node[key], reference[key], full)

    walk(task, known, "task")


def _check_init_from(source) -> None:
    """`init_from=` names a run folder or checkpoint holding a complete checkpoint, checked before any work."""
    if not source:
        return
    from .checkpoint import MARKER, latest_checkpoint

    path = Path(str(source)).expanduser()
    if not path.exists():
        raise ConfigError(f"init_from={source} does not exist; give a run folder or a checkpoint folder "
                          "(outputs/<task>/<run>) to start from its weights")
    if not ((path / MARKER).exists() or latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)):
        raise ConfigError(f"init_from={source} holds no complete checkpoint (a run folder has checkpoints/step_*/ "
                          "with a COMPLETE marker); point it at a finished or checkpointed run")


def _task_class(task: DictConfig):
    from hydra.utils import get_class

    try:
        return get_class(task._target_)
    except Exception as err:  # noqa: BLE001 — an import error in the task module, or a wrong name
        raise ConfigError(f"task._target_={task._target_} cannot be imported ({type(err).__name__}: {err})") from None
