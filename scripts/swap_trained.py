"""Swap the norms of a model trained with LayerNorm (or RMSNorm) for DyT, and see what a short fine-tune recovers.

    python scripts/swap_trained.py outputs/vit/norm:layernorm --norm dyt --out results/swap_vit_cpu
    python scripts/swap_trained.py vit.safetensors --norm dyt -- task=vit task.size=S    # timm / transformers weights

1. Loads the trained model: a run folder's last checkpoint, or a weights file (.safetensors, .pt, .pth, .bin) or a
   transformers folder (model*.safetensors / pytorch_model*.bin) loaded into the model that the task overrides
   after `--` build (with its native norms: the weights' own).
2. Records the input of every norm on `--batches` training batches.
3. Swaps every norm for `--norm` (a configs/norm/ name: dyt, dyisru, derf, …; `dyt.convert`, γ and β carried
   over) with each layer's α₀ from a rule (`--rules`, all by default):
     const    α₀ = `--alpha` (0.5, the paper's default), every layer alike;
     inv_std  α₀ = 1/std of the layer's recorded input (the paper's Fig. 8: a trained α tracks 1/std of its input,
              across training and across layers; f(x/std) has the slope of a per-token norm near 0);
     fit      α₀ minimising the mean of (f(α·x) − norm(x))² over the recorded inputs, norm(x) the old layer's output
              before its affine: the α that makes the new layer closest to the old one on this data.
4. Evaluates the unswapped model and each swap before any training, fine-tunes each for `--steps` steps (AdamW at a
   constant `--lr`, the task's loss, the same batches for every variant) and evaluates again. The unswapped model,
   fine-tuned the same way, is the reference.
5. Writes swap.json and swap.md to `--out` (default results/swap_<run folder name>/).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyt.analysis import normalized, statistic_norms  # noqa: E402
from dyt.convert import NormInfo, convert  # noqa: E402
from dyt.functional import pointwise_norm  # noqa: E402
from dyt.layers import PointwiseNorm  # noqa: E402
from dyt.optim import param_groups  # noqa: E402
from dyt.train.checkpoint import latest_checkpoint, model_weights  # noqa: E402
from dyt.train.config import norm_spec  # noqa: E402
from dyt.train.data import epoch_batches, eval_loader, train_loader  # noqa: E402
from dyt.train.run import build  # noqa: E402

RULES = ("const", "inv_std", "fit")
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.pth", "*.pt", "*.bin")


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import dyt.train  # noqa: F401 — registers the schemas and resolvers

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, "run_dir=unused", "logger=none"])


def _read_weights(path: Path) -> dict:
    """A state dict from a weights file or a folder of them (transformers' shards too)."""
    files = [path] if path.is_file() else next((sorted(path.glob(p)) for p in WEIGHT_FILES if list(path.glob(p))), [])
    if not files:
        raise SystemExit(f"error: {path} holds no weights ({', '.join(WEIGHT_FILES)})")
    state = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(file)))
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model", "module"):  # timm / DeiT / training-loop checkpoints nest it
                if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
                    loaded = loaded[key]
            state.update(loaded)
    return state


