"""Per-GPU memory of a run before it is launched: weights, gradients, optimizer state and activations under
DDP and FSDP, with and without activation checkpointing, and whether the run fits.

    python scripts/plan_memory.py task=llama task.size=7B task.data.seq_len=4096 trainer.mixed_precision=bf16 \
        trainer.strategy=fsdp --gpus 8 --gpu-mem 80 --micro-batch 2 [--activation-checkpointing full] [--json]
    python scripts/plan_memory.py experiment=dit_xl2 --gpus 8 --gpu-mem 80

Any `train.py` override works; `trainer.strategy=ddp|fsdp` and `trainer.activation_checkpointing=none|full`
are read here (and removed before Hydra composes the config, so this works whether or not the config schema
knows those keys yet); they only pick the configuration the last line speaks of: all four are printed.

How the model is built. The config is composed as `train.py` composes it (configs/, config `train`), then the
task builds its model with its native norms and `dyt.convert` swaps them, as `dyt.train.run.build` does, but
under `with torch.device("meta")`: no memory is allocated and no data is read, so any size plans, LLaMA 70B
included. Where a task's constructor would look at data (an experiment's `task.data.root: ???`, DiT's VAE and
latent geometry), the plan uses the real-data geometry without the files (see `planning_task`). LLaMA sizes
without a `vocab_size` in their preset (debug, cpu, 125M, 350M, 1B) take the vocabulary of the tokenizer at
`task.data.tokenizer_path` when one is given, else `task.data.vocab_size`, the size of the BPE the suite trains.

What is counted, per GPU (all of it stated again in the printout):
- Parameters: numel of the meta model × 4 bytes; the suite keeps fp32 master weights (mixed precision casts).
- DDP: every rank holds everything: fp32 weights, fp32 gradients, DDP's gradient buckets (a second fp32 copy
  of the gradients: `gradient_as_bucket_view` is off by default, as accelerate leaves it), AdamW's two fp32
  moments, and with bf16/fp16 autocast a half-precision copy of every weight (autocast caches each cast for
  the forward and the linear layers keep it for backward): 22 bytes per parameter with bf16, 20 without.
- FSDP (torch's `fully_shard`, FSDP2): fp32 weights, fp32 gradients and both moments sharded over the GPUs
  (16 bytes per parameter / N). With `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` the weights
  are all-gathered per sharding unit in bf16 for forward and backward: with `reshard_after_forward` (the
  default) at most ~2 units are unsharded at once (the one computing, the one prefetched), plus the root
  unit (the parameters outside the units: embeddings, head), which FSDP2 keeps unsharded from forward to
  backward. Their unsharded gradients exist in bf16 until the reduce-scatter, which reads an fp32 copy
  (reduce_dtype): counted as (root + 2 largest units) × (2 + 2 + 4) bytes per parameter, an upper bound.
- Sharding units: the repeated blocks (the largest ModuleList/Sequential of same-class modules: LLaMA's
  decoder layers, ViT/DiT blocks, ConvNeXt stages, wav2vec 2.0's encoder layers, the DNA models' blocks).
  Activation checkpointing is planned per unit, as torchtitan applies it.
- Activations per micro-batch, measured rather than guessed: one forward pass of the task's loss on meta
  tensors, the model in the compute dtype (bf16/fp16 under mixed precision: FSDP2's param_dtype; the
  floating inputs cast as `cast_forward_inputs` does), counting every tensor autograd saves for backward
  (`torch.autograd.graph.saved_tensors_hooks`), each storage once, weights excluded (counted above). The GPU
  kernels are modelled where they keep less than the meta device's fallback would: attention saves what
  FlashAttention / memory-efficient SDPA keep (q, k, v, the output, the fp32 log-sum-exp; no s×s matrix;
  `--attention math` keeps the s×s path instead), and a DyT layer saves what the fused Triton op saves (its
  input). Dropout masks, fp32 upcasts inside norms (HF's RMSNorm keeps an fp32 copy of its input), the
  loss's fp32 log-probabilities (LLaMA: b·s·vocab × 4 bytes) all come out of the trace as the code has them.
  With full activation checkpointing a unit keeps only its inputs (s·b·h × 2 bytes for a LLaMA layer) and
  one unit's activations exist again while it is recomputed for backward. Both cases add a backward working
  set of one unit's activations (the gradients flowing through the unit in backward).
  DDP is traced the same way, though autocast keeps the residual stream in fp32 there: DDP's activations are
  a lower bound (it does not fit for other reasons at the sizes this tool is for).
  LLaMA's per-layer count has a closed form, derived in `llama_layer_activation_bytes` and printed beside the
  trace as a check (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", counted GPT's layer as s·b·h·(34 + 5·a·s/h) bytes without flash attention; LLaMA's SwiGLU, RoPE,
  RMSNorm/DyT and flash attention change the constant as derived there).
  Caduceus's pure-torch selective scan is traced over at most 2,048 positions and scaled linearly (each of
  its saved tensors is per position); wav2vec 2.0 is traced with every layer kept (layer drop 0, the worst
  step) and its contrastive head over mask_time_prob × frames masked frames (an upper bound: spans overlap).
- Fixed per GPU: CUDA context, cuBLAS workspaces and NCCL buffers, `--overhead-gib` (default 3 GiB); and a
  fragmentation margin of the caching allocator, `--fragmentation` (default 10 % of the rest).
- Not counted: torch.compile's changes to activations, the optimizer step's temporaries (foreach AdamW
  allocates about one fp32 copy of the local parameters, after activations are freed), EMA weights
  (`trainer.ema_decay`: + 4 bytes per parameter, / N if sharded), evaluation.
`--gpu-mem` is in GiB as `torch.cuda.mem_get_info` reports a card's total (an "80 GB" H100 has 79.6 GiB).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python scripts/plan_memory.py` from anywhere imports this checkout's dyt/, tasks/
    sys.path.insert(0, str(ROOT))

GIB = 2**30
STRATEGIES = ("ddp", "fsdp")
CHECKPOINTING = ("none", "full")
ADAM_MOMENTS = 2  # AdamW's exp_avg and exp_avg_sq, fp32
MASTER_BYTES = 4  # fp32 weights, gradients and moments
CADUCEUS_TRACE_POSITIONS = 2048
PLAN_ONLY_ROOT = "<plan_memory: no data read>"  # stands in for a data folder an experiment leaves as ???


class PlanError(ValueError):
    """A command line or config that cannot be planned: one line naming the key and the fix."""


# ---------------------------------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(options, Hydra overrides). `trainer.strategy=` and `trainer.activation_checkpointing=` are taken out of
    the overrides: they choose the configuration the verdict speaks of, whatever the config schema knows."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # main() looks for --json itself
        usage="%(prog)s [train.py overrides …] [trainer.strategy=ddp|fsdp] --gpus N --gpu-mem GiB [options]")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the run shards and replicates over (default 8)")
    parser.add_argument("--gpu-mem", type=float, default=80.0, help="memory of one GPU in GiB (default 80)")
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="samples per GPU and micro-step (default: trainer.batch_size; wav2vec 2.0: length "
                             "batches of task.data.max_tokens audio samples)")
    parser.add_argument("--activation-checkpointing", choices=CHECKPOINTING, default=None,
                        help="the configuration the verdict line speaks of (all are printed)")
    parser.add_argument("--attention", choices=("flash", "math"), default="flash",
                        help="flash: FlashAttention / memory-efficient SDPA saves no s×s matrix (the GPU default); "
                             "math: the s×s attention probabilities are kept")
    parser.add_argument("--overhead-gib", type=float, default=3.0,
                        help="fixed per GPU: CUDA context, cuBLAS workspaces, NCCL buffers (default 3)")
    parser.add_argument("--fragmentation", type=float, default=0.10,
                        help="caching-allocator margin, a fraction of the counted memory (default 0.10)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    options, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    overrides, strategy, checkpointing = [], None, None
    for arg in rest:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "trainer.strategy":
            strategy = value
        elif key.lstrip("+") == "trainer.activation_checkpointing":
            checkpointing = value
        else:
            overrides.append(arg)
    if strategy is not None and strategy not in STRATEGIES:
        raise PlanError(f"trainer.strategy={strategy} is unknown; use ddp or fsdp")
    if checkpointing is not None and not re.fullmatch(r"none|full|every_[1-9]\d*", checkpointing):
        raise PlanError(f"trainer.activation_checkpointing={checkpointing} is unknown; use none, full or every_<k>")
    if options.activation_checkpointing and checkpointing and options.activation_checkpointing != checkpointing:
        raise PlanError(f"--activation-checkpointing {options.activation_checkpointing} contradicts "
                        f"trainer.activation_checkpointing={checkpointing}; give one")
    options.strategy = strategy
    options.activation_checkpointing = options.activation_checkpointing or checkpointing
    if options.gpus < 1 or options.gpu_mem <= 0:
        raise PlanError("--gpus must be ≥ 1 and --gpu-mem > 0")
    if options.micro_batch is not None and options.micro_batch < 1:
        raise PlanError("--micro-batch must be ≥ 1")
    return options, overrides


def compose_config(overrides: list[str]):
    """The config `python train.py <overrides>` would run with (as tests/test_trainer.py's compose_cfg)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import dyt.train  # noqa: F401 — registers the schemas and resolvers

    try:
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            return compose("train", overrides=[*overrides, "run_dir=unused", "init_from=null"])
    except (HydraException, OmegaConfBaseException) as err:
        raise PlanError(str(err).splitlines()[0]) from None


# ---------------------------------------------------------------------------------------- the model on meta


def _fill_missing(node, placeholder: str) -> list[str]:
    """Replace `???` values (a path an experiment requires) by a placeholder; returns their keys."""
    from omegaconf import DictConfig, OmegaConf

    filled = []
    for key in list(node.keys()):
        if OmegaConf.is_missing(node, key):
            node[key] = placeholder
            filled.append(str(key))
        elif isinstance(node[key], DictConfig):
            filled += [f"{key}.{k}" for k in _fill_missing(node[key], placeholder)]
    return filled


def planning_task(cfg, notes: list[str]):
    """The task object, built without reading data: the same class and config `train.py` would use, with the
    inputs a constructor would open replaced by what they describe."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    task_cfg = OmegaConf.create(OmegaConf.to_container(cfg.task, resolve=True))  # a copy the plan may edit
    required = [k.removeprefix("task.") for k in cfg.get("required") or [] if k.startswith("task.")]
    for key in required:  # a paper row's real data (`required:`), unset: planned as given, never read
        if OmegaConf.select(task_cfg, key) is None:
            OmegaConf.update(task_cfg, key, PLAN_ONLY_ROOT)
    for key in [*required, *_fill_missing(task_cfg, PLAN_ONLY_ROOT)]:
        if OmegaConf.select(task_cfg, key) == PLAN_ONLY_ROOT:
            notes.append(f"task.{key} is required by this config; planned as real data without reading it")
    cls = get_class(task_cfg._target_)
    make = {"Llama": _llama_task, "DiTTask": _dit_task}.get(cls.__name__, lambda cls, task_cfg, notes: cls(task_cfg))
    try:
        task = make(cls, task_cfg, notes)
    except PlanError:
        raise
    except (OSError, ValueError) as err:  # the task's own config checks (ConfigError) and missing folders
        raise PlanError(f"{task_cfg.name}: {str(err).splitlines()[0]}") from None
    if getattr(task, "embedded", False) and task_cfg.get("size") not in ("debug", "cpu"):
        notes.append("task.data.root is unset: planned on the embedded data's shapes; task.data.root=<path> (not "
                     "read here) plans the real data's (ImageNet: 3×image_size², data.num_classes classes)")
    return task


def _llama_task(cls, task_cfg, notes):
    from omegaconf import open_dict

    from tasks.llama import SIZES

    if task_cfg.size not in SIZES:
        raise PlanError(f"task.size={task_cfg.size} is unknown; known: {', '.join(SIZES)}")
    overrides = task_cfg.model.get("overrides") or {}
    if "vocab_size" not in SIZES[task_cfg.size] and "vocab_size" not in overrides:
        if task_cfg.data.tokenizer_path:  # a local tokenizer folder: its vocabulary, as the task would take it
            if not Path(task_cfg.data.tokenizer_path).expanduser().exists():
                raise PlanError(f"task.data.tokenizer_path={task_cfg.data.tokenizer_path} does not exist; give a local "
                                "tokenizer folder or task.model.overrides.vocab_size=<n>")
            return cls(task_cfg)
        with open_dict(task_cfg):
            task_cfg.model.overrides = {**overrides, "vocab_size": task_cfg.data.vocab_size}
        notes.append(f"vocabulary: task.data.vocab_size={task_cfg.data.vocab_size} (the BPE the suite trains when no "
                     "tokenizer is given); task.model.overrides.vocab_size=<n> sets another")
    return cls(task_cfg)


def _dit_task(cls, task_cfg, notes):
    """DiT's constructor checks the data folder, the VAE and the FID weights: build it on the embedded
    config, then give it the latent geometry a real-data run has."""
    from omegaconf import open_dict

    real = bool(task_cfg.data.root) or bool(task_cfg.data.require_root)
    embedded = task_cfg.copy()
    with open_dict(embedded):
        embedded.data.root, embedded.data.require_root = None, False
        embedded.eval.fid, embedded.eval.reference, embedded.eval.inception_path = False, None, None
        embedded.grid.classes = None
    task = cls(embedded)
    if real:
        vae = task_cfg.vae.path
        if vae and Path(vae).expanduser().exists():
            from tasks.data.latents import vae_geometry

            task.channels, factor = vae_geometry(vae)
        else:  # facebookresearch/DiT train.py: SD-VAE latents, 4 channels at 1/8 of the image size
            task.channels, factor = 4, 8
            notes.append("DiT latents: SD-VAE's geometry (4 channels, image_size / 8), as DiT; task.vae.path "
                         "gives another")
        task.input_size = task_cfg.data.image_size // factor
        task.num_classes = task_cfg.data.num_classes
        if task.num_classes is None:  # the run reads it from the folder's classes: planned as ImageNet's
            task.num_classes = 1000
            notes.append("classes: 1000 (ImageNet's); task.data.num_classes=<n> plans another")
        task.embedded = False
    return task


def build_on_meta(cfg, task, device: str = "meta"):
    """The model as `dyt.train.run.build` makes it (native norms, then `dyt.convert`, then the task's
    norm-dependent changes), on the meta device (or, for a check, a real one). Returns (model, swaps)."""
    from dyt.convert import SwapList, convert
    from dyt.train.config import NATIVE, norm_spec

    with torch.device(device):
        model = task.build_model()
    # outside the meta context: convert probes each norm with a small CPU copy; the new layers take the old
    # ones' device (meta), as the task's norm-dependent changes do
    if cfg.norm.type == NATIVE:
        swaps = SwapList()
    else:
        swaps = convert(model, norm_spec(cfg.norm), roles=task.norm_roles, exclude=task.norm_exclude)
    task.adapt_to_norm(model, cfg.norm)
    # buffers a constructor computed on the CPU on purpose (DiT's sin-cos positions) join the rest on meta
    return model.to(device), swaps


def find_units(model):
    """(path, [modules]) of the sharding and checkpointing units: the ModuleList or Sequential of modules of
    one class that holds the most parameters (decoder layers, blocks, stages)."""
    best = None
    for path, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            children = list(module.children())
            if children and len({type(c) for c in children}) == 1:
                params = sum(p.numel() for p in module.parameters())
                if best is None or params > best[0]:
                    best = (params, path, children)
    if best is None:
        return "", []
    return best[1], best[2]


# ---------------------------------------------------------------------------------------- the activation trace


@dataclass
class ActivationTrace:
    """Bytes autograd keeps for backward after one forward (and loss) of a micro-batch."""

    total: int  # every saved storage, once
    outside_units: int  # saved while no unit ran: embeddings, head, loss
    per_unit: list[int]  # saved first inside each unit
    unit_inputs: int  # what full checkpointing keeps: the units' inputs (storages not already outside)
    scale: float = 1.0  # the trace ran on a shorter sequence (Caduceus); the numbers above are scaled

    @property
    def largest_unit(self) -> int:
        return max(self.per_unit, default=0)

    def without_checkpointing(self) -> int:
        return self.total

    def with_checkpointing(self) -> int:
        """Outside the units as without; the units' inputs; one unit recomputed for its backward."""
        return self.outside_units + self.unit_inputs + self.largest_unit

    def checkpointing_every(self, k: int) -> int:
        """Every k-th unit checkpointed (trainer.activation_checkpointing=every_<k>): those keep their input,
        the others all they save; one checkpointed unit recomputed for its backward."""
        chosen = set(range(k - 1, len(self.per_unit), k))
        per_input = self.unit_inputs / max(1, len(self.per_unit))
        kept = sum(per_input if i in chosen else saved for i, saved in enumerate(self.per_unit))
        recomputed = max((self.per_unit[i] for i in chosen), default=0)
        return int(self.outside_units + kept + recomputed)


def _storage(t):
    return t.untyped_storage()


def _key(t) -> int:
    return _storage(t)._cdata


def _flash_sdpa():
    """Stands in for SDPA on the meta device: what FlashAttention-2 and memory-efficient attention keep for
    backward (q, k, v, the output and the fp32 log-sum-exp per row), not the s×s matrix of the math path."""

    class FlashAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty((*q.shape[:-1], v.shape[-1]))
            lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):  # pragma: no cover — a planning trace never runs backward
            raise RuntimeError("plan_memory traces the forward only")

    eager = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if query.device.type != "meta":  # real tensors run the real kernel
            return eager(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                         scale=scale, enable_gqa=enable_gqa)
        return FlashAttention.apply(query, key, value)

    return sdpa


