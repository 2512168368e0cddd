"""Token shards: flat id arrays plus offsets, memory-mapped, described by `manifest.json`.

Layout of a data dir, per split and side (`src`, `tgt`):
  `{split}.{side}.bin`  all token ids of the split back to back, without bos/eos;
                        uint16 when the vocabulary fits (halves disk and page cache), else int32
  `{split}.{side}.idx`  raw little-endian int64 offsets, N+1 entries, offsets[0] = 0;
                        pair i is bin[offsets[i]:offsets[i+1]]
Reading maps the files with `np.memmap`, so opening a 4.5M-pair split costs almost no memory
and every DataLoader worker shares the same page cache. The manifest keeps a CRC-32 of every
file, computed while writing and checked on opening (about a second per GB), so a truncated or
bit-flipped shard is an error before training starts rather than garbage during it.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmt_cli.data.tokenizer import PAD, Tokenizer
from nmt_cli.errors import DataError
from nmt_cli.formats import FileFormat

FORMAT = "nmt_cli.shards"
FORMAT_VERSION = 1
SHARDS = FileFormat(FORMAT, FORMAT_VERSION, "data dir", "re-run `nmt preprocess`", DataError)
MANIFEST = "manifest.json"
SIDES = ("src", "tgt")
_OFFSET_DTYPE = np.dtype("<i8")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits in it, else int32."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<i4")


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest of a preprocessed data dir, checked for format tag and version."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"no manifest.json in {data_dir}; run `nmt preprocess RECIPE --out {data_dir}` first"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc}); re-run `nmt preprocess`") from None
    SHARDS.check(path, manifest)
    return manifest


def write_manifest(data_dir: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest.json` atomically (`.tmp` then `os.replace`)."""
    path = Path(data_dir) / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class ShardStats:
    pairs: int
    src_tokens: int
    tgt_tokens: int
    crc32: dict[str, int]  # file name -> CRC-32 of its bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "src_tokens": self.src_tokens,
            "tgt_tokens": self.tgt_tokens,
            "crc32": self.crc32,
        }


