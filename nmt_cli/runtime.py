"""Where and how tensors run: device, threads, seeding and mixed precision."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import random
from pathlib import Path

import numpy as np
import torch

from nmt_cli.config import PRECISIONS
from nmt_cli.errors import ConfigError, show


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; an unavailable device is a clear error, not a crash."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested but CUDA is not available; use --device cpu")
    return device


def set_threads(threads: int) -> None:
    """0 keeps torch's default (one per core)."""
    if threads > 0:
        torch.set_num_threads(threads)


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the system.

    Decoding steps allocate and free tensors of megabytes (the [rows, V] scores, a cache one
    position longer than the step before's). glibc serves most such blocks with fresh pages
    from the system and gives them back when freed, so every step pays a page fault and the
    kernel's zeroing for each 4 KiB again; kept, they are reused (page faults and speed in
    docs/performance.md; `tests/test_runtime.py` counts the faults).
    Returns whether it applied (glibc only; elsewhere the allocator keeps its defaults).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # Everything from the heap (no mmap), and never trim its top back to the system.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_name(device: torch.device) -> str:
    """What a run's log says it trained on: the GPU's name, or the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "CPU"


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware: on CPUs without AMX or AVX512-BF16 torch emulates
    them, tens of times slower than fp32 (measured on an AVX2-only EPYC)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(precision: str, device: torch.device, *, lstm: bool = False) -> str:
    """`auto` becomes bf16 where the hardware runs it natively, fp32 elsewhere.

    torch's CPU LSTM (oneDNN) has no fp16 kernel, nor a bf16 one on CPUs without native bf16,
    and fails in the first forward pass; so for a model with `nn.LSTM` layers (`lstm`) on
    such a CPU, asking for them is a one-line error.
    """
    if precision not in PRECISIONS:
        raise ConfigError(
            f"precision {show(precision)} is unknown; use one of {', '.join(PRECISIONS)} "
            "(--dtype, train.precision)"
        )
    if precision == "auto":
        return "bf16" if has_fast_bf16(device) else "fp32"
    if (
        lstm
        and device.type == "cpu"
        and (precision == "fp16" or (precision == "bf16" and not has_fast_bf16(device)))
    ):
        raise ConfigError(
            f"{precision} LSTMs (model.type rnn) have no kernel on this CPU; use fp32 or auto "
            "(--dtype, train.precision), or a GPU"
        )
    return precision


def precision_warning(precision: str, device: torch.device) -> str | None:
    """A one-line warning when the requested precision will be slow on this device."""
    if precision == "bf16" and not has_fast_bf16(device):
        return "bf16 has no hardware support here and runs far slower than fp32; use precision auto"
    if precision == "fp16" and device.type != "cuda":
        return "fp16 is emulated on CPU and runs far slower than fp32; use it on CUDA GPUs"
    return None


def decoding_precision(precision: str, device: torch.device, *, lstm: bool = False) -> str:
    """`resolve_precision` for translation, whose `auto` is bf16 on a GPU that has it but fp32
    on any CPU: the CPU's fast decoding paths (prepacked and int8 weights) are fp32 ones."""
    if precision == "auto" and device.type == "cpu":
        return "fp32"
    return resolve_precision(precision, device, lstm=lstm)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; `precision` is already resolved (not `auto`)."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()