def _fused_dyt():
    """DyT as the fused op (Triton on CUDA) runs it: it keeps its input (and α, γ), nothing else."""
    from dyt.kernels import dispatch
    from dyt.kernels.ops import out_dtype

    eager = dispatch.dynamic_tanh

    class FusedDyT(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, alpha, weight, bias):
            ctx.save_for_backward(x, alpha, weight)
            return x.new_empty(x.shape, dtype=out_dtype(x, alpha, weight, bias))

        @staticmethod
        def backward(ctx, grad):  # pragma: no cover
            raise RuntimeError("plan_memory traces the forward only")

    def dynamic_tanh(x, alpha, weight=None, bias=None, *, channels_last=True, kernel=None):
        if x.device.type != "meta" or kernel not in (None, "auto", "triton"):
            return eager(x, alpha, weight, bias, channels_last=channels_last, kernel=kernel)
        return FusedDyT.apply(x, alpha, weight, bias)

    return dynamic_tanh


@contextlib.contextmanager
def gpu_kernels(attention: str):
    """Patch, for the trace only, the calls whose meta fallback keeps more than the GPU kernel does."""
    from dyt.kernels import dispatch

    saved = F.scaled_dot_product_attention, dispatch.dynamic_tanh
    try:
        if attention == "flash":
            F.scaled_dot_product_attention = _flash_sdpa()
        dispatch.dynamic_tanh = _fused_dyt()
        yield
    finally:
        F.scaled_dot_product_attention, dispatch.dynamic_tanh = saved


