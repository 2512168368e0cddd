"""Decoder state shared by every model family.

Beam search reorders hypotheses after each step. Keeping the whole state as one dataclass
of batch-first tensors lets a single generic `reorder` serve every family, so decoding
never needs to know which model it drives.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class DecoderState:
    """Base class: every field is a batch-first tensor (or None)."""

    def reorder(self, index: torch.Tensor) -> DecoderState:
        """Select rows `index` [B'] of every field: beam expansion and hypothesis reordering."""
        return dataclasses.replace(
            self,
            **{
                f.name: value.index_select(0, index)
                for f in dataclasses.fields(self)
                if (value := getattr(self, f.name)) is not None
            },
        )
