"""Hugging Face `datasets` as a pair source: a hub dataset, or a local parquet/arrow/saved one.

Hub datasets are opened with `streaming=True` and local parquet files too, so nothing is
downloaded or converted in full before the first pair; local arrow data is memory-mapped.
Rows are read in column batches of only the two needed columns, never as a whole list.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nmt_cli.config import SourceConfig
from nmt_cli.errors import ConfigError, DataError

_BATCH_ROWS = 1000
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def hf_pairs(source: SourceConfig, src_lang: str, tgt_lang: str) -> Iterator[tuple[str, str]]:
    """Stream pairs from `source.hf`; columns are checked up front where the schema is known."""
    if (source.src_column is None) != (source.tgt_column is None):
        raise ConfigError(f"{source.hf}: set both src_column and tgt_column, or neither")
    dataset = load_hf(source)
    columns = dataset.column_names  # None for a hub stream whose features are not declared
    if source.src_column is not None:
        wanted = [source.src_column, source.tgt_column]
        missing = [c for c in wanted if columns is not None and c not in columns]
        if missing:
            raise DataError(
                f"{source.hf}: no column {missing[0]!r}; columns are: {', '.join(columns)}"
            )
        return _named_columns(dataset, source.hf, source.src_column, source.tgt_column)
    if columns is not None and "translation" not in columns:
        raise DataError(
            f"{source.hf}: no 'translation' column (columns are: {', '.join(columns)}); "
            "set src_column and tgt_column to the two text columns"
        )
    return _translation_column(dataset, source.hf, src_lang, tgt_lang)


def load_hf(source: SourceConfig) -> Any:
    """A `Dataset` or `IterableDataset` for a local path if one exists, else a hub stream."""
    import datasets

    path = Path(source.hf)
    if not path.exists():
        try:
            return datasets.load_dataset(
                source.hf, source.hf_config, split=source.hf_split, streaming=True
            )
        except Exception as exc:  # network, auth and naming errors all come through here
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"cannot open Hugging Face dataset {source.hf!r} (config {source.hf_config!r}, "
                f"split {source.hf_split!r}): {reason}; check the name and network, or point "
                "hf: at a local parquet, arrow or save_to_disk path"
            ) from exc
    if path.is_dir() and any((path / m).is_file() for m in _SAVED_MARKERS):
        return _saved(path, source.hf_split)
    if path.is_dir():
        parquet = sorted(str(p) for p in path.rglob("*.parquet"))
        if not parquet:
            raise DataError(
                f"{path}: a directory with neither parquet files nor a save_to_disk dataset"
            )
        return _parquet(parquet)
    if path.suffix == ".parquet":
        return _parquet([str(path)])
    if path.suffix == ".arrow":
        try:
            return datasets.Dataset.from_file(str(path))
        except Exception as exc:
            raise DataError(f"{path}: not a readable arrow file ({exc})") from None
    raise DataError(f"{path}: hf: expects a .parquet or .arrow file, or a save_to_disk directory")


def _parquet(files: list[str]) -> Any:
    import datasets

    # Streaming reads row groups as they are needed instead of copying the corpus into the
    # datasets cache first, which for WMT-sized parquet costs as much disk as the corpus.
    return datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)


def _saved(path: Path, split: str) -> Any:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path}: cannot load the saved dataset ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"{path}: no split {split!r}; hf_split must be one of {', '.join(loaded)}"
            )
        return loaded[split]
    return loaded


def _batches(dataset: Any, columns: list[str]) -> Iterator[dict[str, list[Any]]]:
    """Column batches holding only `columns`, so wide datasets do not decode unused fields."""
    if dataset.column_names is not None:
        dataset = dataset.select_columns(columns)
    yield from dataset.iter(batch_size=_BATCH_ROWS)


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""  # cleaning drops it from train; valid/test keep the empty line for alignment
    if not isinstance(value, str):
        raise DataError(f"{where} is {type(value).__name__}, not text")
    return value


def _named_columns(
    dataset: Any, name: str, src_col: str, tgt_col: str
) -> Iterator[tuple[str, str]]:
    row = 0
    for batch in _batches(dataset, [src_col, tgt_col]):
        for src, tgt in zip(batch[src_col], batch[tgt_col], strict=True):
            yield (
                _text(src, f"{name}: row {row} {src_col}"),
                _text(tgt, f"{name}: row {row} {tgt_col}"),
            )
            row += 1


def _translation_column(
    dataset: Any, name: str, src_lang: str, tgt_lang: str
) -> Iterator[tuple[str, str]]:
    row = 0
    for batch in _batches(dataset, ["translation"]):
        if "translation" not in batch:
            raise DataError(
                f"{name}: no 'translation' column (columns are: {', '.join(batch)}); "
                "set src_column and tgt_column to the two text columns"
            )
        for item in batch["translation"]:
            if not isinstance(item, dict) or src_lang not in item or tgt_lang not in item:
                keys = ", ".join(item) if isinstance(item, dict) else type(item).__name__
                raise DataError(
                    f"{name}: row {row} translation has keys {keys}, not {src_lang!r} and "
                    f"{tgt_lang!r}; set data.src_lang and data.tgt_lang to match"
                )
            where = f"{name}: row {row} translation"
            yield _text(item[src_lang], where), _text(item[tgt_lang], where)
            row += 1
