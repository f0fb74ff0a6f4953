"""Checkpoints that a kill cannot corrupt: written to a temporary folder, marked complete, renamed.

Two formats, one set of rules. `ddp`: accelerate's `save_state` (model.safetensors, optimizer.bin, RNG states
per process). `fsdp`: `torch.distributed.checkpoint` (DCP), every rank writing its own shard in parallel
(`__<rank>_0.distcp` and `.metadata`) with the model, optimizer and EMA state, plus each rank's RNG state.
Both keep the trainer state (`trainer_state.json`) and each rank's data-reader position (`data_<rank>.pt`).
Every reader of weights (`model_weights`) understands both.

The `COMPLETE` marker lists every file of the checkpoint with its size: a folder whose files do not match it
(truncated, lost) is skipped with one log line, and the one before it is used. A write that fails on any
process (disk full, permissions) leaves the checkpoints before it as they were and nothing marked complete.
"""
from __future__ import annotations

import errno
import json
import logging
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
DCP_METADATA = ".metadata"

log = logging.getLogger("dyt.train")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written on some process; the earlier ones are untouched."""


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def intact(folder: Path) -> bool:
    """The marker exists and every file it lists is there with its size (a marker of older checkpoints is
    empty: then its presence alone counts, as it used to)."""
    marker = folder / MARKER
    if not marker.exists():
        return False
    text = marker.read_text().strip()
    if not text:
        return True
    try:
        listed = json.loads(text)
    except json.JSONDecodeError:
        return False
    actual = _file_sizes(folder)
    return all(actual.get(name) == size for name, size in listed.items())


def valid_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first: a folder counts once its marker exists and its files match it."""
    if not root.exists():
        return []
    found = []
    for folder in sorted((p for p in root.glob("step_*") if p.is_dir() and (p / MARKER).exists()),
                         key=lambda p: int(p.name.split("_")[1])):
        if intact(folder):
            found.append(folder)
        else:
            log.warning("checkpoint %s does not match its COMPLETE marker (a file missing or cut short): skipped",
                        folder)
    return found


def latest_checkpoint(root: Path) -> Path | None:
    found = valid_checkpoints(root)
    return found[-1] if found else None


def is_sharded_checkpoint(path: Path) -> bool:
    return (Path(path) / DCP_METADATA).exists()


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _sharded_state(model, optimizer, ema) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def save_checkpoint(accelerator, root: Path, step: int, state: dict, keep_last: int, *, model=None,
                    optimizer=None, ema=None, sharded: bool = False, data_state: dict | None = None) -> Path:
    """Every process writes its part, the main process adds the trainer state and the marker and renames the
    folder into place."""
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    rank = accelerator.process_index
    failure = None
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
    except OSError as err:
        failure = err
    _agree(accelerator, failure)
    try:
        if sharded:  # a collective: DCP raises on every process when one fails
            import torch.distributed.checkpoint as dcp

            dcp.save(_sharded_state(model, optimizer, ema), checkpoint_id=str(tmp))
            with open(tmp / f"rng_{rank}.pkl", "wb") as f:
                pickle.dump(_rng_state(), f)
        else:
            accelerator.save_state(str(tmp))
        if data_state is not None:
            torch.save(data_state, tmp / f"data_{rank}.pt")
    except Exception as err:  # noqa: BLE001 — OSError, or a collective's wrapper of one
        failure = err
    _agree(accelerator, failure, tmp)
    try:
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
            (tmp / MARKER).write_text(json.dumps(_file_sizes(tmp), indent=0))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in valid_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        failure = err
    _agree(accelerator, failure, tmp)
    return final


def _agree(accelerator, failure: Exception | None, tmp: Path | None = None) -> None:
    """Every process learns whether any failed; then all raise CheckpointWriteError (the half-written
    folder removed) or all go on."""
    failed = torch.tensor([float(failure is not None)], device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, "sum")
    if failed.item() == 0:
        return
    if tmp is not None and accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    reason = f"{type(failure).__name__}: {failure}" if failure is not None else "on another process"
    raise CheckpointWriteError(getattr(failure, "errno", None) or errno.EIO, f"checkpoint {tmp.name if tmp else ''} "
                               f"not written ({reason})")


def load_latest(accelerator, root: Path, **parts) -> tuple[Path, dict, dict | None] | None:
    """The newest complete checkpoint under `root` that loads, falling back to older ones (one log line each):
    (path, trainer state, this rank's data state), or None when there is none."""
    for path in reversed(valid_checkpoints(root)):
        try:
            return (path, *load_checkpoint(accelerator, path, **parts))
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
            if "was written with trainer.strategy" in str(err):
                raise
            log.warning("checkpoint %s could not be loaded (%s: %s); trying the one before it", path,
                        type(err).__name__, str(err).splitlines()[0][:200])
    return None


def load_checkpoint(accelerator, path: Path, *, model=None, optimizer=None, ema=None,
                    sharded: bool = False) -> tuple[dict, dict | None]:
    """Restore model, optimizer, EMA and RNG states in place; returns (trainer state, this rank's data state)."""
    rank = accelerator.process_index
    if sharded != is_sharded_checkpoint(path):
        written, asked = ("fsdp or hsdp", "ddp") if is_sharded_checkpoint(path) else ("ddp", "fsdp or hsdp")
        raise ValueError(f"{path} was written with trainer.strategy={written}; resume it with that strategy "
                         f"(not {asked}), or start a new run from its weights with init_from={path}")
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        state = _sharded_state(model, optimizer, ema)
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optim"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        with open(path / f"rng_{rank}.pkl", "rb") as f:
            _set_rng_state(pickle.load(f))
    else:
        accelerator.load_state(str(path))
    data_file = path / f"data_{rank}.pt"
    data_state = torch.load(data_file, weights_only=False) if data_file.exists() else None
    return json.loads((path / STATE_FILE).read_text()), data_state


def model_weights(path: Path) -> dict:
    """The model's full state dict from a checkpoint folder of either format, on the host, in one process
    (for `init_from`, the plotting and sampling scripts, the export)."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        import warnings

        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

        with warnings.catch_warnings():  # "… assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            state = _load_state_dict_from_keys("model", checkpoint_id=str(path))["model"]
        return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in state.items()}
    safetensors = path / "model.safetensors"
    if safetensors.exists():
        from safetensors.torch import load_file

        return load_file(str(safetensors))
    return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
