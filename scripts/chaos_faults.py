"""Run train.py with a fault injected from outside the production code (scripts/chaos.py's wrapper).

    python scripts/chaos_faults.py FAULT[,FAULT…] train.py [overrides ...]

Each FAULT is one of
    checkpoint_write:N  — the N-th checkpoint this process writes fails as a full disk would (OSError ENOSPC,
                          raised where the bytes are written: accelerate's save_state, or DCP's save under fsdp)
    tracker             — every TensorBoard write raises OSError (a tracker whose disk or server is gone);
                          run it with logger=tensorboard
    slow:SECONDS        — every optimizer step, and every checkpoint write between its files and its marker,
                          sleeps this long: a debug model's step takes milliseconds, too short for a signal
                          sent "after step k" to land inside the run; the numbers are unchanged
    none                — nothing injected

The patch is applied to the libraries the trainer calls, then train.py runs as `__main__` with the rest of the
command line as its arguments, exactly as `python train.py …` would.
"""
from __future__ import annotations

import errno
import runpy
import sys
from pathlib import Path


def fail_checkpoint_write(nth: int) -> None:
    """The nth call that writes a checkpoint's weights raises OSError(ENOSPC); the others write as usual."""
    from accelerate import Accelerator

    calls = {"n": 0}

    def failing(real):
        def save(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == nth:
                raise OSError(errno.ENOSPC, f"No space left on device (chaos: checkpoint write {nth} fails)")
            return real(*args, **kwargs)
        return save

    Accelerator.save_state = failing(Accelerator.save_state)
    import torch.distributed.checkpoint as dcp

    dcp.save = failing(dcp.save)


def fail_tracker() -> None:
    """TensorBoard's writer raises at every log (accelerate's TensorBoardTracker.log, which the trainer's
    Guarded tracker calls)."""
    from accelerate.tracking import TensorBoardTracker

    def broken_log(self, values, step=None, **kwargs):
        raise OSError(errno.EIO, "chaos: the tracker's disk is gone")

    TensorBoardTracker.log = broken_log


def slow_down(seconds: float) -> None:
    """Sleep before each optimizer step (the trainer sets the step's lr just before it) and inside each
    checkpoint write, after the weights and before the marker and the rename."""
    import time

    from accelerate import Accelerator

    from dyt.train.trainer import Trainer

    set_lr, save_state = Trainer._set_lr, Accelerator.save_state

    def slow_set_lr(self):
        time.sleep(seconds)
        return set_lr(self)

    def slow_save_state(self, *args, **kwargs):
        written = save_state(self, *args, **kwargs)
        time.sleep(seconds)
        return written

    Trainer._set_lr, Accelerator.save_state = slow_set_lr, slow_save_state


def apply(faults: str) -> None:
    """Install each fault of a comma-separated list (`slow:0.1,checkpoint_write:2`)."""
    for fault in filter(None, faults.split(",")):
        name, _, value = fault.partition(":")
        if name == "checkpoint_write":
            fail_checkpoint_write(int(value or 1))
        elif name == "tracker":
            fail_tracker()
        elif name == "slow":
            slow_down(float(value or 0.1))
        elif name != "none":
            sys.exit(f"error: unknown fault {fault!r}; known: checkpoint_write:N, tracker, slow:SECONDS, none")


def run_script(script: str, args: list[str]) -> None:
    """`python <script> <args>` in this interpreter."""
    root = str(Path(script).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)  # as `python train.py` puts the script's folder first
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    faults, script, *args = argv
    sys.path.insert(0, str(Path(script).resolve().parent))  # dyt from the checkout train.py lives in
    apply(faults)
    run_script(script, args)


if __name__ == "__main__":
    main(sys.argv[1:])
