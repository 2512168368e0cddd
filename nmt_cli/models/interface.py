"""The interface every model family implements, and all that decoding knows of a model.

Beam search reorders hypotheses after each step. Keeping the whole decoder state as one
dataclass of batch-first tensors lets a single generic `reorder` serve every family, so
decoding never needs to know which model it drives.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch


@dataclasses.dataclass
class DecoderState:
    """Base class: every field is a batch-first tensor (or None)."""

    def reorder(
        self,
        index: torch.Tensor,
        *,
        rows_per_sentence: int | None = None,
        sentences: torch.Tensor | None = None,
    ) -> DecoderState:
        """Select rows `index` [B'] of every field: beam expansion and hypothesis reordering.

        Beam search also says how the new rows group, which a state that keeps something per
        sentence (the Transformer's encoder keys) would otherwise find out from `index`, at
        the cost of a wait for the GPU: `rows_per_sentence` rows for each kept sentence,
        sentence-major, and `sentences` [N'], the old index of each kept sentence (None: all
        sentences kept, in order).
        """
        return dataclasses.replace(
            self,
            **{
                f.name: value.index_select(0, index)
                for f in dataclasses.fields(self)
                if (value := getattr(self, f.name)) is not None
            },
        )


def step_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> fp32 log-probabilities, computed in place when the logits are fp32.

    A step's [B, V] logits are its biggest tensor; overwriting them saves writing a second
    one (figures in docs/performance.md).
    """
    logits = logits.float().contiguous()
    return torch.log_softmax(logits, dim=-1, out=logits)


class Seq2Seq(Protocol):
    """A translation model: teacher-forced for training, one step at a time for decoding.

    A test per family checks that stepping gives the log-probabilities of `forward`.
    """

    def forward(
        self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor
    ) -> torch.Tensor:
        """src [B, S], src_mask [B, S] (True on tokens), tgt_in [B, T] -> logits [B, T, V]."""

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> Any:
        """The encoder's states (one per source position), its mask and what the decoder
        starts from."""

    def init_state(self, memory: Any) -> DecoderState:
        """The decoder state before the first step: one row per sentence."""

    def step(
        self, prev_tokens: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """prev_tokens [B] -> (log-probabilities [B, V], the next state, attention over the
        source [B, S], or None for a model without it)."""