def file_crc32(path: Path, chunk: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


class _SideWriter:
    """Appends id sequences of one side to its `.bin`, and their end offsets to its `.idx`."""

    def __init__(self, bin_path: Path, idx_path: Path, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.limit = np.iinfo(dtype).max
        self.tokens = 0
        self.names = (bin_path.name, idx_path.name)
        self.bin = open(bin_path, "wb")  # closed in close()
        self.idx = open(idx_path, "wb")
        self.bin_crc = self.idx_crc = 0
        self._append_offsets(np.zeros(1, _OFFSET_DTYPE))

    def _append_offsets(self, offsets: np.ndarray) -> None:
        data = offsets.astype(_OFFSET_DTYPE).tobytes()
        self.idx.write(data)
        self.idx_crc = zlib.crc32(data, self.idx_crc)

    @property
    def crc32(self) -> dict[str, int]:
        return {self.names[0]: self.bin_crc, self.names[1]: self.idx_crc}

    def write(self, seqs: Sequence[Sequence[int]]) -> None:
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        flat = np.fromiter(
            (i for seq in seqs for i in seq), dtype=np.int64, count=int(lengths.sum())
        )
        if flat.size and (flat.min() < 0 or flat.max() > self.limit):
            raise DataError(f"token id outside {self.dtype} range; the manifest dtype is wrong")
        data = flat.astype(self.dtype).tobytes()
        self.bin.write(data)
        self.bin_crc = zlib.crc32(data, self.bin_crc)
        self._append_offsets(self.tokens + np.cumsum(lengths))
        self.tokens += int(flat.size)

    def close(self) -> None:
        self.bin.close()
        self.idx.close()


class ShardWriter:
    """Stream pairs of id lists into `{split}.{src,tgt}.{bin,idx}`; `close()` returns counts.

    Pairs are buffered and written in blocks, so writing costs one numpy conversion per block
    rather than per pair, and memory stays bounded by the buffer.
    """

    def __init__(self, data_dir: Path, split: str, dtype: np.dtype | str, buffer_pairs: int = 8192):
        data_dir = Path(data_dir)
        dtype = np.dtype(dtype)
        self.split = split
        self.buffer_pairs = buffer_pairs
        self._src: list[Sequence[int]] = []
        self._tgt: list[Sequence[int]] = []
        self._pairs = 0
        self._stats: ShardStats | None = None
        self._sides = [
            _SideWriter(data_dir / f"{split}.{s}.bin", data_dir / f"{split}.{s}.idx", dtype)
            for s in SIDES
        ]

    def add(self, src_ids: Sequence[int], tgt_ids: Sequence[int]) -> None:
        self._src.append(src_ids)
        self._tgt.append(tgt_ids)
        if len(self._src) >= self.buffer_pairs:
            self._flush()

    def add_batch(
        self, src_batch: Sequence[Sequence[int]], tgt_batch: Sequence[Sequence[int]]
    ) -> None:
        if len(src_batch) != len(tgt_batch):
            raise ValueError(f"{len(src_batch)} source vs {len(tgt_batch)} target sequences")
        self._src.extend(src_batch)
        self._tgt.extend(tgt_batch)
        if len(self._src) >= self.buffer_pairs:
            self._flush()

    def _flush(self) -> None:
        if self._src:
            self._sides[0].write(self._src)
            self._sides[1].write(self._tgt)
            self._pairs += len(self._src)
            self._src, self._tgt = [], []

    def close(self) -> ShardStats:
        if self._stats is None:
            try:
                self._flush()
            finally:
                for side in self._sides:
                    side.close()
            src, tgt = self._sides
            self._stats = ShardStats(
                self._pairs, src.tokens, tgt.tokens, {**src.crc32, **tgt.crc32}
            )
        return self._stats

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # leave no half-flushed buffer behind; the caller discards the directory
            for side in self._sides:
                side.close()


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    """Memory-map a flat array; an empty file (an empty split) cannot be mmapped, so is zeros(0)."""
    try:
        size = path.stat().st_size
    except OSError:
        raise DataError(f"{path}: missing from the data dir; re-run `nmt preprocess`") from None
    if size % dtype.itemsize:
        raise DataError(f"{path}: size {size} is not a multiple of {dtype}; the file is truncated")
    if size == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class ShardReader:
    """Random access to the pairs of one split, memory-mapped."""

    def __init__(self, data_dir: Path, split: str, manifest: dict[str, Any] | None = None) -> None:
        data_dir = Path(data_dir)
        manifest = manifest if manifest is not None else read_manifest(data_dir)
        if split not in manifest["splits"]:
            raise DataError(
                f"{data_dir}: no split {split!r}; it has {', '.join(manifest['splits'])}"
            )
        dtype = np.dtype(manifest["dtype"])
        self.split = split
        self._tokens = {s: _map(data_dir / f"{split}.{s}.bin", dtype) for s in SIDES}
        self._offsets = {s: _map(data_dir / f"{split}.{s}.idx", _OFFSET_DTYPE) for s in SIDES}
        pairs = manifest["splits"][split]["pairs"]
        for side in SIDES:
            offsets, tokens = self._offsets[side], self._tokens[side]
            if len(offsets) != pairs + 1 or (len(offsets) and int(offsets[-1]) != len(tokens)):
                raise DataError(
                    f"{data_dir}/{split}.{side}.idx does not match its .bin and the manifest "
                    f"({pairs} pairs); the data dir is damaged, re-run `nmt preprocess`"
                )
        for name, expected in manifest["splits"][split].get("crc32", {}).items():
            if file_crc32(data_dir / name) != expected:
                raise DataError(
                    f"{data_dir}/{name} does not match the CRC-32 in manifest.json: the file is "
                    "damaged; re-run `nmt preprocess`"
                )
        self._lengths: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._offsets["src"]) - 1

    def _side_lengths(self, side: str) -> np.ndarray:
        if side not in self._lengths:
            self._lengths[side] = np.diff(self._offsets[side]).astype(np.int64)
        return self._lengths[side]

    @property
    def src_lengths(self) -> np.ndarray:
        """Tokens per source sentence (no bos/eos), int64, computed once from the offsets."""
        return self._side_lengths("src")

    @property
    def tgt_lengths(self) -> np.ndarray:
        return self._side_lengths("tgt")

    @property
    def src_tokens(self) -> int:
        return len(self._tokens["src"])

    @property
    def tgt_tokens(self) -> int:
        return len(self._tokens["tgt"])

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Source and target ids of pair `i` as int64 copies (safe to turn into tensors)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"pair {i} out of range for {len(self)} pairs")
        i = i % len(self)
        return self._slice("src", i), self._slice("tgt", i)

    def padded(
        self, side: str, indices: Sequence[int], width: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sentences `indices` of one side as the rows of a PAD-filled int64 matrix one column
        wider than the longest (room for EOS), or `width` columns if more, and their lengths,
        as `batching.pad_rows`. A
        training batch is gathered in a few array operations rather than a Python step per
        sentence: time a GPU would otherwise wait for at every update."""
        offsets = self._offsets[side]
        indices = np.asarray(indices, dtype=np.int64)
        starts = offsets[indices]
        lengths = offsets[indices + 1] - starts
        width = max(int(lengths.max()) + 1, width)
        inside = np.arange(width) < lengths[:, None]
        rows = np.full((len(indices), width), PAD, dtype=np.int64)
        rows[inside] = self._tokens[side][(starts[:, None] + np.arange(width))[inside]]
        return rows, lengths

    def _slice(self, side: str, i: int) -> np.ndarray:
        offsets = self._offsets[side]
        return np.array(self._tokens[side][offsets[i] : offsets[i + 1]], dtype=np.int64)


def load_tokenizers(data_dir: Path) -> tuple[Tokenizer, Tokenizer]:
    """The (source, target) tokenizers of a preprocessed data dir; one object twice if joint."""
    info = read_manifest(data_dir)["tokenizer"]
    src = Tokenizer.from_file(Path(data_dir) / info["src"])
    tgt = src if info["tgt"] == info["src"] else Tokenizer.from_file(Path(data_dir) / info["tgt"])
    return src, tgt
