"""Checkpoints that a kill cannot corrupt: written to a temporary folder, marked complete, renamed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"


def valid_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first. A folder counts only once its marker file exists."""
    if not root.exists():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / MARKER).exists()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    found = valid_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(accelerator, root: Path, step: int, state: dict, keep_last: int) -> Path:
    """Every process writes its part (accelerate's model, optimizer, scaler and RNG states), the main process
    adds the trainer state and the marker and renames the folder into place."""
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        (tmp / MARKER).touch()
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in valid_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())


def model_weights(path: Path) -> dict:
    """The model's state dict from a checkpoint folder (for `init_from`: weights without optimizer state)."""
    import torch

    safetensors = path / "model.safetensors"
    if safetensors.exists():
        from safetensors.torch import load_file

        return load_file(str(safetensors))
    return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
