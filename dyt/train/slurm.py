"""Several processes in one Slurm job (one task per GPU, as the slurm launcher submits): the variables
torch.distributed reads, derived from Slurm's, so accelerate forms the process group as under torchrun."""
from __future__ import annotations

import os
import re
import subprocess


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (`gpu[03-05,09],cpu1` → gpu03)."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
        prefix, ranges = match.group(1), match.group(2)
        return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def export_distributed_env(environ=os.environ) -> bool:
    """Set RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from a multi-task Slurm
    job unless a launcher (torchrun, accelerate launch) already did. True if it set them."""
    tasks = int(environ.get("SLURM_NTASKS", "1"))
    if "WORLD_SIZE" in environ or tasks <= 1 or "SLURM_PROCID" not in environ:
        return False
    nodes = int(environ.get("SLURM_JOB_NUM_NODES", environ.get("SLURM_NNODES", "1")))
    environ.update({
        "RANK": environ["SLURM_PROCID"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(tasks // max(1, nodes)),  # hsdp's default shard group: one node's processes
        "WORLD_SIZE": str(tasks),
        "MASTER_ADDR": first_host(environ.get("SLURM_JOB_NODELIST", "localhost")),
        "MASTER_PORT": environ.get("MASTER_PORT", str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000)),
    })
    return True
