"""One run: validate, seed, build the task's model with its native norms, convert, train."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import ALPHA_NORMS, NATIVE, ConfigError, norm_spec, validate

log = logging.getLogger("dyt.train")


def run(cfg: DictConfig) -> dict:
    """The body of `train.py`: exits non-zero on a bad config, a failure, or (with a code 128 + signal)
    after saving a checkpoint on preemption; a diverged run returns normally unless asked to fail."""
    from .slurm import export_distributed_env

    export_distributed_env()
    try:
        validate(cfg)
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        held = run_folder_lock(run_dir) if os.environ.get("RANK", "0") == "0" else nullcontext()
        with held:
            summary = train(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    code = summary.pop("exit_code")
    if code:
        sys.exit(code)
    return summary


@contextmanager
def run_folder_lock(run_dir: Path):
    """One run per folder: an exclusive lock on `<run_dir>/.lock` (holding the PID) for the run's life. The
    kernel drops it when the process ends, killed or not, so it never stays stuck."""
    import fcntl

    with open(run_dir / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            raise ConfigError(f"{run_dir} is in use by a running run (pid {pid}); wait for it to end, or give this "
                              "run its own folder (hydra.run.dir=…)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def norm_label(norm: DictConfig, native: str = NATIVE) -> str:
    """`dyt-a0.5`, `dyt_hardtanh-a0.5`, `dyt-a0.8/0.2/0.2` (attn/ffn/final), `layernorm`; for `native`, the
    kind of norm the model came with."""
    if norm.type == NATIVE:
        return native
    name = norm.type + (f"_{norm.fn}" if norm.type == "dyt" and norm.get("fn") not in (None, "tanh") else "")
    if norm.get("learn_alpha") is False:
        name += "_fixed"
    if norm.type not in ("dyt", "derf"):
        return name
    alpha = norm.alpha_init
    if isinstance(alpha, DictConfig):
        alpha = "/".join(f"{alpha[r]:g}" if not isinstance(alpha[r], str) else alpha[r] for r in ("attn", "ffn", "final"))
    elif not isinstance(alpha, str):
        alpha = f"{float(alpha):g}"
    return f"{name}-a{alpha}"


def _alpha_init(norm: DictConfig):
    """The configured α₀ (a number, "auto", or {attn, ffn, final}); None for norms without one."""
    if norm.type not in ALPHA_NORMS:
        return None
    alpha = norm.alpha_init
    return OmegaConf.to_container(alpha, resolve=True) if isinstance(alpha, DictConfig) else alpha


def _one(values: set):
    return next(iter(values)) if len(values) == 1 else None


def run_metadata(cfg: DictConfig, task, swaps, label: str, params: int, sweep) -> dict:
    """What every dashboard groups and filters runs by, typed: the norm's label and type, α₀ as a number (null
    for norms without α₀, and when the roles differ) and per role as the layers got it, task, size, stage (the
    tracker's job type), seed, parameter count, the sweep's name and the swept keys that vary in it, and the
    group: `<task>-<size>`, or for a sweep `<sweep name>-<sweep folder>` (its date and a random tail)."""
    size, stage = cfg.task.get("size"), cfg.task.get("stage")
    per_role = {role: _one({s.alpha_init for s in swaps.replaced if s.role == role and s.alpha_init is not None})
                for role in ("attn", "ffn", "final")}
    alphas = {s.alpha_init for s in swaps.replaced if s.alpha_init is not None}
    sweep_name = _sweep_name(task, size) if sweep else None
    return {
        "norm_label": label, "norm_type": cfg.norm.type,
        "alpha_init": _one(alphas) if cfg.norm.type in ALPHA_NORMS else None,
        "alpha_per_role": per_role if cfg.norm.type in ALPHA_NORMS else {r: None for r in per_role},
        "task_name": task.name, "size": size, "stage": stage, "job_type": stage or "train", "seed": cfg.seed,
        "params": params, "sweep": sweep_name, "swept": swept_values(cfg, sweep) if sweep else {},
        "group": cfg.get("group") or (f"{sweep_name}-{sweep.dir.name}" if sweep else f"{task.name}-{size or 'default'}"),
    }


def _sweep_name(task, size) -> str:
    """The sweep config's name (`sweep=alpha_init`), else `<task>-<size>` for a sweep typed on the command line."""
    from hydra.core.hydra_config import HydraConfig

    chosen = HydraConfig.get().runtime.choices.get("sweep") if HydraConfig.initialized() else None
    return chosen if chosen not in (None, "null") else f"{task.name}-{size or 'default'}"


def sweep_grid(sweep_dir: Path) -> dict[str, list[str]]:
    """Every key a sweep varies and its values: the sweep config's `hydra.sweeper.params` and the command's
    sweep overrides (`norm=dyt,layernorm`), as Hydra saved them in the sweep folder's multirun.yaml."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.exists():
        return {}
    saved = OmegaConf.load(path).hydra
    params = saved.get("sweeper", {}).get("params") or {}
    overrides = [f"{k}={v}" for k, v in params.items()] + list(saved.overrides.task)
    grid = {}
    for override in OverridesParser.create().parse_overrides(overrides):  # the command's win, as in the sweeper
        key = override.get_key_element().lstrip("+~")
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else []
        if len(values) > 1:
            grid[key] = values
        else:
            grid.pop(key, None)
    return grid


def swept_values(cfg: DictConfig, sweep) -> dict:
    """This run's value of each key its sweep varies, typed as the run used it (a number, a config group's
    choice, a mapping); α₀ is null for a norm without α₀."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    values = {}
    for key in sweep_grid(sweep.dir):
        if key in choices:
            values[key] = choices[key]
        elif key == "norm.alpha_init":
            values[key] = _alpha_init(cfg.norm)
        else:
            node = OmegaConf.select(cfg, key, default=None)
            values[key] = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    return values


