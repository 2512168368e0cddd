"""`nmt preprocess`: corpora -> cleaned text -> SentencePiece -> token shards + manifest.

Everything streams: pairs go from the sources through cleaning into text files on disk,
SentencePiece samples `tokenizer.sample_size` sentences from those files, and encoding reads
them back in chunks. Peak memory is the tokenizer trainer's sample, not the corpus.

The output is built in a hidden sibling directory and renamed into place only when complete,
so a crash or a bad input line never leaves a half-written data dir, and an existing one
survives a failed re-run untouched.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import Progress, TaskID

from nmt_cli.config import Config, DataConfig, SourceConfig, TokenizerConfig, config_to_dict
from nmt_cli.console import progress
from nmt_cli.data.corpus import (
    CleanStats,
    check_source,
    clean_pairs,
    iter_pairs,
    normalized_pairs,
)
from nmt_cli.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ShardStats,
    ShardWriter,
    token_dtype,
    write_manifest,
)
from nmt_cli.data.tokenizer import Tokenizer, train_sentencepiece
from nmt_cli.errors import ConfigError, DataError

ENCODE_CHUNK = 10_000  # lines per encode_batch call: big enough to amortise, small in memory
_PROGRESS_EVERY = 10_000  # pairs between progress-bar updates; per-pair updates cost seconds
_TEXT_BUFFER = 1 << 20


@dataclass
class PreprocessResult:
    out_dir: Path
    pairs: dict[str, int]  # split -> pairs written
    clean: CleanStats
    vocab_size: dict[str, int]  # side -> pieces
    seconds: float


# Write failures a user fixes by making room: a full disk, a quota, a file-size limit.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def preprocess(cfg: Config, out_dir: Path, show_progress: bool = True) -> PreprocessResult:
    """Build a data dir (manifest, tokenizer model(s), shards, valid/test text) at `out_dir`."""
    start = time.perf_counter()
    data = cfg.data
    if not data.train:
        raise ConfigError("data.train is empty; add a source")
    if data.src_lang == data.tgt_lang:
        raise ConfigError(
            f"data.src_lang and data.tgt_lang are both {data.src_lang!r}; they name the "
            "valid/test text files, so they must differ"
        )
    for source in (*data.train, *data.valid, *data.test):
        check_source(source)
    out_dir = Path(out_dir)
    _recover_killed_runs(out_dir)
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        bars = progress()
        bars.disable = not show_progress
        with bars:
            pairs, stats, vocab = _build(cfg, work, bars)
        _move_into_place(work, out_dir)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            kept = "the previous data dir is intact" if out_dir.exists() else "nothing was written"
            raise DataError(
                f"could not write {out_dir} ({exc.strerror}): {kept}; free disk space or choose "
                "another --out"
            ) from None
        raise
    return PreprocessResult(out_dir, pairs, stats, vocab, time.perf_counter() - start)


def _build(
    cfg: Config, work: Path, bars: Progress
) -> tuple[dict[str, int], CleanStats, dict[str, int]]:
    data = cfg.data
    text_dir = work / "_train_text"
    text_dir.mkdir()
    train_src, train_tgt = text_dir / "train.src", text_dir / "train.tgt"

    stats = CleanStats()
    task = bars.add_task("reading + cleaning train", total=None)
    cleaned = clean_pairs(_chain(data.train, data), data.clean, stats)
    _write_text(_tracked(cleaned, bars, task), train_src, train_tgt)
    bars.update(task, total=stats.read, completed=stats.read)
    if stats.kept == 0:
        raise DataError(
            f"no training pairs left after cleaning ({stats.read} read, {stats.dropped_empty} "
            f"empty, {stats.dropped_long} too long, {stats.dropped_ratio} bad length ratio); "
            "check data.train and data.clean"
        )

    task = bars.add_task("training sentencepiece", total=1)
    src_tok, tgt_tok, files = _train_tokenizers(cfg.tokenizer, work, train_src, train_tgt)
    bars.update(task, completed=1)
    dtype = token_dtype(max(src_tok.vocab_size, tgt_tok.vocab_size))

    splits: dict[str, ShardStats] = {}
    splits["train"] = _encode(train_src, train_tgt, work, "train", src_tok, tgt_tok, dtype, bars)
    shutil.rmtree(text_dir)
    for split in ("valid", "test"):
        src_path, tgt_path = work / f"{split}.{data.src_lang}", work / f"{split}.{data.tgt_lang}"
        _write_text(normalized_pairs(_chain(getattr(data, split), data)), src_path, tgt_path)
        splits[split] = _encode(src_path, tgt_path, work, split, src_tok, tgt_tok, dtype, bars)

    vocab = {"src": src_tok.vocab_size, "tgt": tgt_tok.vocab_size}
    resolved = config_to_dict(cfg)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "src_lang": data.src_lang,
        "tgt_lang": data.tgt_lang,
        "tokenizer": {
            "joint": cfg.tokenizer.joint,
            "src": files[0],
            "tgt": files[1],
            "model_type": cfg.tokenizer.model_type,
            "vocab_size": vocab,
        },
        "dtype": dtype.name,
        "splits": {name: s.as_dict() for name, s in splits.items()},
        "cleaning": stats.as_dict(),
        "config": {"data": resolved["data"], "tokenizer": resolved["tokenizer"]},
    }
    write_manifest(work, manifest)
    return {name: s.pairs for name, s in splits.items()}, stats, vocab


def _chain(sources: Iterable[SourceConfig], data: DataConfig) -> Iterator[tuple[str, str]]:
    """All sources of a split, one after another, each opened only when reached."""
    for source in sources:
        yield from iter_pairs(source, data.src_lang, data.tgt_lang)


def _tracked(pairs: Iterable[Any], bars: Progress, task: TaskID) -> Iterator[Any]:
    """Pass items through, advancing a progress bar every `_PROGRESS_EVERY` items."""
    n = 0
    for n, item in enumerate(pairs, start=1):
        if n % _PROGRESS_EVERY == 0:
            bars.update(task, completed=n)
        yield item
    bars.update(task, completed=n)


def _write_text(pairs: Iterable[tuple[str, str]], src_path: Path, tgt_path: Path) -> int:
    """One pair per line into two files. Normalised text holds no newline, so lines stay aligned."""
    count = 0
    with (
        open(src_path, "w", encoding="utf-8", newline="\n", buffering=_TEXT_BUFFER) as src_out,
        open(tgt_path, "w", encoding="utf-8", newline="\n", buffering=_TEXT_BUFFER) as tgt_out,
    ):
        for src, tgt in pairs:
            src_out.write(src + "\n")
            tgt_out.write(tgt + "\n")
            count += 1
    return count


def _train_tokenizers(
    cfg: TokenizerConfig, work: Path, src_text: Path, tgt_text: Path
) -> tuple[Tokenizer, Tokenizer, tuple[str, str]]:
    """One joint model on both sides (shared embeddings need it), or one model per side."""
    if cfg.joint:
        model = train_sentencepiece([src_text, tgt_text], work / "spm", cfg)
        tok = Tokenizer(model.read_bytes(), name=str(model))
        return tok, tok, ("spm.model", "spm.model")
    src_model = train_sentencepiece([src_text], work / "spm.src", cfg)
    tgt_model = train_sentencepiece([tgt_text], work / "spm.tgt", cfg)
    return (
        Tokenizer(src_model.read_bytes(), name=str(src_model)),
        Tokenizer(tgt_model.read_bytes(), name=str(tgt_model)),
        ("spm.src.model", "spm.tgt.model"),
    )


def _encode(
    src_text: Path,
    tgt_text: Path,
    work: Path,
    split: str,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    dtype: Any,
    bars: Progress,
) -> ShardStats:
    """Encode two aligned text files into shards, `ENCODE_CHUNK` lines per tokenizer call."""
    task = bars.add_task(f"encoding {split}", total=None)
    done = 0
    with (
        open(src_text, encoding="utf-8", newline="\n") as src_in,
        open(tgt_text, encoding="utf-8", newline="\n") as tgt_in,
        ShardWriter(work, split, dtype) as writer,
    ):
        lines = zip(src_in, tgt_in, strict=True)
        while chunk := list(itertools.islice(lines, ENCODE_CHUNK)):
            src_lines = [s.removesuffix("\n") for s, _ in chunk]
            tgt_lines = [t.removesuffix("\n") for _, t in chunk]
            writer.add_batch(src_tok.encode_batch(src_lines), tgt_tok.encode_batch(tgt_lines))
            done += len(chunk)
            bars.update(task, completed=done)
    bars.update(task, total=done, completed=done)
    return writer.close()


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier preprocess output (or an empty dir)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a directory; choose another --out")
    if not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
        raise DataError(
            f"{out_dir} exists and is not an nmt_cli data dir (no manifest.json); "
            "refusing to replace it: choose another --out or remove it"
        )


def _recover_killed_runs(out_dir: Path) -> None:
    """Clean up after a preprocess that was killed (kill -9, power loss) writing to `out_dir`.

    It leaves its hidden work dir `.NAME.tmp-PID`, which is deleted; or, if it died inside the
    final swap, the previous output as `.NAME.old-PID` with no `NAME`, which is put back.
    Leftovers of a process that is still running are not touched.
    """
    if not out_dir.parent.is_dir():
        return
    for leftover in sorted(out_dir.parent.glob(f".{out_dir.name}.*-*")):
        stem, _, pid = leftover.name.rpartition("-")
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        if stem.endswith(".old") and not out_dir.exists():
            os.rename(leftover, out_dir)
        elif stem.endswith((".tmp", ".old")):
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _move_into_place(work: Path, out_dir: Path) -> None:
    """Rename the finished dir over `out_dir`; the old one is removed only once the new is in."""
    if not out_dir.exists():
        os.rename(work, out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out_dir, old)
    try:
        os.rename(work, out_dir)
    except OSError:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
