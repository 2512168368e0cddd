"""docs/recipe-keys.md documents every recipe key the code reads, and no other."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from nmt_cli.config import (
    CleanConfig,
    DataConfig,
    DecodeConfig,
    NTMModelConfig,
    RNNModelConfig,
    SourceConfig,
    TokenizerConfig,
    TrainConfig,
    TransformerModelConfig,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "recipe-keys.md"


def names(cls: type, prefix: str) -> set[str]:
    return {prefix + f.name for f in dataclasses.fields(cls)}


def test_every_recipe_key_is_documented() -> None:
    keys = (
        names(DataConfig, "data.") - {"data.clean"}
        | names(CleanConfig, "data.clean.")
        | names(SourceConfig, "")
        | names(TokenizerConfig, "tokenizer.")
        | names(RNNModelConfig, "model.")
        | names(TransformerModelConfig, "model.")
        | names(NTMModelConfig, "model.")
        | names(TrainConfig, "train.")
        | names(DecodeConfig, "decode.")
    )
    first_cells = re.findall(r"^\| ([^|]+) \|", DOC.read_text(encoding="utf-8"), re.MULTILINE)
    documented = [name for cell in first_cells for name in re.findall(r"`([a-z_.]+)`", cell)]
    assert set(documented) == keys, (keys - set(documented), set(documented) - keys)
