"""What a run knows about the sweep it belongs to (Hydra multirun)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import ALPHA_NORMS


_ALPHA_FREE_KEYS = ("type", "eps", "elementwise_affine", "bias")


@dataclass(frozen=True)
class SweepPoint:
    dir: Path  # the sweep folder
    overrides: list[str]  # this point's overrides: the swept values


def current_sweep() -> SweepPoint | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    return SweepPoint(Path(hydra.sweep.dir), list(hydra.overrides.task))


def claim_point(cfg: DictConfig, sweep: SweepPoint, run_dir: Path) -> str | None:
    """α₀ × norms grids repeat every point of an α-free norm (layernorm, rmsnorm) once per α₀. The first
    run of such a configuration claims it; the others return the claimant's folder and train nothing.
    A claim is a file put in place atomically (by link), so parallel jobs agree; a requeued job finds its
    own claim and goes on."""
    if cfg.norm.type in ALPHA_NORMS:
        return None
    canonical = OmegaConf.to_container(cfg, resolve=True)
    canonical.pop("run_dir", None)
    # what an α-free norm does not read (α₀, the squashing function, …) does not make a new point
    canonical["norm"] = {k: v for k, v in canonical["norm"].items() if k in _ALPHA_FREE_KEYS}
    key = hashlib.sha1(OmegaConf.to_yaml(OmegaConf.create(canonical)).encode()).hexdigest()[:16]
    claims = sweep.dir / ".claims"
    claims.mkdir(parents=True, exist_ok=True)
    claim = claims / key
    tmp = claims / f".{key}.{os.getpid()}.{os.uname().nodename}"
    tmp.write_text(str(run_dir))
    try:
        os.link(tmp, claim)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    owner = claim.read_text()
    return None if owner == str(run_dir) else owner
