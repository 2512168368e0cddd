"""SentencePiece training, and a Tokenizer that lives on its model bytes.

The Tokenizer is built from bytes rather than a path so a checkpoint can carry its vocabulary
inside the `.pt` file (as OpenNMT-py keeps vocab with the weights) and `nmt translate` needs
nothing else. Special ids are fixed for every model we train, so padding and sequence markers
mean the same thing in every data dir and checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from nmt_cli.config import TokenizerConfig
from nmt_cli.errors import DataError
from nmt_cli.special_ids import BOS, EOS, PAD, UNK

# The unigram trainer builds a suffix array over every sampled character, costing about 20 bytes
# of RAM per character (measured: 1.2 GB for 58M characters). 64M characters keeps training
# near 1.3 GB wherever sentences are long; BPE and char trainers need a fraction of that.
UNIGRAM_MAX_CHARS = 64_000_000

log = logging.getLogger(__name__)


def train_sentencepiece(
    text_files: list[Path],
    model_prefix: Path,
    cfg: TokenizerConfig,
    max_chars: int | None = UNIGRAM_MAX_CHARS,
) -> Path:
    """Train one SentencePiece model on `text_files` (one sentence per line); return its path.

    Joint (source+target files) or per-side vocabularies are the caller's choice. Training
    samples `cfg.sample_size` sentences (shuffled reservoir) so a 4.5M-pair corpus trains in
    minutes with bounded memory; `hard_vocab_limit=False` lets a tiny corpus yield a smaller
    vocabulary instead of failing. For unigram models the sample is further capped at
    `max_chars` characters (estimated from the mean line length), which bounds peak memory.
    """
    model_prefix = Path(model_prefix)
    sample = cfg.sample_size
    if cfg.model_type == "unigram" and max_chars is not None:
        sample = min(sample, sentences_within(text_files, max_chars))
        if sample < cfg.sample_size:
            log.info(
                "sentencepiece: sampling %d sentences to stay within %d chars", sample, max_chars
            )
    try:
        spm.SentencePieceTrainer.train(
            input=[str(f) for f in text_files],  # a list is CSV-quoted, so commas in paths work
            model_prefix=str(model_prefix),
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            input_sentence_size=sample,
            shuffle_input_sentence=True,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            hard_vocab_limit=False,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise DataError(
            f"sentencepiece training on {', '.join(map(str, text_files))} failed: {reason}"
        ) from None
    return Path(f"{model_prefix}.model")


def sentences_within(text_files: list[Path], max_chars: int) -> int:
    """How many sentences of the files' mean length fit in `max_chars` (bytes stand in for
    characters, which errs on the small side for non-Latin scripts)."""
    lines = size = 0
    for path in text_files:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                lines += block.count(b"\n")
                size += len(block)
    return max(1, int(max_chars * lines / size)) if size else 1


class Tokenizer:
    """Text <-> ids with one SentencePiece model; `decode` drops pad/bos/eos."""

    def __init__(self, model_bytes: bytes, name: str = "tokenizer model") -> None:
        self._bytes = bytes(model_bytes)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._bytes)
            ok = self._sp.get_piece_size() > 0
        except (RuntimeError, OSError):
            ok = False
        if not ok:
            raise DataError(f"{name} is not a SentencePiece model; re-run `nmt preprocess`")
        self._skip = frozenset(i for i in (self.pad_id, self.bos_id, self.eos_id) if i >= 0)

    @classmethod
    def from_file(cls, path: Path) -> Tokenizer:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(
                f"{path}: cannot read tokenizer model ({exc.strerror or exc})"
            ) from None
        return cls(data, name=str(path))

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many lines in one call; sentencepiece spreads the batch over its threads."""
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids if int(i) not in self._skip])

    def decode_pieces(self, pieces: Sequence[str]) -> str:
        return self._sp.decode_pieces(list(pieces))

    def id_to_piece(self, index: int) -> str:
        return self._sp.id_to_piece(int(index))

    def piece_to_id(self, piece: str) -> int:
        return self._sp.piece_to_id(piece)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def model_bytes(self) -> bytes:
        return self._bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self._bytes).hexdigest()