def trace_activations(model, units, loss_fn, *, dtype, attention: str = "flash") -> ActivationTrace:
    """Run `loss_fn()` (a forward and loss, on meta tensors for a plan, on real ones to check the plan) with
    the model in `dtype` and count what autograd saves, each storage once, the model's weights left out."""
    from torch.utils._pytree import tree_flatten

    model.to(dtype)
    model.train()
    weights = {_key(p) for p in model.parameters()}
    sizes: dict[int, int] = {}  # storage → bytes, every saved storage
    owner: dict[int, int] = {}  # storage → index of the unit that saved it first (-1: outside)
    inputs: dict[int, int] = {}  # storage → bytes of the units' inputs
    active: list[int] = []
    held: list = []  # every tensor counted stays alive until the counts are done: no storage address is reused

    def pack(t):
        key = _key(t)
        if key not in weights and key not in sizes:
            sizes[key] = _storage(t).nbytes()
            owner[key] = active[-1] if active else -1
            held.append(t)
        return t

    def cast_inputs(_module, args, kwargs):  # FSDP2's MixedPrecisionPolicy(cast_forward_inputs=True)
        def cast(x):
            return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x

        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    def enter(index):
        def hook(_module, args, kwargs):
            active.append(index)
            for x in tree_flatten((args, kwargs))[0]:
                if isinstance(x, torch.Tensor) and _key(x) not in weights and _key(x) not in inputs:
                    inputs[_key(x)] = _storage(x).nbytes()
                    held.append(x)
        return hook

    def leave(_module, _args, _output):
        active.pop()

    handles = [model.register_forward_pre_hook(cast_inputs, with_kwargs=True)]
    for index, unit in enumerate(units):
        handles.append(unit.register_forward_pre_hook(enter(index), with_kwargs=True))
        handles.append(unit.register_forward_hook(leave))
    try:
        with gpu_kernels(attention), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_fn()
        del loss
    finally:
        for handle in handles:
            handle.remove()
    per_unit = [0] * len(units)
    outside = 0
    for key, size in sizes.items():
        if owner[key] < 0:
            outside += size
        else:
            per_unit[owner[key]] += size
    kept_inputs = sum(size for key, size in inputs.items() if owner.get(key, 0) >= 0)  # not counted outside
    held.clear()
    return ActivationTrace(total=sum(sizes.values()), outside_units=outside, per_unit=per_unit, unit_inputs=kept_inputs)