def _init_from(model, source: str) -> None:
    """Load weights (not optimizer state) from a checkpoint folder or a run folder's latest checkpoint;
    tensors whose shape differs (a new head) keep their fresh initialisation."""
    from .checkpoint import latest_checkpoint, model_weights

    path = Path(source)
    if not (path / "COMPLETE").exists():
        path = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if path is None:
            raise ConfigError(f"init_from={source} holds no complete checkpoint")
    weights = model_weights(path)
    own = model.state_dict()
    # a scalar saved 0-dim before FSDP2 needed it 1-element still fits
    weights = {k: v.reshape(own[k].shape) if k in own and v.numel() == own[k].numel() == 1 else v
               for k, v in weights.items()}
    fitting = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    fresh = sorted(k for k in own if k not in fitting)
    model.load_state_dict(fitting, strict=False)
    log.info("init_from %s: loaded %d tensors; %d keep their initialisation%s", path, len(fitting), len(fresh),
             f" ({', '.join(fresh[:6])}{' …' if len(fresh) > 6 else ''})" if fresh else "")


def native_norm(model) -> str:
    """The kind of norm a model was built with (`layernorm`, `rmsnorm`, …), as `dyt.convert` sees it."""
    from dyt.convert import NormInfo, describe_norm

    kinds = {info.kind for m in model.modules() if isinstance(info := describe_norm(m), NormInfo)}
    return "+".join(sorted(kinds)) or "none"


def _size(dataset) -> str:
    return str(len(dataset)) if hasattr(dataset, "__len__") else "streamed"


def build_task(cfg: DictConfig):
    from hydra.utils import get_class

    return get_class(cfg.task._target_)(cfg.task)


def build_model(cfg: DictConfig, task, *, load_weights: bool = True):
    """The task's model with the configured norm, seeded so that runs of one seed that differ only in the
    norm share every other initial weight. `load_weights=False` builds it on the meta device (no memory, no
    `init_from`: the weights come from rank 0). Returns (model, swaps)."""
    import torch
    from accelerate.utils import set_seed

    from dyt import norm_free
    from dyt.convert import SwapList, convert

    set_seed(cfg.seed)
    if load_weights:
        model = task.build_model()
    else:
        with torch.device("meta"):
            model = task.build_model()
    if cfg.norm.type == NATIVE:
        swaps = SwapList()
    elif cfg.norm.type in norm_free.METHODS:  # skipinit, fixup, sigma_reparam: norms removed, the model changed
        swaps = norm_free.apply(model, cfg.norm.type, exclude=task.norm_exclude)
    else:  # a task may opt norms in that convert leaves alone by default (task=resnet: BatchNorm)
        swaps = convert(model, norm_spec(cfg.norm), roles=task.norm_roles, exclude=task.norm_exclude,
                        include=getattr(task, "norm_include", ()))
    task.adapt_to_norm(model, cfg.norm)
    if cfg.get("init_from") and load_weights:
        _init_from(model, cfg.init_from)
    return model, swaps


