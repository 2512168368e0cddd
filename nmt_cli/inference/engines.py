"""Choosing an engine: one place, so that `nmt translate`, `nmt eval` and library users get
every engine and option the same way."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nmt_cli.errors import ConfigError
from nmt_cli.inference.translator import Translator

if TYPE_CHECKING:  # torch is imported for the PyTorch engine only: CTranslate2 runs without it
    import torch

ENGINES = ("torch", "ctranslate2")


def load_translator(
    models: str | Path | Sequence[str | Path],
    device: str | torch.device = "auto",
    decode_overrides: dict | None = None,
    *,
    engine: str = "torch",
    precision: str = "auto",
    quantize: str | None = None,
    threads: int | None = None,
    replace_unk: bool = False,
) -> Translator:
    """A translator over our PyTorch engine (checkpoints; several make an ensemble) or over
    CTranslate2 (one directory that `nmt export` wrote).

    `decode_overrides` replace the stored decoding settings. `quantize` is int8 for the
    PyTorch engine, or a CTranslate2 compute type. `threads`: CPU threads (PyTorch), or
    batches translated in parallel, one thread each (CTranslate2).
    """
    models = [models] if isinstance(models, (str, Path)) else list(models)
    if engine == "torch":
        from nmt_cli.inference.torch_engine import TorchEngine
        from nmt_cli.runtime import resolve_device, set_threads

        if threads is not None:
            set_threads(threads)
        return Translator(
            TorchEngine.from_checkpoints(
                models,
                resolve_device(str(device)),
                decode_overrides,
                precision=precision,
                quantize=quantize,
                replace_unk=replace_unk,
            )
        )
    if engine != "ctranslate2":
        raise ConfigError(f"--engine {engine}: choose {' or '.join(ENGINES)}")
    if len(models) != 1 or replace_unk or precision not in ("auto", "fp32"):
        raise ConfigError(
            "--engine ctranslate2 takes one exported directory and no --replace-unk or --dtype; "
            "drop those options, or use --engine torch on the checkpoint"
        )
    from nmt_cli.inference.ctranslate2 import CTranslate2Engine

    return Translator(
        CTranslate2Engine(
            models[0],
            decode_overrides,
            device=str(device),
            compute_type=quantize or "default",
            inter_threads=threads,
        )
    )