# ---------------------------------------------------------------------------------------- one batch per task


def loss_function(task, model, cfg, micro_batch: int, device: str = "meta"):
    """(a function running the task's forward and loss on a micro-batch of meta tensors (or, for a check,
    real zeros on `device`), the scale of the trace, a description of the batch)."""
    meta = torch.device(device)
    name = type(task).__name__
    if name == "Llama":
        tokens = torch.zeros(micro_batch, task.seq_len + 1, dtype=torch.long, device=meta)
        return (lambda: task._token_losses(model, tokens).mean()), 1.0, f"{micro_batch} × {task.seq_len} tokens"
    if name == "ImageClassification":
        size = task.image_size
        images = torch.zeros(micro_batch, task.channels, size, size, device=meta)
        labels = torch.zeros(micro_batch, dtype=torch.long, device=meta)
        return (lambda: F.cross_entropy(model(images).float(), labels)), 1.0, \
            f"{micro_batch} images of {task.channels}×{size}×{size}"
    if name == "DiTTask":
        # the noise schedule's tensors on the batch's device: diffusers' add_noise moves alphas_cumprod there
        # and variational_bound combines it with betas, which it leaves on the CPU
        for attr in ("betas", "alphas", "alphas_cumprod"):
            setattr(task.scheduler, attr, getattr(task.scheduler, attr).to(meta))
        x0 = torch.zeros(micro_batch, task.channels, task.input_size, task.input_size, device=meta)
        y = torch.zeros(micro_batch, dtype=torch.long, device=meta)
        t = torch.zeros(micro_batch, dtype=torch.long, device=meta)  # a timestep index; any traces alike
        return (lambda: task.diffusion_loss(model, x0, y, t, torch.zeros_like(x0))[0].mean()), 1.0, \
            f"{micro_batch} inputs of {task.channels}×{task.input_size}×{task.input_size}"
    if name == "Wav2Vec2Pretraining":
        return _wav2vec2_loss(task, model, micro_batch, meta)
    if hasattr(task, "_outputs"):  # the DNA tasks (tasks/dna/task.py)
        return _genome_loss(task, model, micro_batch, meta)
    raise PlanError(f"plan_memory does not know how to make a batch for {name}; add it to loss_function")


