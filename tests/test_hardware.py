"""dyt.train.hardware: the allocator setting train() applies, and the GPU peak table."""
import platform
import resource

import pytest
import torch

from dyt.train import hardware

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


@glibc
def test_keep_freed_host_memory_applies_on_glibc():
    assert hardware.keep_freed_host_memory() is True
    # freed activations are reused from the heap: steps of 8 MiB tensors (over glibc's default mmap threshold)
    # allocated and freed fault no new pages after the first
    for _ in range(3):
        torch.ones(2**21).mul_(2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(2**21).mul_(2)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 100


@glibc
def test_a_user_malloc_setting_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert hardware.keep_freed_host_memory() is False


def test_peak_flops_override_and_cpu():
    assert hardware.peak_flops(100.0) == 100e12
    if not torch.cuda.is_available():
        assert hardware.peak_flops() is None
