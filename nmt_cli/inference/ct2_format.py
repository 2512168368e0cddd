"""The directory `nmt export` writes and the CTranslate2 engine reads, defined once.

Beside CTranslate2's own files (`model.bin`, `config.json`, vocabularies) it holds both
SentencePiece models and `nmt_cli.json`: the format tag and version, the decoding settings,
the input limit and the size of the position table, so the directory alone is enough to
translate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nmt_cli.errors import CheckpointError, ConfigError
from nmt_cli.formats import FileFormat

METADATA = "nmt_cli.json"
FORMAT = "nmt_cli.ctranslate2"
FORMAT_VERSION = 1
_EXPORT = "nmt export CKPT --format ctranslate2 --out DIR"
EXPORT = FileFormat(
    FORMAT,
    FORMAT_VERSION,
    "CTranslate2 export",
    f"export again: {_EXPORT}",
    CheckpointError,
)
SOURCE_SPM, TARGET_SPM = "source.spm", "target.spm"
# The decoding settings the CTranslate2 engine reproduces; the others keep their defaults.
DECODE_KEYS = ("beam", "alpha", "max_len_a", "max_len_b", "n_best", "batch_tokens")


def import_ctranslate2():
    """The `ctranslate2` module, or a one-line error saying how to install it."""
    try:
        import ctranslate2
    except ImportError:
        raise ConfigError(
            "ctranslate2 is not installed; pip install 'nmt-cli[ctranslate2]'"
        ) from None
    return ctranslate2


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """`nmt_cli.json` of an export, checked for format and version."""
    path = model_dir / METADATA
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CheckpointError(
            f"{model_dir} is not a CTranslate2 model written by nmt export (no readable "
            f"{METADATA}); create one with {_EXPORT}"
        ) from None
    EXPORT.check(path, metadata)
    return metadata