def trained_model(source: Path, overrides: list[str]):
    """(cfg, task, model) with the trained weights and the model's own norms."""
    if (source / "config.yaml").exists():
        cfg = OmegaConf.load(source / "config.yaml")
        checkpoint = latest_checkpoint(source / "checkpoints")
        if checkpoint is None:
            raise SystemExit(f"error: {source} has no complete checkpoint")
        weights = model_weights(checkpoint)
    else:
        if not any(o.startswith("task=") for o in overrides):
            raise SystemExit("error: weights without a run folder need the task after --, e.g. -- task=vit task.size=S")
        cfg = compose([*overrides, "norm=native"])
        weights = _read_weights(source)
    task, model, _ = build(cfg)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise SystemExit(f"error: the weights do not fit the model ({len(missing)} missing, e.g. {missing[:3]}; "
                         f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    return cfg, task, model


def norm_layers(model) -> list[tuple[str, NormInfo]]:
    found = statistic_norms(model)
    if not found:
        raise SystemExit("error: the model has no LayerNorm or RMSNorm to swap")
    return found



@torch.no_grad()
def record_inputs(model, task, batches, layers, max_elements: int = 200_000) -> dict[str, torch.Tensor]:
    """Each norm's input on the given batches, channels last, flattened to [tokens, C] (a random subset of rows
    past `max_elements`, drawn with a fixed seed)."""
    captured: dict[str, list] = {p: [] for p, _ in layers}
    infos = dict(layers)

    def hook(path):
        def keep(module, args):
            x = args[0].detach().float()
            x = x if infos[path].channels_last else x.movedim(1, -1)
            captured[path].append(x.reshape(-1, x.shape[-1]).cpu())
        return keep

    handles = [model.get_submodule(p).register_forward_pre_hook(hook(p)) for p, _ in layers]
    try:
        model.eval()
        for batch in batches:
            task.eval_step(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    gen = torch.Generator().manual_seed(0)
    out = {}
    for path, chunks in captured.items():
        x = torch.cat(chunks)
        rows = max(1, max_elements // x.shape[1])
        out[path] = x[torch.randperm(len(x), generator=gen)[:rows]] if len(x) > rows else x
    return out


def fit_alpha(x: torch.Tensor, target: torch.Tensor, fn: str, width: int) -> float:
    """argmin over α of mean (f(αx) − target)²: a log-spaced grid, then golden-section search around its best."""
    def loss(log_alpha: float) -> float:
        alpha = torch.tensor([math.exp(log_alpha)])
        return float((pointwise_norm(x, alpha, fn=fn, width=width) - target).pow(2).mean())

    grid = [math.log(1e-3) + i * (math.log(1e3) - math.log(1e-3)) / 120 for i in range(121)]
    best = min(range(len(grid)), key=lambda i: loss(grid[i]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if loss(a) < loss(b):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


def alphas_by_rule(rule: str, inputs: dict, layers, fn: str, constant: float) -> dict[str, float]:
    infos = dict(layers)
    if rule == "const":
        return {p: constant for p in inputs}
    if rule == "inv_std":
        return {p: 1.0 / float(x.std()) for p, x in inputs.items()}
    return {p: fit_alpha(x, normalized(x, infos[p]), fn, x.shape[-1]) for p, x in inputs.items()}


@torch.no_grad()
def swap(model, spec: dict, alphas: dict[str, float]):
    """The model with every norm swapped for `spec`, each new layer's α set to alphas[path]."""
    swapped = copy.deepcopy(model)
    swaps = convert(swapped, spec)
    for s in swaps.replaced:
        layer = swapped.get_submodule(s.path)
        if isinstance(layer, PointwiseNorm) and s.path in alphas:
            layer.alpha.fill_(alphas[s.path])
            layer.alpha_init = alphas[s.path]
    return swapped


def evaluate(model, task, loader) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        return task.evaluate(model, loader, lambda totals: totals)


def fine_tune(model, task, loader, steps: int, lr: float, weight_decay: float, seed: int) -> float:
    """`steps` AdamW steps at a constant lr, gradients clipped at 1.0; returns the mean loss of the last 10."""
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    losses, step, epoch = [], 0, 0
    while step < steps:
        for batch in epoch_batches(loader, epoch, 0):
            loss, _ = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if step == steps:
                break
        epoch += 1
    return sum(losses[-10:]) / max(1, len(losses[-10:]))


def run(source: Path, norm: str, *, rules=RULES, alpha: float = 0.5, steps: int = 200, lr: float = 1e-4,
        batches: int = 8, overrides: list[str] = (), max_eval_batches: int | None = None, seed: int = 0) -> dict:
    cfg, task, trained = trained_model(source, list(overrides))
    spec = norm_spec(compose([f"task={cfg.task.name}", f"norm={norm}"]).norm)
    spec.pop("alpha_init", None)
    fn = {"derf": "erf"}.get(spec["type"], spec.get("fn", "tanh"))
    metric = task.headline.name.split("/", 1)[1]
    batch_size = cfg.trainer.batch_size
    train_set, val_set = task.build_data()

    def train_batches():
        return train_loader(train_set, batch_size, seed=seed, rank=0, world=1, collate_fn=task.collate_fn)

    def val_batches():
        loader = eval_loader(val_set, batch_size, rank=0, world=1, collate_fn=task.collate_fn)
        return loader if max_eval_batches is None else [b for _, b in zip(range(max_eval_batches), loader)]

    layers = norm_layers(trained)
    recorded = [b for _, b in zip(range(batches), epoch_batches(train_batches(), 0, 0))]
    inputs = record_inputs(trained, task, recorded, layers)
    variants = {"unswapped": (trained, None)}
    for rule in rules:
        alphas = alphas_by_rule(rule, inputs, layers, fn, alpha)
        variants[f"{norm} {rule}"] = (swap(trained, spec, alphas), alphas)
    results = {"source": str(source), "task": cfg.task.name, "norm": norm, "metric": metric, "steps": steps, "lr": lr,
               "batches_recorded": batches, "layers": [p for p, _ in layers],
               "input_std": {p: float(x.std()) for p, x in inputs.items()}, "variants": {}}
    for name, (model, alphas) in variants.items():
        start = time.time()
        before = evaluate(model, task, val_batches())
        train_loss = fine_tune(model, task, train_batches(), steps, lr, cfg.trainer.optim.weight_decay, seed)
        after = evaluate(model, task, val_batches())
        results["variants"][name] = {
            "before": before, "after": after, "train_loss_last10": train_loss, "seconds": round(time.time() - start, 1),
            "alpha_init": alphas, "alpha_final": {p: float(m.alpha.detach().mean()) for p, m in model.named_modules()
                                                  if isinstance(m, PointwiseNorm)} if alphas else None}
        print(f"{name:>16}: {metric} {before[metric]:.4f} before, {after[metric]:.4f} after {steps} steps", flush=True)
    return results


def markdown(results: dict) -> str:
    metric, steps = results["metric"], results["steps"]
    lines = [f"# Swapping the norms of a trained model: {results['source']}", "",
             f"Task `{results['task']}`; every norm → `{results['norm']}`; α₀ recorded on "
             f"{results['batches_recorded']} training batches; fine-tune: {steps} AdamW steps at a constant lr {results['lr']:g}, the same batches "
             f"for every row.", "",
             f"| model | α₀ | val {metric} before | val {metric} after {steps} steps | val loss before | after |",
             "|---|---|---|---|---|---|"]
    for name, v in results["variants"].items():
        low, high = (min(v["alpha_init"].values()), max(v["alpha_init"].values())) if v["alpha_init"] else (0, 0)
        span = "-" if not v["alpha_init"] else f"{low:.3g}–{high:.3g}" if high > low else f"{low:.3g}"
        lines.append(f"| {name} | {span} | {v['before'][metric]:.4f} | {v['after'][metric]:.4f} | "
                     f"{v['before'].get('loss', float('nan')):.4f} | {v['after'].get('loss', float('nan')):.4f} |")
    lines += ["", "Input std per layer (the inv_std rule's α₀ is its inverse):", ""]
    lines += [f"- `{p}`: {s:.3f}" for p, s in results["input_std"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a run folder, or a weights file / folder (then: -- task=…)")
    parser.add_argument("--norm", default="dyt", help="the norm to swap in (a configs/norm/ name)")
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--alpha", type=float, default=0.5, help="α₀ of the const rule")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batches", type=int, default=8, help="training batches to record the norms' inputs on")
    parser.add_argument("--max-eval-batches", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = run(args.source, args.norm, rules=args.rules, alpha=args.alpha, steps=args.steps, lr=args.lr,
                  batches=args.batches, overrides=overrides, max_eval_batches=args.max_eval_batches, seed=args.seed)
    out = args.out or ROOT / "results" / f"swap_{args.source.resolve().name}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "swap.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "swap.md").write_text(markdown(results))
    print(out / "swap.md")
    return results


if __name__ == "__main__":
    main()
