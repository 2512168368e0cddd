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
    max_len: int | None = None,
) -> list[np.ndarray]:
    """Index arrays, one per batch; lengths exclude the BOS/EOS added later.

    Sentences are sorted by length with random tie-breaking, cut greedily into batches whose
    padded size (count x longest side + 1) stays within `batch_tokens`, then the batches are
    shuffled (every training process computes the same list and takes its share). Pairs with a
    side longer than `max_len` are left out (see `too_long`): one 60,000-character "word" of
    tens of thousands of subwords asks the Transformer for tens of gigabytes at the same step
    of every epoch. Without any such pair the batches are those of no `max_len`.
    """
    rng = np.random.default_rng([seed, epoch])
    kept = np.arange(len(src_lengths))
    if max_len is not None:
        kept = np.flatnonzero(~too_long(src_lengths, tgt_lengths, max_len))
    longest = np.maximum(src_lengths[kept], tgt_lengths[kept]) + 1  # + EOS / BOS
    order = np.lexsort((rng.random(len(longest)), longest))
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and longest[order[end]] * (end + 1 - start) <= batch_tokens:
            end += 1
        batches.append(kept[order[start:end]])
        start = end
    rng.shuffle(batches)
    return batches


def too_long(src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Which pairs have a side longer than `max_len` tokens (a bool mask)."""
    return (src_lengths > max_len) | (tgt_lengths > max_len)


def pad_rows(sentences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Sentences as the rows of a PAD-filled int64 matrix one column wider than the longest
    (room for EOS), and their lengths: what `ShardReader.padded` gives for a stored batch."""
    lengths = np.array([len(s) for s in sentences], dtype=np.int64)
    rows = np.full((len(sentences), int(lengths.max()) + 1), PAD, dtype=np.int64)
    for b, sentence in enumerate(sentences):
        rows[b, : len(sentence)] = sentence
    return rows, lengths


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`. To a GPU it goes through pinned memory without waiting, so
    the CPU goes on preparing work while the GPU still runs the previous update."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def with_eos(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Padded rows (one spare column) with EOS after each sentence, as a new array."""
    rows = rows.copy()
    rows[np.arange(len(rows)), lengths] = EOS
    return rows


def collate_sources(
    sources: Sequence[Sequence[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad source ids + EOS: src [B, S] and src_mask [B, S] (True on real tokens)."""
    src = to_device(with_eos(*pad_rows(sources)), device)
    return src, src != PAD


def collate_padded(
    src_rows: np.ndarray,
    src_lengths: np.ndarray,
    tgt_rows: np.ndarray,
    tgt_lengths: np.ndarray,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch from padded rows (see `pad_rows`): src + EOS, BOS + tgt (decoder input), tgt +
    EOS (what it must predict).

    Returns src [B, S], src_mask [B, S], tgt_in [B, T], tgt_out [B, T].
    """
    src = to_device(with_eos(src_rows, src_lengths), device)
    tgt_out = with_eos(tgt_rows, tgt_lengths)
    bos = np.full((len(tgt_rows), 1), BOS, dtype=np.int64)
    tgt_in = np.concatenate([bos, tgt_rows[:, :-1]], axis=1)
    return src, src != PAD, to_device(tgt_in, device), to_device(tgt_out, device)


def collate(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`collate_padded` for a list of (source ids, target ids) pairs."""
    return collate_padded(
        *pad_rows([s for s, _ in pairs]), *pad_rows([t for _, t in pairs]), device
    )
