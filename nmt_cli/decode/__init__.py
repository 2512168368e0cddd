"""Search over the model interface (`encode`, `init_state`, `step`): beam and sampling.

Both return, per input sentence, a list of `Hypothesis` (best first). Neither knows which
model family it drives.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Hypothesis:
    tokens: list[int]  # output ids, without BOS and EOS
    score: float  # length-normalised log-probability
    attention: torch.Tensor | None = None  # [T_out, S] alignment weights (EOS step included)


def max_output_lengths(src_mask: torch.Tensor, a: float, b: int) -> torch.Tensor:
    """Per-sentence step limit a * |src| + b (fairseq's max_len_a / max_len_b), at least 1."""
    return (a * src_mask.sum(1).float() + b).long().clamp(min=1)  # [B]
