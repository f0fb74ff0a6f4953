"""One file from any run's checkpoint, whichever strategy wrote it (ddp: accelerate's, fsdp/hsdp: sharded DCP).

    python scripts/export_checkpoint.py RUN_DIR [--checkpoint PATH] [--out DIR]

Writes DIR (default RUN_DIR/export): model.safetensors (the whole model's weights), the run's config.yaml and
norms.txt; for a LLaMA run also DIR/hf, a transformers folder with the run's tokenizer. An RMSNorm run loads
with `LlamaForCausalLM.from_pretrained(DIR/hf)`; a DyT run with
`AutoModelForCausalLM.from_pretrained(DIR/hf, trust_remote_code=True)` (its norms and embedding scale as
trained; see dyt/hf.py). Reads no data: the LLaMA tokenizer is the run's own, from its tokenizer path or the
cache it was trained into.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def export(run_dir: Path, out: Path, checkpoint: Path | None = None) -> Path:
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from dyt.train.checkpoint import latest_checkpoint, model_weights

    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise SystemExit(f"error: {run_dir} has no config.yaml; give a run folder that train.py wrote")
    checkpoint = checkpoint or latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise SystemExit(f"error: {run_dir / 'checkpoints'} holds no complete checkpoint")
    weights = {k: v.contiguous() for k, v in model_weights(checkpoint).items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"run": str(run_dir), "checkpoint": checkpoint.name})
    for name in ("config.yaml", "norms.txt"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, out / name)
    cfg = OmegaConf.load(config_file)
    if cfg.task.name == "llama":
        _export_llama(cfg, weights, out / "hf")
    print(f"{checkpoint} → {out}")
    return out


def _export_llama(cfg, weights: dict, folder: Path) -> None:
    import dyt.train  # noqa: F401 — schemas and resolvers
    from dyt.hf import save_llama
    from dyt.train.config import NATIVE, norm_spec
    from dyt.train.run import build_model, build_task

    task = build_task(cfg)
    model, swaps = build_model(cfg, task, load_weights=False)  # on the meta device: the weights come next
    model.load_state_dict(weights, assign=True)
    converted = cfg.norm.type != NATIVE and bool(swaps.replaced)
    scale = converted and cfg.task.model.embedding_scale and cfg.norm.type in ("dyt", "derf")
    save_llama(model, folder, norm=norm_spec(cfg.norm) if converted else None, roles=task.norm_roles,
               embedding_scale=bool(scale), tokenizer=task.corpus.tokenizer)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: the run's latest)")
    parser.add_argument("--out", type=Path, help="default: RUN_DIR/export")
    args = parser.parse_args(argv)
    export(args.run_dir, args.out or args.run_dir / "export", args.checkpoint)


if __name__ == "__main__":
    main()
