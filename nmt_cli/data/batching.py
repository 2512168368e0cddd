"""Length-bucketed token-budget batches.

Sentences of similar length go together so little compute is spent on padding, and each
batch holds about `batch_tokens` padded tokens, so every update sees a similar amount of
data however long its sentences are (fairseq's `--max-tokens`). Where the batches are cut
is found once per run (`plan_batches`); an epoch deals the pairs of each length into those
batches anew and shuffles their order (`BatchPlan.epoch`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from nmt_cli.data.tokenizer import BOS, EOS, PAD


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Where a training split is cut into batches, found once per run.

    Pairs are sorted by a key (their longer side, or its bucket width with static shapes)
    and the sorted sequence is cut at `ends`. Any order of the pairs within each key gives
    the same keys at every position, so the cut stays valid: an epoch deals the pairs of each
    key in a new random order and shuffles the batches (`epoch`). `widths[i]` is the padded
    length of both sides of batch i with static shapes (0 otherwise: each side is padded to
    its own longest sentence).
    """

    kept: np.ndarray  # the pairs batched (those within max_len), in corpus order
    keys: np.ndarray  # their sort keys
    ends: np.ndarray  # where each batch ends in the sorted sequence
    widths: np.ndarray

    def __len__(self) -> int:
        return len(self.ends)

    def epoch(self, seed: int, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """An epoch's batches (index arrays, in cut order) and the order to take them in: a
        pure function of (seed, epoch), so a resumed run can skip to the exact batch where
        it stopped."""
        rng = np.random.default_rng([seed, epoch])
        order = np.lexsort((rng.random(len(self.kept)), self.keys))
        batches = np.split(self.kept[order], self.ends[:-1])
        return batches, rng.permutation(len(batches))

    def shapes(self) -> set[tuple[int, int]]:
        """The distinct (sentences, padded length) of the batches, with static shapes."""
        sizes = np.diff(self.ends, prepend=0)
        return {(int(n), int(w)) for n, w in zip(sizes, self.widths, strict=True)}


def bucket_width(lengths: np.ndarray) -> np.ndarray:
    """Lengths rounded up to a few fixed widths: multiples of 8 up to 64, then four steps per
    doubling (80, 96, 112, 128, 160, ...), so padding adds at most a quarter and every length
    up to 256 lands on one of 16 widths."""
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    step = np.maximum(8, (1 << np.ceil(np.log2(lengths)).astype(np.int64)) // 8)
    return -(-lengths // step) * step


def plan_batches(
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray,
    batch_tokens: int,
    *,
    max_len: int | None = None,
    static_shapes: bool = False,
) -> BatchPlan:
    """Cut pairs into batches of about `batch_tokens` padded tokens; lengths exclude the
    BOS/EOS added later.

    Pairs are sorted by their longer side and cut greedily: a batch takes pairs while count
    x longest side + 1 stays within `batch_tokens` (fairseq's --max-tokens; a pair longer
    than that forms a batch alone). With `static_shapes` the lengths are first rounded up to
    `bucket_width`s and no batch spans two widths, so the batches come in at most two shapes
    per width (full ones, and one remainder): a compiled step is compiled once per shape, and
    CUDA graphs can replay it. Pairs with a side longer than `max_len` are left out (see
    `too_long`): one 60,000-character "word" of tens of thousands of subwords asks the
    Transformer for tens of gigabytes at the same step of every epoch.
    """
    kept = np.arange(len(src_lengths))
    if max_len is not None:
        kept = np.flatnonzero(~too_long(src_lengths, tgt_lengths, max_len))
    keys = np.maximum(src_lengths[kept], tgt_lengths[kept]) + 1  # + EOS / BOS
    if static_shapes:
        keys = bucket_width(keys)
    sorted_keys = np.sort(keys)
    # With static shapes a batch ends where the width changes.
    group_ends = np.flatnonzero(np.diff(sorted_keys)) + 1 if static_shapes else np.empty(0)
    ends = _greedy_ends(sorted_keys, batch_tokens, np.append(group_ends, len(kept)))
    widths = sorted_keys[ends - 1] if static_shapes else np.zeros(len(ends), dtype=np.int64)
    return BatchPlan(kept, keys, ends, widths)


def _greedy_ends(widths: np.ndarray, batch_tokens: int, group_ends: np.ndarray) -> np.ndarray:
    """Where each batch of the sorted `widths` ends: the largest count k with k x (the k-th
    width) within `batch_tokens` (at least 1), found by bisection, one step per batch rather
    than per pair (the product grows with k, as widths are sorted)."""
    ends, start, n = [], 0, len(widths)
    while start < n:
        limit = int(group_ends[np.searchsorted(group_ends, start, side="right")]) - start
        lo, hi = 1, limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if mid * int(widths[start + mid - 1]) <= batch_tokens:
                lo = mid
            else:
                hi = mid - 1
        start += lo
        ends.append(start)
    return np.array(ends, dtype=np.int64)


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