def build(cfg: DictConfig):
    """The task and its model (see build_model). Returns (task, model, swaps)."""
    task = build_task(cfg)
    model, swaps = build_model(cfg, task)
    return task, model, swaps


def train(cfg: DictConfig) -> dict:
    from datetime import timedelta

    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    from .hardware import keep_freed_host_memory
    from .parallel import prepare_model, seed_process
    from .provenance import provenance
    from .sweep import claim_point, current_sweep
    from .tracking import log_with
    from .trainer import Trainer, write_json

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sweep = current_sweep()
    same_as = claim_point(cfg, sweep, run_dir) if sweep else None
    if same_as:
        log.info("this point repeats %s (the norm has no α₀): nothing to train", same_as)
        result = {"status": "duplicate", "same_as": same_as, "norm": norm_label(cfg.norm), "seed": cfg.seed}
        write_json(run_dir / "summary.json", result)
        return {**result, "exit_code": 0}
    tcfg = cfg.trainer
    keep_freed_host_memory()  # before the data and the model allocate: steps that do not page-fault their activations
    # cpu=True without CUDA: several processes (torchrun, `accelerate launch --multi_gpu`) then join a gloo
    # group; under fsdp, FSDP2's MixedPrecisionPolicy casts, not accelerate's autocast
    accelerator = Accelerator(
        mixed_precision=tcfg.mixed_precision if tcfg.strategy == "ddp" else "no", cpu=not torch.cuda.is_available(),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=tcfg.dist_timeout_s))],
        log_with=log_with(cfg.logger, run_dir))  # metrics.jsonl and the `logger=` trackers; started by the Trainer
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tcfg.tf32
    task = build_task(cfg)
    if task.unused_parameters:
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
    built = prepare_model(cfg, task, accelerator)
    swaps, n_params = built.swaps, built.params
    train_set, val_set = task.build_data()
    seed_process(cfg.seed, accelerator.process_index)
    label = norm_label(cfg.norm, native=built.native)
    origin = provenance(task) if accelerator.is_main_process else {}  # hashed once, by the process that writes
    described = task.describe_data(train_set, val_set) if accelerator.is_main_process else {}
    meta = run_metadata(cfg, task, swaps, label, n_params, sweep)
    run_info = {"task": task.name, "size": meta["size"], "stage": meta["stage"], "norm": label,
                "norm_type": cfg.norm.type, "alpha_init": _alpha_init(cfg.norm), "alpha_per_role": meta["alpha_per_role"],
                "seed": cfg.seed, "group": meta["group"], "sweep": meta["sweep"], "swept": meta["swept"],
                "params": n_params, "norms_replaced": len(swaps.replaced),
                "decay_alpha": cfg.trainer.optim.decay_alpha, "run_dir": str(run_dir), "data": described,
                "provenance": origin}
    if accelerator.is_main_process:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run_dir / "norms.txt").write_text(str(swaps) + "\n")
        log.info("run folder %s", run_dir)
        log.info("data: %s", "; ".join(f"{key} {value}" for key, value in described.items()))
        log.info("norm layers:\n%s", swaps)
        log.info("%s: %.2fM parameters, %s train / %s val samples, %d processes (%s), α decay %s", task.name,
                 n_params / 1e6, _size(train_set), _size(val_set), accelerator.num_processes, tcfg.strategy,
                 "on" if cfg.trainer.optim.decay_alpha else "off")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.norm.type not in ALPHA_NORMS:  # α₀ means nothing to LayerNorm: no value to group it by
        resolved["norm"]["alpha_init"] = None
    config = {**resolved, "provenance": origin, **{k: v for k, v in meta.items() if k != "group"}}
    stage = meta["stage"]
    tracker_args = {"config": config, "name": f"{label}-s{cfg.seed}" + (f"-{stage}" if stage else ""),
                    "group": meta["group"], "job_type": meta["job_type"],
                    "tags": [task.name, cfg.norm.type, label, *([stage] if stage else [])],
                    "headline": task.headline.name, "higher_is_better": task.headline.higher_is_better}
    trainer = Trainer(cfg, built, train_set, val_set, accelerator=accelerator, run_dir=run_dir,
                      run_info=run_info, tracker_args=tracker_args)
    return trainer.fit()
