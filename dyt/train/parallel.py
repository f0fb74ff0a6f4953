"""How the model is spread over processes, one switch: `trainer.strategy=ddp|fsdp|hsdp`.

ddp: every process builds the whole model (same seed, so identical weights) and accelerate wraps it in DDP.
fsdp: torch's FSDP2 (`fully_shard`) shards parameters, gradients and optimizer state over the processes, one
unit at a time (the blocks the task names in `Task.shard_units`), then the root. hsdp: the same over a 2-D
mesh, sharded within groups (a node) and replicated across them. Only rank 0 builds real
weights (seeded, converted, `init_from` loaded); the others build on the meta device, and the weights and
buffers are broadcast from rank 0, so a LayerNorm and a DyT run of one seed still share every non-norm weight.
torch's own APIs, not accelerate's FSDP plugin: they run, and are tested, on CPU processes with gloo.

Every strategy applies, in torchtitan's order, activation checkpointing → per-unit `torch.compile` → sharding.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn

log = logging.getLogger("dyt.train")

# ranks draw from seeds far apart, so that seed s on rank r never equals seed s' on rank 0
RANK_SEED_STRIDE = 1_000_003


def process_seed(seed: int, rank: int) -> int:
    """The training RNG's seed on a process: dropout, drop-path, mixup and noise differ between ranks."""
    return seed + rank * RANK_SEED_STRIDE


def seed_process(seed: int, rank: int) -> None:
    """After the (identical) model init: each process draws its own dropout, mixup and noise."""
    from accelerate.utils import set_seed

    set_seed(process_seed(seed, rank))


@dataclass
class Built:
    task: object
    model: nn.Module
    swaps: list
    native: str  # the kind of norm the model came with (for `norm=native` labels)
    params: int


def units_of(model: nn.Module, pattern: str | None) -> list[nn.Module]:
    """The modules whose path matches the task's `shard_units` regex, in model order."""
    if not pattern:
        return []
    regex = re.compile(pattern)
    return [module for path, module in model.named_modules() if path and regex.fullmatch(path)]


def checkpointed(units: list[nn.Module], mode: str) -> list[nn.Module]:
    """The units whose activations are recomputed in backward: none, all (`full`), or every k-th (`every_k`)."""
    if mode == "none":
        return []
    if mode == "full":
        return units
    k = int(mode.split("_")[1])
    return units[k - 1::k]


def apply_activation_checkpointing(model: nn.Module, units: list[nn.Module], mode: str) -> None:
    """Each chosen unit's `forward` runs under torch's non-reentrant checkpoint: its activations are recomputed
    in backward. The forward is wrapped in place, not the module, so parameter names and metrics keep their
    paths, and a compiled unit compiles the checkpoint into its graph (torch.compile traces it)."""
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    chosen = checkpointed(units, mode) if units else ([model] if mode != "none" else [])
    for unit in chosen:
        unit.forward = partial(checkpoint, unit.forward, use_reentrant=False)


def compile_units(model: nn.Module, units: list[nn.Module]) -> None:
    """Each unit's (or the whole model's) `forward` compiled in place: no `_orig_mod.` in parameter names, and
    the module's hooks (FSDP's gathers) stay outside the graph."""
    for unit in units or [model]:
        unit.forward = torch.compile(unit.forward)


def _init_single_process_group(device: torch.device) -> None:
    """fully_shard needs a process group, also for one process (a quick check of the sharded path)."""
    import tempfile

    store = tempfile.NamedTemporaryFile(prefix="dyt-pg-", delete=False).name
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{store}", rank=0,
                            world_size=1)


def _mixed_precision(tcfg: DictConfig):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if tcfg.mixed_precision == "bf16":  # bf16 compute and gathers, fp32 master weights and gradient reduction
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


@torch.no_grad()
def _broadcast_weights(model: nn.Module, full: nn.Module | None, device: torch.device) -> None:
    """Fill the sharded model (materialised but uninitialised) from rank 0's full model: parameters and
    persistent buffers through torch's state-dict API, non-persistent buffers (rotary frequencies, filter
    grids) one by one."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    rank0 = dist.get_rank() == 0
    set_model_state_dict(model, full.state_dict() if rank0 else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    source = dict(full.named_buffers()) if rank0 else {}
    for name, buffer in model.named_buffers():
        value = source[name].to(device) if rank0 else torch.empty_like(buffer, device=device)
        dist.broadcast(value, src=0)
        buffer.copy_(value)


def prepare_model(cfg: DictConfig, task, accelerator) -> Built:
    """The task's model with the configured norm, ready for the trainer: built, converted, checkpointed,
    compiled, and sharded for fsdp. For ddp, accelerate wraps it later with the optimizer."""
    from .run import build_model, native_norm

    tcfg = cfg.trainer
    if tcfg.strategy == "ddp":
        model, swaps = build_model(cfg, task)
        native, params = native_norm(model), sum(p.numel() for p in model.parameters())
        wanted = tcfg.channels_last if tcfg.channels_last is not None else accelerator.device.type == "cuda"
        if task.prefers_channels_last and wanted:
            model.to(memory_format=torch.channels_last)
        units = units_of(model, task.shard_units)
        apply_activation_checkpointing(model, units, tcfg.activation_checkpointing)
        if tcfg.compile:
            compile_units(model, units)
        return Built(task, model, swaps, native, params)

    device = accelerator.device
    if not dist.is_initialized():
        _init_single_process_group(device)
    rank0 = dist.get_rank() == 0
    full = None
    if rank0:  # the real, seeded weights (and init_from), on the host
        full, _ = build_model(cfg, task)
    model, swaps = build_model(cfg, task, load_weights=False)  # on the meta device
    native, params = native_norm(full if rank0 else model), sum(p.numel() for p in model.parameters())
    units = units_of(model, task.shard_units)
    apply_activation_checkpointing(model, units, tcfg.activation_checkpointing)
    if tcfg.compile:
        compile_units(model, units)
    shard(model, units, tcfg, device)
    model.to_empty(device=device)
    _broadcast_weights(model, full, device)
    del full
    if rank0:
        log.info("%s: %d units sharded over %d processes (%s)", tcfg.strategy, len(units), dist.get_world_size(),
                 "bf16 parameters, fp32 reduction" if tcfg.mixed_precision == "bf16" else "fp32")
    return Built(task, model, swaps, native, params)


def device_mesh(tcfg: DictConfig, device: torch.device):
    """fsdp: one dimension over every process. hsdp: (replicate, shard), shard groups of `shard_size`
    processes (default: one node's, torchrun's LOCAL_WORLD_SIZE), so the all-gathers stay inside a node."""
    import os

    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    if tcfg.strategy == "fsdp":
        return init_device_mesh(device.type, (world,))
    shard = tcfg.shard_size or int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if world % shard:
        raise ValueError(f"trainer.shard_size={shard} does not divide the {world} processes; set trainer.shard_size")
    return init_device_mesh(device.type, (world // shard, shard), mesh_dim_names=("replicate", "shard"))


def shard(model: nn.Module, units: list[nn.Module], tcfg: DictConfig, device: torch.device) -> None:
    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh(tcfg, device)
    options = dict(mesh=mesh, mp_policy=_mixed_precision(tcfg))
    for unit in units:
        fully_shard(unit, reshard_after_forward=tcfg.reshard_after_forward, **options)
    # the root's parameters (embeddings, head, final norm) are used last in forward: keep them gathered
    fully_shard(model, reshard_after_forward=False, **options)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective: every rank calls it); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the host, on rank 0 (empty elsewhere); a collective for a sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
