"""Search over the model interface (`encode`, `init_state`, `step`): beam and sampling.

Both return, per input sentence, a list of `Hypothesis` (best first). Neither knows which
model family it drives.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the CTranslate2 engine reads the length rules without loading torch
    import torch


@dataclasses.dataclass
class Hypothesis:
    tokens: list[int]  # output ids, without BOS and EOS
    score: float  # length-normalised log-probability
    attention: torch.Tensor | None = None  # [T_out, S] alignment weights (EOS step included)


def scaled_lengths(src_mask: torch.Tensor, a: float, b: int) -> torch.Tensor:
    """Per-sentence a * |src| + b in float32, truncated: the rule of both length bounds."""
    return (a * src_mask.sum(1).float() + b).long()  # [B]


def max_output_lengths(src_mask: torch.Tensor, a: float, b: int) -> torch.Tensor:
    """Per-sentence step limit a * |src| + b (fairseq's max_len_a / max_len_b), at least 1."""
    return scaled_lengths(src_mask, a, b).clamp(min=1)  # [B]


def max_output_length(src_length: int, a: float, b: int) -> int:
    """`max_output_lengths` of one sentence, in the same float32 arithmetic (a limit one step
    off where a * |src| + b is near an integer would change a translation)."""
    return max(1, int(np.float32(a) * np.float32(src_length) + np.float32(b)))


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's length normalisation lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016, eq. 14)."""
    return ((5.0 + length) / 6.0) ** alpha