def _wav2vec2_loss(task, model, micro_batch, device):
    """One length batch holds task.data.max_tokens audio samples as utterances of max_sample_size; the
    contrastive head is traced over mask_time_prob × frames masked frames, each against num_negatives + 1
    candidates, as the task's `_contrastive` computes it (bool indexing by a gather of that many frames)."""
    d, c = task.cfg.data, task.config
    utterances = max(1, d.max_tokens // d.max_sample_size) * micro_batch
    waves = torch.zeros(utterances, d.max_sample_size, device=device)
    frames = int(model._get_feat_extract_output_lengths(d.max_sample_size))
    masked = utterances * math.ceil(c.mask_time_prob * frames)
    model.config.layerdrop = 0.0  # every layer runs: the step with the most activations
    model.config.apply_spec_augment = False  # its bool-mask indexing needs numbers; the masked embedding is tiny

    def loss():
        out = model(waves)
        dim = out.projected_states.shape[-1]
        frame = torch.zeros(masked, dtype=torch.long, device=device)
        negatives = torch.zeros(masked * c.num_negatives, dtype=torch.long, device=device)
        predicted = out.projected_states.reshape(-1, dim)[frame]
        targets = out.projected_quantized_states.reshape(-1, dim)
        candidates = torch.cat([targets[frame][:, None], targets[negatives].view(masked, c.num_negatives, dim)], 1)
        similarity = F.cosine_similarity(predicted[:, None].float(), candidates.float(), dim=-1)
        logits = similarity / c.contrastive_logits_temperature
        return F.cross_entropy(logits, logits.new_zeros(masked, dtype=torch.long)) + out.codevector_perplexity

    return loss, 1.0, f"{utterances} utterances of {d.max_sample_size} samples ({frames} frames, {masked} masked)"


def _genome_loss(task, model, micro_batch, device):
    data = task.cfg.data
    if task.finetune:
        length = data.max_len or data.window
    else:
        length = data.seq_len + (task.objective == "causal")
    traced, scale = length, 1.0
    if type(task).__name__ == "CaduceusTask" and length > CADUCEUS_TRACE_POSITIONS and device.type == "meta":
        traced = CADUCEUS_TRACE_POSITIONS  # its scan is a Python loop over positions: trace fewer, scale up
        scale = length / traced
    tokens = torch.zeros(micro_batch, traced, dtype=torch.long, device=device)
    batch = {"tokens": tokens, "targets": torch.zeros(micro_batch, traced, dtype=torch.long, device=device),
             "labels": torch.zeros(micro_batch, dtype=torch.long, device=device)}

    def loss():
        logits, targets = task._outputs(model, batch)
        return F.cross_entropy(logits.float(), targets)

    what = f"{micro_batch} × {length} nucleotides"
    if scale != 1:
        what += f" (traced over {traced}, scaled ×{scale:.1f})"
    return loss, scale, what


# ---------------------------------------------------------------------------------------- LLaMA's closed form


def llama_layer_activation_bytes(config, batch: int, seq: int, *, fused_norm: bool, dtype_bytes: int = 2) -> float:
    """Bytes one transformers LlamaDecoderLayer keeps for backward with flash attention, per micro-batch,
    counted here in bytes per element of [b, s, h] in 16-bit: each norm keeps its input — HF's RMSNorm an fp32
    copy (4) and the bf16 normalised x (2), a fused DyT the bf16 input (2) — and the q/k/v or gate/up
    projections keep the norm's output (2); flash attention keeps q after RoPE (2), k and v (2 · kv_heads/heads
    each) and its output (2); o_proj keeps the output transposed back to [b, s, h] (2); SwiGLU keeps SiLU's
    input, its output, up's output and their product, each [b, s, f] (4 · 2 · f/h). In all
    s·b·h·(2·(norm + 2) + 6 + 4·kv/a + 8·f/h) bytes: with RMSNorm 26 + 8·f/h (LLaMA 7B, f/h = 2.6875: 47.5),
    with DyT 18 + 8·f/h (39.5). Korthikanti et al. count 34 + 5·a·s/h for GPT (GELU MLP of 4h, dropout masks,
    no flash); the small terms (RMSNorm's fp32 rstd, flash's fp32 log-sum-exp, s·b·4 and s·b·a·4 bytes) are
    left out here."""
    h, f = config.hidden_size, config.intermediate_size
    a, kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    half = dtype_bytes / 2
    norm = 2 * half if fused_norm else 4 + 2 * half  # the fp32 copy stays 4 bytes whatever the compute dtype
    per_element = 2 * (norm + 2 * half) + (6 + 4 * kv / a + 8 * f / h) * half
    return batch * seq * h * per_element


# ---------------------------------------------------------------------------------------- the accounting


@dataclass
class Plan:
    """Everything the table and the JSON show."""

    task: str
    size: str | None
    norm: str
    norms_replaced: int
    parameters: int
    units: str
    unit_count: int
    largest_unit_parameters: int
    root_parameters: int
    micro_batch: int
    batch: str
    compute_dtype: str
    attention: str
    gpus: int
    gpu_mem_gib: float
    grad_accum: int | None
    activations: dict
    configurations: dict  # "ddp/none" … → {components GiB, total, fits}
    selected: str | None
    notes: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)


