"""Whole-model efficiency, two parts, each measured side by side in one run:

1. The paper's Tables 14/15 protocol: a LLaMA built from a config with random weights (7B on a GPU, a CPU-sized
   one here), inference (forward) and training (forward + backward) passes on one sequence, with RMSNorm, DyT
   and Identity in the norm slots; a layer's time is the model's time minus the Identity model's. Norms run
   eager (HF's LlamaRMSNorm as shipped, DyT's formula), with each norm layer torch.compile'd, torch's own
   nn.RMSNorm, and DyT's fused kernel.
2. Full training steps (forward, loss, backward, clipping, AdamW) of the suite's CPU-scale defaults — the ViT
   of tasks/image_classification.py on 1×28×28 digits, batch 64, and the LLaMA of tasks/llama.py, batch 16 of
   128 tokens — with DyT against the model's native norm, as a ratio.

    python scripts/bench_efficiency.py                               # → results/efficiency/
    python scripts/bench_efficiency.py --threads 1 --clock cpu       # a busy shared machine: CPU time, 1 thread
    python scripts/bench_efficiency.py --device cuda                 # LLaMA 7B, 4096 tokens, bf16, 100 passes

Timing: the variants take turns in every round, so a change in load hits them all alike, and each keeps its
fastest round (the time per pass or step within it).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_norms import device_name, load, sync  # noqa: E402

from dyt import convert, param_groups  # noqa: E402
from dyt.convert import build_norm, describe_norm  # noqa: E402

# LLaMA sizes for part 1: the paper's 7B, and one a 2-core CPU runs in seconds per pass
PROTOCOL_SIZES = {
    "7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               vocab_size=32000),
    "cpu": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                vocab_size=4096),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def clock_for(args):
    return time.thread_time if args.clock == "cpu" else time.perf_counter


def interleaved(runs: dict, rounds: int, device, clock) -> dict[str, float]:
    """Seconds per call of each run: in every round each run is called `calls` times; the fastest round counts."""
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, (run, calls) in runs.items():
            sync(device)
            t0 = clock()
            for _ in range(calls):
                run()
            sync(device)
            best[name] = min(best[name], (clock() - t0) / calls)
    return best


# ---------------------------------------------------------------- part 1: Tables 14/15


class NormSlots:
    """One model, its norm layers swappable in place: the variants share every other weight (and memory)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.native = {p: m for p, m in model.named_modules() if type(m).__name__ == "LlamaRMSNorm"}
        self.variants: dict[str, dict[str, nn.Module]] = {}

    def add(self, name: str, make) -> None:
        self.variants[name] = {path: make(module) for path, module in self.native.items()}

    def use(self, name: str) -> None:
        for path, module in self.variants[name].items():
            parent, _, child = path.rpartition(".")
            setattr(self.model.get_submodule(parent), child, module)


def replacement(norm_type: str, **options):
    def make(module: nn.Module) -> nn.Module:
        info = describe_norm(module)
        tensor = module.weight
        new = build_norm(norm_type, info, 0.5, options, {"device": tensor.device, "dtype": tensor.dtype})
        if getattr(new, "weight", None) is not None:
            with torch.no_grad():
                new.weight.copy_(module.weight)
        return new
    return make


def compiled_copy(module: nn.Module) -> nn.Module:
    module = copy.deepcopy(module)
    module.compile()
    return module


def protocol(args, device, dtype, clock) -> tuple[list[str], dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = PROTOCOL_SIZES[args.size]
    config = LlamaConfig(max_position_embeddings=args.seq, tie_word_embeddings=False, **fields)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    fused = "triton" if device.type == "cuda" else "cpu"
    slots = NormSlots(model)
    slots.variants["RMSNorm, eager (HF)"] = dict(slots.native)
    slots.add("RMSNorm, compiled", compiled_copy)
    slots.add("RMSNorm, torch nn.RMSNorm", replacement("rmsnorm"))
    slots.add("DyT, eager", replacement("dyt", kernel="eager"))
    slots.add("DyT, compiled", replacement("dyt", kernel="compiled"))
    slots.add(f"DyT, fused ({fused})", replacement("dyt", kernel=fused))
    slots.add("Identity", replacement("identity"))
    ids = torch.randint(0, config.vocab_size, (1, args.seq), device=device)

    def infer():
        with torch.inference_mode():
            model(input_ids=ids)

    def train():
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    runs = {}
    for name in slots.variants:
        def activated(fn, name=name):
            def run():
                slots.use(name)
                fn()
            return run
        runs[(name, "inference")] = (activated(infer), args.passes)
        runs[(name, "training")] = (activated(train), args.passes)
        slots.use(name)  # warm-up: compiles what must be compiled
        infer(), train()
    best = interleaved(runs, args.rounds, device, clock)
    scale = args.report_passes
    lines = [f"## Tables 14/15 protocol: LLaMA {args.size} ({fields['hidden_size']} wide, "
             f"{fields['num_hidden_layers']} layers), random weights, one {args.seq}-token sequence", "",
             f"Seconds for {scale} passes (each variant's fastest of {args.rounds} rounds of {args.passes}); "
             "layer = model − Identity model.", "",
             "| norm | inference layer | inference model | training layer | training model |", "|---|---|---|---|---|"]
    table = {}
    for name in slots.variants:
        row = {mode: best[(name, mode)] * scale for mode in ("inference", "training")}
        layer = {mode: row[mode] - best[("Identity", mode)] * scale for mode in row}
        table[name] = (row, layer)
        if name != "Identity":
            lines.append(f"| {name} | {layer['inference']:.3f} s | {row['inference']:.3f} s | "
                         f"{layer['training']:.3f} s | {row['training']:.3f} s |")
    ident = table["Identity"][0]
    lines += [f"| Identity | – | {ident['inference']:.3f} s | – | {ident['training']:.3f} s |", ""]
    return lines, table


# ---------------------------------------------------------------- part 2: training steps of the CPU defaults


def vit_default():
    import timm

    from tasks.image_classification import SIZES

    name, preset = SIZES["vit"]["cpu"]
    model = timm.create_model(name, pretrained=False, num_classes=10, in_chans=1, img_size=28, global_pool="avg",
                              class_token=False, **preset)
    images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    return model, lambda m: F.cross_entropy(m(images), labels), "ViT CPU default (tasks/image_classification.py)", {}


def llama_default():
    from transformers import LlamaConfig, LlamaForCausalLM

    from tasks.llama import SIZES, ScaledEmbedding

    fields = SIZES["cpu"]
    config = LlamaConfig(vocab_size=4096, max_position_embeddings=128, tie_word_embeddings=False, **fields)
    model = LlamaForCausalLM(config)
    tokens = torch.randint(0, 4096, (16, 129))  # configs/task/llama.yaml: batch 16 of 128 tokens

    def loss(m):
        logits = m(input_ids=tokens[:, :-1]).logits
        return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())

    def adapt(m):  # DyT runs scale the embedding by a learnable √d, as tasks/llama.py does
        emb = m.get_input_embeddings()
        m.set_input_embeddings(ScaledEmbedding.wrap(emb, emb.embedding_dim ** 0.5))

    return model, loss, "LLaMA CPU default (tasks/llama.py)", {"adapt": adapt, "alpha_init": "auto"}


