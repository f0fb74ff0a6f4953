"""The CPU back end: `dyt_cpu.cpp`, compiled at first use with torch's own extension builder.

Built once per machine (about a minute) into torch's extension cache (`TORCH_EXTENSIONS_DIR`, by default
~/.cache/torch_extensions) and loaded from there afterwards by every process; torch's file lock keeps
concurrent first builds from colliding. The vector width follows what torch itself uses on this CPU
(`torch.backends.cpu.get_cpu_capability()`), so the code is ATen's own `Vectorized<float>`, compiled for it.
The module's name carries a hash of the source, so checkouts with different kernel sources (branches, worktrees)
sharing one extension cache each load their own build instead of rebuilding over one another.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

import torch

log = logging.getLogger("dyt.kernels")
SOURCE = Path(__file__).with_name("dyt_cpu.cpp")
# the point-wise functions the kernel computes, by the number it knows them by (dyt_cpu.cpp `with_function`)
FUNCTIONS = {"tanh": 0, "isru": 1}
# the flags and macro torch's inductor compiles its own vectorised CPU code with, per capability
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"],
}


@functools.cache
def extension():
    """The compiled module, or None (logged once) when it cannot be built: no compiler, no headers."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        log.warning("dyt: no C++ compiler (%s) for the fused CPU kernel; using the unfused formula", compiler)
        return None
    quiet = logging.getLogger("torch.utils.cpp_extension")  # CUDA_HOME and compiler-ABI notices
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load_inline

        capability = torch.backends.cpu.get_cpu_capability()
        isa = _ISA_FLAGS.get(capability, [])
        source = SOURCE.read_text()
        digest = hashlib.sha1(source.encode()).hexdigest()[:8]
        name = f"dyt_cpu_{capability.lower() if isa else 'default'}_{digest}"
        folder = _cache_folder(name)
        fresh = folder is None or not any(folder.glob(f"{name}*.so"))
        if fresh:  # else it loads in a moment: nothing to say
            log.info("dyt: compiling the fused CPU kernel %s (first use on this machine, about a minute; cached in "
                     "%s)", name, folder or "torch's extension folder")
        with _elapsed(f"compiling {name}") if fresh else contextlib.nullcontext():
            return load_inline(
                name=name,
                cpp_sources=[source],
                extra_cflags=["-O3", "-fopenmp", *isa, *os.environ.get("DYT_CPU_CFLAGS", "").split()],
                extra_ldflags=["-fopenmp"],
                verbose=bool(os.environ.get("DYT_VERBOSE_BUILD")),
            )
    except Exception as error:  # a broken toolchain shows up as many different errors
        message = " ".join(str(error).split())[:200] or type(error).__name__
        log.warning("dyt: the fused CPU kernel could not be built (%s); using the unfused formula", message)
        return None
    finally:
        quiet.setLevel(level)


def _cache_folder(name: str) -> Path | None:
    """Where torch's builder keeps this extension (TORCH_EXTENSIONS_DIR, else a per-Python/CUDA folder under
    ~/.cache/torch_extensions), or None if torch no longer says."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(name, verbose=False))
    except Exception:  # noqa: BLE001 — a private helper: the notice then shows every time
        return None


@contextlib.contextmanager
def _elapsed(what: str):
    """A bar that counts the seconds of one long blocking call (the compiler gives no progress to show), drawn
    once it has taken more than a few seconds, on a terminal only."""
    from tqdm.auto import tqdm

    done = threading.Event()
    with tqdm(desc=what, bar_format="{desc}: {elapsed}", delay=3, disable=None) as bar:
        def tick():
            while not done.wait(1):
                bar.update(0)  # redraws the elapsed time (once the delay has passed)

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()


def available() -> bool:
    return extension() is not None


def forward(x, alpha, weight, bias, channels_last: bool, out_dtype: torch.dtype, fn: str = "tanh",
            k: float = 0.0) -> torch.Tensor:
    """y = γ·f(α·x) + β; `k` is the function's constant (isru: 1/C)."""
    return extension().forward(x, alpha, weight, bias, channels_last, out_dtype == torch.float32 != x.dtype,
                               FUNCTIONS[fn], k)


def backward(dy, x, alpha, weight, channels_last: bool, fn: str = "tanh", k: float = 0.0):
    """dx and the fp32 per-channel sums [3, C]: dγ, dβ, dα."""
    return extension().backward(dy, x, alpha, weight, channels_last, FUNCTIONS[fn], k)


def pointwise(x, alpha, weight, bias, channels_last: bool, out_float: bool, fn: str = "tanh",
              k: float = 0.0) -> torch.Tensor:
    """The eager path: forward and backward in C++ with the C++ extension's own autograd."""
    return extension().pointwise(x, alpha, weight, bias, channels_last, out_float, FUNCTIONS[fn], k)