def plan_components(*, params: int, root: int, unit: int, units: int, strategy: str, gpus: int,
                    half_precision: bool, activations: int, working_set: int) -> dict[str, float]:
    """Bytes per GPU of each component for one strategy; activations as given (with or without checkpointing)."""
    compute = 2 if half_precision else 4
    if strategy == "ddp":
        return {
            "weights (fp32)": params * MASTER_BYTES,
            "gradients (fp32)": params * MASTER_BYTES,
            "optimizer (AdamW, 2 × fp32)": params * MASTER_BYTES * ADAM_MOMENTS,
            "DDP gradient buckets (fp32)": params * MASTER_BYTES,
            "compute-dtype weight copies": params * 2 if half_precision else 0,  # autocast's cast cache
            "unsharded gradients in flight": 0,
            "activations": activations,
            "backward working set": working_set,
        }
    gathered = root + min(2, units) * unit  # reshard_after_forward: the unit computing and the one prefetched
    reduce_copy = 4 if half_precision else 0  # reduce_dtype fp32: the reduce-scatter reads an fp32 copy
    return {
        "weights (fp32)": params * MASTER_BYTES / gpus,
        "gradients (fp32)": params * MASTER_BYTES / gpus,
        "optimizer (AdamW, 2 × fp32)": params * MASTER_BYTES * ADAM_MOMENTS / gpus,
        "DDP gradient buckets (fp32)": 0,
        "compute-dtype weight copies": gathered * compute,  # root + 2 units all-gathered
        "unsharded gradients in flight": gathered * (compute + reduce_copy),
        "activations": activations,
        "backward working set": working_set,
    }


def configuration(components: dict[str, float], *, overhead_gib: float, fragmentation: float, gpu_mem: float) -> dict:
    counted = sum(components.values())
    margin = counted * fragmentation
    total = counted + margin + overhead_gib * GIB
    rows = {name: value / GIB for name, value in components.items()}
    rows["fragmentation margin"] = margin / GIB
    rows["CUDA / NCCL overhead"] = overhead_gib
    return {"components_gib": rows, "total_gib": total / GIB, "fits": total / GIB <= gpu_mem}


