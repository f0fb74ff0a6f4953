"""Norm layers alone: forward and forward+backward time of native LayerNorm, native and compiled RMSNorm, and
eager, compiled and fused DyT, each as a ratio to native LayerNorm, with the effective bandwidth against a
copy, all measured side by side in one run.

    python scripts/bench_norms.py                       # this machine's device → results/kernels/
    python scripts/bench_norms.py --shapes cpu --rounds 30
    python scripts/bench_norms.py --device cuda --dtype bf16     # on a GPU: ViT-B, LLaMA-7B … in bf16

Timing: the methods take turns in every round (so a change in machine load hits them all alike) and each
keeps its fastest call (CPU) or its fastest round of back-to-back calls (GPU); a round lasts a few
milliseconds per method. Bytes counted: forward reads x
and writes y, the backward reads x and dy and writes dx (parameters are negligible), so forward+backward moves
5 tensors' worth, a copy 2.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyt import DynamicTanh, LayerNorm2d, RMSNorm2d  # noqa: E402
from dyt.kernels import cpu, ops  # noqa: E402

# (name, shape, channels_last)
SHAPES = {
    "cpu": [
        ("ViT CPU default (64×16 tokens, 128)", (64, 16, 128), True),
        ("LLaMA CPU default (16×128 tokens, 256)", (16, 128, 256), True),
        ("(16, 256, 256)", (16, 256, 256), True),
        ("(8, 1024, 1024)", (8, 1024, 1024), True),
        ("ViT-B (8×197 tokens, 768)", (8, 197, 768), True),
        ("LLaMA-7B (1×4096 tokens, 4096)", (1, 4096, 4096), True),
        ("ConvNeXt-B stage 1, NCHW (8, 128, 56, 56)", (8, 128, 56, 56), False),
    ],
    "gpu": [
        ("(16, 256, 256)", (16, 256, 256), True),
        ("(8, 1024, 1024)", (8, 1024, 1024), True),
        ("ViT-B (256×197 tokens, 768)", (256, 197, 768), True),
        ("LLaMA-7B (1×4096 tokens, 4096)", (1, 4096, 4096), True),
        ("LLaMA-7B (8×4096 tokens, 4096)", (8, 4096, 4096), True),
        ("ConvNeXt-B stage 1, NCHW (128, 128, 56, 56)", (128, 128, 56, 56), False),
    ],
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads ({torch.backends.cpu.get_cpu_capability()})"


def load() -> str:
    try:
        return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "load average n/a"


def codegen_usable(device) -> bool:
    """Whether compiled and fused layers can run: a C++ compiler on the CPU (the fused kernel's build tells),
    Triton on CUDA."""
    return ops._triton() is not None if device.type == "cuda" else cpu.available()


def methods(C: int, channels_last: bool, device, dtype) -> dict[str, nn.Module]:
    """The layers compared, each in the layout its model uses; without a compiler, the eager ones only."""
    layers = {
        "LayerNorm": nn.LayerNorm(C) if channels_last else LayerNorm2d(C),
        "RMSNorm": nn.RMSNorm(C) if channels_last else RMSNorm2d(C),
        "DyT eager": DynamicTanh(C, channels_last=channels_last, kernel="eager"),
    }
    if codegen_usable(device):
        fused_name = "triton" if device.type == "cuda" else "cpu"
        layers.update({
            "RMSNorm compiled": torch.compile(nn.RMSNorm(C) if channels_last else RMSNorm2d(C)),
            "DyT compiled": DynamicTanh(C, channels_last=channels_last, kernel="compiled"),
            f"DyT fused ({fused_name})": DynamicTanh(C, channels_last=channels_last, kernel=fused_name),
        })
    return {name: layer.to(device=device, dtype=dtype) for name, layer in layers.items()}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timer(fn, device, target_s: float, clock=time.perf_counter):
    """A callable giving the seconds per call of fn over about target_s of calls (at least 3). On a GPU the
    calls run back to back between two synchronisations; on a CPU each call is timed alone and the fastest
    kept, so a call that lost its core to another process (a shared machine) does not count."""
    fn()
    sync(device)
    start = clock()
    fn()
    sync(device)
    reps = max(3, int(target_s / max(clock() - start, 1e-7)))

    def measure() -> float:
        if device.type == "cuda":
            sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            sync(device)
            return (time.perf_counter() - t0) / reps
        best = float("inf")
        for _ in range(reps):
            t0 = clock()
            fn()
            best = min(best, clock() - t0)
        return best

    return measure


def bench_shape(shape, channels_last, device, dtype, rounds: int, target_s: float, clock) -> dict[str, dict]:
    C = shape[-1] if channels_last else shape[1]
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype, generator=gen)
    dy = torch.randn(shape, device=device, dtype=dtype, generator=gen)
    x_grad = x.clone().requires_grad_()
    layers = methods(C, channels_last, device, dtype)

    def fwd(layer):
        def run():
            with torch.no_grad():
                layer(x)
        return run

    def fwd_bwd(layer):
        params = list(layer.parameters())

        def run():  # autograd.grad: no accumulation into .grad, so no extra pass over x
            torch.autograd.grad(layer(x_grad), [x_grad, *params], dy)
        return run

    timers = {("copy", "fwd"): timer(lambda: x.clone(), device, target_s, clock)}
    for name, layer in layers.items():
        timers[(name, "fwd")] = timer(fwd(layer), device, target_s, clock)
        timers[(name, "fwd+bwd")] = timer(fwd_bwd(layer), device, target_s, clock)
    best = {key: float("inf") for key in timers}
    for _ in range(rounds):
        for key, measure in timers.items():
            best[key] = min(best[key], measure())
    nbytes = x.numel() * x.element_size()
    copy_bw = 2 * nbytes / best[("copy", "fwd")]
    rows = {}
    for name in layers:
        row = {}
        for mode, tensors in (("fwd", 2), ("fwd+bwd", 5)):
            t = best[(name, mode)]
            row[mode] = dict(ms=t * 1e3, ratio=t / best[("LayerNorm", mode)], gbs=tensors * nbytes / t / 1e9,
                             copy=tensors * nbytes / t / copy_bw)
        rows[name] = row
    rows["copy"] = {"fwd": dict(ms=best[("copy", "fwd")] * 1e3, ratio=float("nan"), gbs=copy_bw / 1e9, copy=1.0)}
    return rows


def markdown(results, header: list[str]) -> str:
    lines = header + [""]
    for name, shape, channels_last, rows in results:
        lines += [f"### {name}: {tuple(shape)}, {'channels-last' if channels_last else 'channels-first (NCHW)'}", "",
                  "| method | fwd ms | fwd × LN | fwd+bwd ms | fwd+bwd × LN | fwd GB/s (of copy) | fwd+bwd GB/s (of copy) |",
                  "|---|---|---|---|---|---|---|"]
        for method, row in rows.items():
            if method == "copy":
                continue
            f, fb = row["fwd"], row["fwd+bwd"]
            lines.append(f"| {method} | {f['ms']:.3f} | {f['ratio']:.2f} | {fb['ms']:.3f} | {fb['ratio']:.2f} | "
                         f"{f['gbs']:.0f} ({f['copy']:.0%}) | {fb['gbs']:.0f} ({fb['copy']:.0%}) |")
        copy = rows["copy"]["fwd"]
        lines += [f"| copy (x.clone()) | {copy['ms']:.3f} | | | | {copy['gbs']:.0f} (100%) | |", ""]
    return "\n".join(lines)


def plot(results, title: str, path: Path) -> None:
    methods_ = [m for m in results[0][3] if m not in ("copy", "LayerNorm")]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.6 * len(results) + 2.5), sharey=True)
    height = 0.8 / len(methods_)
    for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
        for i, method in enumerate(methods_):
            ys = [k + i * height for k in range(len(results))]
            ax.barh(ys, [r[3][method][mode]["ratio"] for r in results], height=height, label=method)
        ax.axvline(1.0, color="black", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"{mode} time / native LayerNorm (log; < 1 is faster)")
        ax.set_yticks([k + 0.4 - height / 2 for k in range(len(results))], [r[0] for r in results], fontsize=8)
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--shapes", choices=SHAPES, default=None, help="shape set (default: by device)")
    parser.add_argument("--only", nargs="*", default=None, help="substrings of shape names to keep")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--target-ms", type=float, default=5.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this thread's CPU time, blind to time lost to other processes (with --threads 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "kernels")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and (torch.get_num_threads() != 1 or args.device != "cpu"):
        parser.error("--clock cpu measures one thread: use it with --device cpu --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    shapes = SHAPES[args.shapes or ("gpu" if device.type == "cuda" else "cpu")]
    if args.only:
        shapes = [s for s in shapes if any(o in s[0] for o in args.only)]
    torch._dynamo.config.cache_size_limit = 64  # one compiled graph per shape and method
    torch._dynamo.config.accumulated_cache_size_limit = 1024
    fused = ops.resolve("auto", torch.empty(0, device=device))  # builds the CPU kernel first, if it must
    if not codegen_usable(device):
        print("no C++ compiler (CPU) / Triton (CUDA): compiled and fused layers are left out", flush=True)
    start_load = load()
    results = []
    for name, shape, channels_last in shapes:
        print(f"{name} {shape} …", flush=True)
        rows = bench_shape(shape, channels_last, device, dtype, args.rounds, args.target_ms / 1e3, clock)
        results.append((name, shape, channels_last, rows))
        for method, row in rows.items():
            if method != "copy":
                print(f"  {method:24s} fwd {row['fwd']['ratio']:6.2f}×  fwd+bwd {row['fwd+bwd']['ratio']:6.2f}×  "
                      f"({row['fwd+bwd']['ms']:.3f} ms, {row['fwd+bwd']['copy']:.0%} of copy bandwidth)")
    dev = device_name(device)
    header = [f"# Norm layers alone on {dev}", "",
              f"torch {torch.__version__}, {str(dtype).replace('torch.', '')}, fused DyT back end: "
              f"{getattr(fused, '__name__', 'formula').rsplit('.', 1)[-1]}; {args.rounds} rounds, fastest kept, "
              f"{'CPU time of the thread' if args.clock == 'cpu' else 'wall-clock time'}; "
              f"machine {start_load} at the start, {load()} at the end.",
              f"Command: `python scripts/bench_norms.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(),
              "", "× LN: time divided by native LayerNorm's in the same run (below 1 is faster). Bandwidth: bytes a "
              "fused kernel must move (forward 2 tensors, forward+backward 5) over the time, and as a share of a "
              "copy's bandwidth measured in the same run."]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"norms_{device.type}" + (f"_{torch.get_num_threads()}threads" if device.type == "cpu" else "")
    (args.out / f"{stem}.md").write_text(markdown(results, header) + "\n")
    plot(results, f"Norm layers, {dev}, {str(dtype).replace('torch.', '')}", args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.md and .png")


if __name__ == "__main__":
    main()
