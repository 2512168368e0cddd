"""Where and how tensors run: device, threads, seeding and mixed precision."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from nmt_cli.errors import ConfigError


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware: on CPUs without AMX or AVX512-BF16 torch emulates
    them, tens of times slower than fp32 (measured on an AVX2-only EPYC)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` becomes bf16 where the hardware runs it natively, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if has_fast_bf16(device) else "fp32"
    return precision


def precision_warning(precision: str, device: torch.device) -> str | None:
    """A one-line warning when the requested precision will be slow on this device."""
    if precision == "bf16" and not has_fast_bf16(device):
        return "bf16 has no hardware support here and runs far slower than fp32; use precision auto"
    if precision == "fp16" and device.type != "cuda":
        return "fp16 is emulated on CPU and runs far slower than fp32; use it on CUDA GPUs"
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; `precision` is already resolved (not `auto`)."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()