def _llama_closed_form(cfg, task, model, micro: int, half: bool, trace: ActivationTrace, units: int):
    """LLaMA's per-layer closed form beside the trace, for the norms it is derived for (None otherwise)."""
    norm = cfg.norm
    if norm.type == "dyt" and norm.get("kernel") in (None, "auto", "triton") and norm.get("fn") in (None, "tanh"):
        fused = True
    elif cfg.norm.type == "native":  # transformers' LlamaRMSNorm
        fused = False
    else:
        return None, None
    layer = llama_layer_activation_bytes(model.config, micro, task.seq_len, fused_norm=fused,
                                         dtype_bytes=2 if half else 4)
    logits = micro * task.seq_len * model.config.vocab_size * 4
    info = {"per_layer": layer / GIB, "layers": layer * units / GIB, "fp32_logits": logits / GIB}
    note = (f"closed form (llama_layer_activation_bytes, flash attention): {layer / GIB:.3f} GiB per layer (trace "
            f"{trace.largest_unit / GIB:.3f}); fp32 log-probabilities b·s·vocab·4 = {logits / GIB:.2f} GiB")
    return info, note


def _assumptions(options, units, unit_path, largest, root, half, precision) -> list[str]:
    found = (f"{len(units)} sharding / checkpointing unit(s): {unit_path} ({type(units[0]).__name__}, largest "
             f"{largest / 1e6:.1f} M parameters); root {root / 1e6:.1f} M" if units else
             "no repeated blocks found: the whole model is one unit (the root)")
    gathered = ("all-gathered bf16/fp16 weights and their unsharded gradients (+ the fp32 reduce-scatter copy)" if half
                else "all-gathered fp32 weights and their unsharded gradients")
    return [
        found,
        "weights, gradients, AdamW's two moments in fp32; DDP replicates them and adds fp32 gradient buckets"
        + (" and autocast's half-precision weight copies" if half else ""),
        f"FSDP2 shards them over the GPUs; {gathered} for the root and 2 units at a time (reshard_after_forward)",
        f"activations: what autograd saves in one {precision if half else 'fp32'} forward + loss, traced on meta "
        f"tensors, {'flash' if options.attention == 'flash' else 'math (s×s)'} attention, fused DyT; full "
        "checkpointing keeps the units' inputs and recomputes one unit; + one unit's activations as the backward "
        "working set",
        f"fixed {options.overhead_gib:g} GiB per GPU (CUDA context, cuBLAS, NCCL) and a {options.fragmentation:.0%} "
        "allocator-fragmentation margin; GiB = 2^30 bytes",
    ]


def make_plan(argv: list[str]) -> Plan:
    from dyt.train.parallel import units_of
    from dyt.train.run import native_norm, norm_label

    options, overrides = parse_args(argv)
    cfg = compose_config(overrides)
    notes: list[str] = []
    strategy = options.strategy or cfg.trainer.get("strategy")  # the command line, else the config once it has the key
    checkpointing = options.activation_checkpointing or cfg.trainer.get("activation_checkpointing") or "none"
    every = re.fullmatch(r"every_([1-9]\d*)", str(checkpointing))
    if strategy not in (None, *STRATEGIES) or (checkpointing not in CHECKPOINTING and not every):
        raise PlanError(f"trainer.strategy={strategy}, trainer.activation_checkpointing={checkpointing}: use ddp or "
                        "fsdp, and none, full or every_<k>")

    task = planning_task(cfg, notes)
    model, swaps = build_on_meta(cfg, task)
    params = sum(p.numel() for p in model.parameters())
    unit_path, units = task.shard_units, units_of(model, task.shard_units)
    if not units:  # a task that names none: the largest list of same-class blocks
        unit_path, units = find_units(model)
    unit_params = [sum(p.numel() for p in u.parameters()) for u in units]
    root, largest = params - sum(unit_params), max(unit_params, default=0)

    precision = cfg.trainer.mixed_precision
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    half = dtype != torch.float32
    micro = options.micro_batch or cfg.trainer.batch_size
    loss_fn, scale, batch = loss_function(task, model, cfg, micro)
    try:
        trace = trace_activations(model, units, loss_fn, dtype=dtype, attention=options.attention)
    except ValueError as err:  # the model refuses the configured shapes (a sequence beyond max_len …)
        raise PlanError(f"{task.name}: {str(err).splitlines()[0]}") from None
    if scale != 1:
        trace = ActivationTrace(total=round(trace.total * scale), outside_units=round(trace.outside_units * scale),
                                per_unit=[round(u * scale) for u in trace.per_unit],
                                unit_inputs=round(trace.unit_inputs * scale), scale=scale)
    activations = {"none": trace.without_checkpointing(), "full": trace.with_checkpointing()}
    if every:
        activations[checkpointing] = trace.checkpointing_every(int(every.group(1)))
    activation_info = {
        "traced_gib": {"total": trace.total / GIB, "outside_units": trace.outside_units / GIB,
                       "largest_unit": trace.largest_unit / GIB, "unit_inputs": trace.unit_inputs / GIB},
        "without_checkpointing_gib": activations["none"] / GIB,
        "with_checkpointing_gib": activations["full"] / GIB,
        "backward_working_set_gib": trace.largest_unit / GIB,
    }
    if type(task).__name__ == "Llama":
        closed_form, note = _llama_closed_form(cfg, task, model, micro, half, trace, len(units))
        if closed_form:
            activation_info["closed_form_gib"] = closed_form
            notes.append(note)
    if options.attention == "math":
        notes.append("attention: the math path's s×s probabilities are kept, as the meta device's SDPA fallback "
                     "keeps them (in fp32)")

    grad_accum = None
    if cfg.trainer.get("global_batch_size"):
        per_step = micro * options.gpus
        grad_accum = cfg.trainer.global_batch_size // per_step
        if cfg.trainer.global_batch_size % per_step:
            notes.append(f"trainer.global_batch_size={cfg.trainer.global_batch_size} is not a multiple of "
                         f"micro-batch {micro} × {options.gpus} GPUs: the trainer would refuse it")
    configurations = {}
    for strat in STRATEGIES:
        for ac in activations:
            components = plan_components(params=params, root=root, unit=largest, units=len(units), strategy=strat,
                                         gpus=options.gpus, half_precision=half, activations=activations[ac],
                                         working_set=trace.largest_unit)
            configurations[f"{strat}/{ac}"] = configuration(components, overhead_gib=options.overhead_gib,
                                                            fragmentation=options.fragmentation,
                                                            gpu_mem=options.gpu_mem)
    size = cfg.task.get("size")
    return Plan(task=task.name, size=str(size) if size is not None else None,
                norm=norm_label(cfg.norm, native=native_norm(model)), norms_replaced=len(swaps.replaced),
                parameters=params, units=unit_path, unit_count=len(units), largest_unit_parameters=largest,
                root_parameters=root, micro_batch=micro, batch=batch, compute_dtype=str(dtype).removeprefix("torch."),
                attention=options.attention, gpus=options.gpus, gpu_mem_gib=options.gpu_mem, grad_accum=grad_accum,
                activations=activation_info, configurations=configurations,
                selected=f"{strategy}/{checkpointing}" if strategy else None, notes=notes,
                assumptions=_assumptions(options, units, unit_path, largest, root, half, precision))


