"""`nmt preprocess`: corpora -> cleaned text -> SentencePiece -> token shards + manifest.

Everything streams: pairs go from the sources through cleaning into text files on disk,
SentencePiece samples `tokenizer.sample_size` sentences from those files, and encoding reads
them back in chunks. Peak memory is the tokenizer trainer's sample, not the corpus.

The output is built in a hidden sibling directory and renamed into place only when complete
(`nmt_cli.owned_dirs`), so a crash or a bad input line never leaves a half-written data dir, an
existing one survives a failed re-run untouched, and a directory that is not wholly ours is
never replaced: the manifest lists the files a re-run may replace.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import Progress, TaskID

from nmt_cli.config import (
    Config,
    DataConfig,
    SourceConfig,
    TokenizerConfig,
    config_from_dict,
    config_to_dict,
)
from nmt_cli.console import progress
from nmt_cli.data.corpus import (
    CleanStats,
    check_source,
    clean_pairs,
    iter_pairs,
    located,
    normalized_pairs,
)
from nmt_cli.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SIDES,
    ShardStats,
    ShardWriter,
    load_tokenizers,
    read_manifest,
    token_dtype,
    write_manifest,
)
from nmt_cli.data.tokenizer import Tokenizer, train_sentencepiece
from nmt_cli.errors import ConfigError, DataError, NMTError
from nmt_cli.owned_dirs import DirKind, check_destination, made_files, replacing

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
    cfg = dataclasses.replace(cfg, data=located(cfg.data))
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
    target = check_destination(out_dir, DATA_DIR)
    try:
        with replacing(target, DATA_DIR) as work:
            bars = progress()
            bars.disable = not show_progress
            with bars:
                pairs, stats, vocab = _build(cfg, work, bars)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
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
    if cfg.tokenizer.reuse:  # first: a wrong path fails before the corpus is read
        tokenizer_cfg, src_tok, tgt_tok, files = _reuse_tokenizers(cfg.tokenizer.reuse, work)
        cfg = dataclasses.replace(cfg, tokenizer=tokenizer_cfg)
    text_dir = work / "_train_text"
    text_dir.mkdir()
    train_src, train_tgt = text_dir / "train.src", text_dir / "train.tgt"

    stats = CleanStats()
    task = bars.add_task("reading + cleaning train", total=None)
    cleaned = clean_pairs(_chain(data.train, data), data.clean, stats)
    _write_text(_tracked(cleaned, bars, task), train_src, train_tgt)
    bars.update(task, total=stats.read, completed=stats.read)
    _check_pairs_left(stats)

    if not cfg.tokenizer.reuse:
        task = bars.add_task("training sentencepiece", total=1)
        src_tok, tgt_tok, files = _train_tokenizers(cfg.tokenizer, work, train_src, train_tgt)
        bars.update(task, completed=1)
    dtype = token_dtype(max(src_tok.vocab_size, tgt_tok.vocab_size))

    splits: dict[str, ShardStats] = {}
    splits["train"] = _encode(
        train_src,
        train_tgt,
        work,
        "train",
        src_tok,
        tgt_tok,
        dtype,
        bars,
        max_tokens=data.clean.max_tokens,
        stats=stats,
    )
    _check_pairs_left(stats)
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
            "reused_from": cfg.tokenizer.reuse or None,
        },
        "dtype": dtype.name,
        "splits": {name: s.as_dict() for name, s in splits.items()},
        "cleaning": stats.as_dict(),
        "config": {"data": resolved["data"], "tokenizer": resolved["tokenizer"]},
        "files": made_files(work, DATA_DIR),
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


def _reuse_tokenizers(
    source: str, work: Path
) -> tuple[TokenizerConfig, Tokenizer, Tokenizer, tuple[str, str]]:
    """`tokenizer.reuse`: the SentencePiece model(s) of a checkpoint or a data dir, written
    into `work` under the names a trained one gets, with the settings that made them."""
    path = Path(source)
    try:
        if path.is_dir():
            manifest = read_manifest(path)
            src_tok, tgt_tok = load_tokenizers(path)
            joint = manifest["tokenizer"]["joint"]
            made_by = manifest.get("config", {}).get("tokenizer", {})  # absent in old data dirs
        else:
            from nmt_cli.checkpoint import load_checkpoint  # torch, only for this case

            ckpt = load_checkpoint(path)
            entry, joint = ckpt["tokenizer"], ckpt["tokenizer"]["joint"]
            src_tok = Tokenizer(entry["src_model"], name=f"{path}'s source tokenizer")
            tgt_tok = src_tok if joint else Tokenizer(entry["tgt_model"], f"{path}'s target model")
            made_by = ckpt["config"]["tokenizer"]
    except NMTError as exc:  # the file's own message, saying which recipe key named it
        raise type(exc)(f"tokenizer.reuse: {exc}") from None
    settings = config_from_dict(
        {"tokenizer": {**made_by, "reuse": source, "joint": joint}}
    ).tokenizer
    if joint:
        (work / "spm.model").write_bytes(src_tok.model_bytes)
        return settings, src_tok, src_tok, ("spm.model", "spm.model")
    (work / "spm.src.model").write_bytes(src_tok.model_bytes)
    (work / "spm.tgt.model").write_bytes(tgt_tok.model_bytes)
    return settings, src_tok, tgt_tok, ("spm.src.model", "spm.tgt.model")


def _encode(
    src_text: Path,
    tgt_text: Path,
    work: Path,
    split: str,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    dtype: Any,
    bars: Progress,
    *,
    max_tokens: int | None = None,
    stats: CleanStats | None = None,
) -> ShardStats:
    """Encode two aligned text files into shards, `ENCODE_CHUNK` lines per tokenizer call;
    with `max_tokens`, pairs longer than that on either side are dropped, counted in `stats`."""
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
            src_ids, tgt_ids = src_tok.encode_batch(src_lines), tgt_tok.encode_batch(tgt_lines)
            if max_tokens is not None and stats is not None:
                src_ids, tgt_ids = _drop_long(src_ids, tgt_ids, max_tokens, stats)
            writer.add_batch(src_ids, tgt_ids)
            done += len(chunk)
            bars.update(task, completed=done)
    bars.update(task, total=done, completed=done)
    return writer.close()


def _drop_long(
    src_ids: list[list[int]], tgt_ids: list[list[int]], max_tokens: int, stats: CleanStats
) -> tuple[list[list[int]], list[list[int]]]:
    """Drop pairs over `max_tokens` subwords on either side. The word-count filter cannot see
    one 60,000-character "word", which encodes to tens of thousands of subwords and would make
    every batch that holds it allocate gigabytes."""
    keep = [
        i
        for i, (src, tgt) in enumerate(zip(src_ids, tgt_ids, strict=True))
        if len(src) <= max_tokens and len(tgt) <= max_tokens
    ]
    if len(keep) == len(src_ids):
        return src_ids, tgt_ids
    dropped = len(src_ids) - len(keep)
    stats.dropped_long_tokens += dropped
    stats.kept -= dropped
    return [src_ids[i] for i in keep], [tgt_ids[i] for i in keep]


def _check_pairs_left(stats: CleanStats) -> None:
    if stats.kept == 0:
        raise DataError(
            f"no training pairs left after cleaning ({stats.read} read, {stats.dropped_empty} "
            f"empty, {stats.dropped_long} too long, {stats.dropped_ratio} bad length ratio, "
            f"{stats.dropped_long_tokens} over data.clean.max_tokens); "
            "check data.train and data.clean"
        )


def _data_dir_files(manifest: dict[str, Any]) -> list[str]:
    """What a preprocess that recorded no "files" in its manifest wrote."""
    splits = ("train", "valid", "test")
    langs = [manifest.get(key) for key in ("src_lang", "tgt_lang")]
    return [
        *(f"{split}.{side}.{ext}" for split in splits for side in SIDES for ext in ("bin", "idx")),
        *(f"{split}.{lang}" for split in splits[1:] for lang in langs if isinstance(lang, str)),
        *(f"{name}.{ext}" for name in ("spm", "spm.src", "spm.tgt") for ext in ("model", "vocab")),
    ]


DATA_DIR = DirKind("data dir", MANIFEST, FORMAT, _data_dir_files)