def training_steps(args, clock) -> tuple[list[str], list]:
    lines = ["## Training steps of the CPU-scale defaults (forward, loss, backward, clipping, AdamW)", "",
             "| model | native norm | DyT fused | DyT eager | DyT fused / native | DyT eager / native |",
             "|---|---|---|---|---|---|"]
    results = []
    for build in (vit_default, llama_default):
        torch.manual_seed(0)
        base, loss_fn, title, extra = build()
        models = {"native": base}
        for kernel in ("auto", "eager"):
            model = copy.deepcopy(base)
            convert(model, "dyt", alpha_init=extra.get("alpha_init", 0.5), kernel=kernel)
            if "adapt" in extra:
                extra["adapt"](model)
            models[kernel] = model

        def step_fn(model):
            opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)

            def step():
                loss_fn(model).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            return step

        runs = {name: (step_fn(model), args.steps) for name, model in models.items()}
        for run, _ in runs.values():
            run()  # warm-up (and the optimizer's state)
        best = interleaved(runs, args.rounds, torch.device("cpu"), clock)
        native, fused, eager = (best[k] * 1e3 for k in ("native", "auto", "eager"))
        native_name = type(next(m for m in base.modules() if "Norm" in type(m).__name__)).__name__
        lines.append(f"| {title} | {native:.1f} ms ({native_name}) | {fused:.1f} ms | {eager:.1f} ms | "
                     f"**{fused / native:.3f}** | {eager / native:.3f} |")
        results.append((title, native, fused, eager))
        print(lines[-1], flush=True)
    return lines + [""], results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="part 1; default bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--size", choices=PROTOCOL_SIZES, default=None, help="part 1 LLaMA (default: by device)")
    parser.add_argument("--seq", type=int, default=None, help="part 1 sequence length (4096 on a GPU, 256 on a CPU)")
    parser.add_argument("--passes", type=int, default=None, help="part 1 passes per round (GPU 100, CPU 3)")
    parser.add_argument("--report-passes", type=int, default=100, help="part 1 tables show seconds per this many")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="part 2 training steps per round")
    parser.add_argument("--parts", nargs="*", choices=("protocol", "steps"), default=("protocol", "steps"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this thread's CPU time, blind to time lost to other processes (with --threads 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "efficiency")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu" and (torch.get_num_threads() != 1 or device.type != "cpu"):
        parser.error("--clock cpu measures one thread: use it with --device cpu --threads 1")
    gpu = device.type == "cuda"
    args.size = args.size or ("7B" if gpu else "cpu")
    args.seq = args.seq or (4096 if gpu else 256)
    args.passes = args.passes or (100 if gpu else 3)
    dtype = DTYPES[args.dtype or ("bf16" if gpu else "fp32")]
    torch._dynamo.config.cache_size_limit = 64

    start_load = load()
    lines = []
    if "protocol" in args.parts:
        part, table = protocol(args, device, dtype, clock_for(args))
        lines += part
        print("\n".join(part), flush=True)
    if "steps" in args.parts:
        part, _ = training_steps(args, clock_for(args))
        lines += part
    dev = device_name(device)
    header = [f"# Whole-model efficiency on {dev}", "",
              f"torch {torch.__version__}; part 1 in {str(dtype).replace('torch.', '')} on {device.type}, part 2 "
              f"fp32 on the CPU; {'CPU time of the thread' if args.clock == 'cpu' else 'wall-clock time'}; "
              f"machine {start_load} at the start, {load()} at the end.",
              f"Command: `python scripts/bench_efficiency.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(),
              ""]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"efficiency_{device.type}" + (f"_{torch.get_num_threads()}threads" if device.type == "cpu" else "")
    (args.out / f"{stem}.md").write_text("\n".join(header + lines) + "\n")
    print(f"wrote {args.out / stem}.md")


if __name__ == "__main__":
    main()