# ---------------------------------------------------------------------------------------- output


COLUMNS = (("ddp/none", "DDP"), ("ddp/full", "DDP + AC"), ("fsdp/none", "FSDP"), ("fsdp/full", "FSDP + AC"))


def verdict(plan: Plan, key: str, width: int = 0) -> str:
    """`FSDP, full activation checkpointing: fits in 80 GiB: yes (28.5 of 80 GiB)`."""
    config = plan.configurations[key]
    strategy, ac = key.split("/")
    if ac in ("full", "none"):
        label = f"{strategy.upper()}, {'full' if ac == 'full' else 'no'} activation checkpointing:"
    else:
        label = f"{strategy.upper()}, activation checkpointing of one unit in {ac.split('_')[1]}:"
    return (f"{label:<{width}} fits in {plan.gpu_mem_gib:g} GiB: {'yes' if config['fits'] else 'no'} "
            f"({config['total_gib']:.1f} of {plan.gpu_mem_gib:g} GiB)")


def render(plan: Plan) -> str:
    title = f"{plan.task}" + (f" {plan.size}" if plan.size else "")
    lines = [
        f"{title}, norm {plan.norm} ({plan.norms_replaced} replaced): {plan.parameters / 1e9:.3f} B parameters "
        f"({plan.parameters * MASTER_BYTES / GIB:.1f} GiB in fp32)",
        f"micro-batch per GPU: {plan.batch}; compute {plan.compute_dtype}, {plan.attention} attention; "
        f"{plan.gpus} GPUs × {plan.gpu_mem_gib:g} GiB"
        + (f"; grad accumulation {plan.grad_accum} for the global batch" if plan.grad_accum else ""),
        "",
    ]
    width = max(len(name) for name in next(iter(plan.configurations.values()))["components_gib"]) + 2
    lines.append(f"{'GiB per GPU':<{width}}" + "".join(f"{label:>12}" for _, label in COLUMNS))
    for name in next(iter(plan.configurations.values()))["components_gib"]:
        lines.append(f"{name:<{width}}" + "".join(
            f"{plan.configurations[key]['components_gib'][name]:>12.2f}" for key, _ in COLUMNS))
    lines.append("-" * (width + 12 * len(COLUMNS)))
    totals = (plan.configurations[key]["total_gib"] for key, _ in COLUMNS)
    lines.append(f"{'total':<{width}}" + "".join(f"{total:>12.1f}" for total in totals))
    lines.append("")
    lines += [verdict(plan, key, width=39) for key, _ in COLUMNS]
    if plan.selected:
        lines += ["", f"this run (trainer.strategy, activation checkpointing): {verdict(plan, plan.selected)}"]
    lines += ["", "assumptions:"] + [f"  - {a}" for a in plan.assumptions]
    if plan.notes:
        lines += ["notes:"] + [f"  - {n}" for n in plan.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        plan = make_plan(argv)
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "--json" in argv:
        print(json.dumps(asdict(plan), indent=2))
    else:
        print(render(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
