"""Length-bucketed token-budget batches.

Sentences of similar length go together so little compute is spent on padding, and each
batch holds about `batch_tokens` padded tokens, so every update sees a similar amount of
data however long its sentences are (fairseq's `--max-tokens`). The batch order of an
epoch is a pure function of (seed, epoch), so a resumed run can skip to the exact batch
where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nmt_cli.data.tokenizer import BOS, EOS, PAD


def make_batches(
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray,
    batch_tokens: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> list[np.ndarray]:
    """Index arrays, one per batch, for this rank; lengths exclude the BOS/EOS added later.

    Sentences are sorted by length with random tie-breaking, cut greedily into batches whose
    padded size (count x longest side + 1) stays within `batch_tokens`, then the batches are
    shuffled. With several ranks every rank gets the same number of batches.
    """
    rng = np.random.default_rng([seed, epoch])
    longest = np.maximum(src_lengths, tgt_lengths) + 1  # + EOS / BOS
    order = np.lexsort((rng.random(len(longest)), longest))
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and longest[order[end]] * (end + 1 - start) <= batch_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    rng.shuffle(batches)
    usable = len(batches) - len(batches) % world_size if world_size > 1 else len(batches)
    return batches[rank:usable:world_size]


def collate_sources(
    sources: Sequence[Sequence[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad source ids + EOS: src [B, S] and src_mask [B, S] (True on real tokens)."""
    S = max(len(s) for s in sources) + 1
    src = np.full((len(sources), S), PAD, dtype=np.int64)
    for b, s in enumerate(sources):
        src[b, : len(s)] = s
        src[b, len(s)] = EOS
    src_t = torch.from_numpy(src).to(device)
    return src_t, src_t != PAD


def collate(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad a batch: src + EOS, BOS + tgt (decoder input), tgt + EOS (what it must predict).

    Returns src [B, S], src_mask [B, S], tgt_in [B, T], tgt_out [B, T].
    """
    src, src_mask = collate_sources([s for s, _ in pairs], device)
    T = max(len(t) for _, t in pairs) + 1
    tgt_in = np.full((len(pairs), T), PAD, dtype=np.int64)
    tgt_out = np.full((len(pairs), T), PAD, dtype=np.int64)
    for b, (_, t) in enumerate(pairs):
        tgt_in[b, 0] = BOS
        tgt_in[b, 1 : len(t) + 1] = t
        tgt_out[b, : len(t)] = t
        tgt_out[b, len(t)] = EOS
    return src, src_mask, torch.from_numpy(tgt_in).to(device), torch.from_numpy(tgt_out).to(device)
