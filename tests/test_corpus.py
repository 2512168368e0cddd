"""Pair sources, normalisation and cleaning, on tiny files written in tmp_path."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from nmt_cli.config import CleanConfig, SourceConfig
from nmt_cli.data.corpus import CleanStats, clean_pairs, iter_pairs, normalize
from nmt_cli.errors import ConfigError, DataError


def pairs_of(source: SourceConfig, src_lang: str = "de", tgt_lang: str = "en") -> list:
    return list(iter_pairs(source, src_lang, tgt_lang))


def test_plain_and_gzip_parallel_files(tmp_path: Path) -> None:
    (tmp_path / "a.de").write_text("Hallo Welt\r\nzwei\n", encoding="utf-8")
    with gzip.open(tmp_path / "a.en.gz", "wt", encoding="utf-8") as f:
        f.write("hello world\ntwo\n")
    source = SourceConfig(src=str(tmp_path / "a.de"), tgt=str(tmp_path / "a.en.gz"))
    assert pairs_of(source) == [("Hallo Welt", "hello world"), ("zwei", "two")]


def test_sgml_parsed_line_by_line_even_when_not_valid_xml(tmp_path: Path) -> None:
    src = tmp_path / "newstest.de.sgm"
    src.write_text(
        '<srcset setid="x" srclang="any">\n<doc docid="d1">\n'
        '<seg id="1">Haus &amp; Hof &lt;b&gt; &quot;x&quot; &apos;y&apos; &amp;lt;</seg>\n'
        "<p>\n<seg id=2>bare & ampersand</seg>\n"  # unquoted id and a bare & break XML parsers
        "</doc>\n",  # and no closing </srcset>
        encoding="utf-8",
    )
    with gzip.open(tmp_path / "newstest.en.sgm.gz", "wt", encoding="utf-8") as f:
        f.write('<refset>\n<doc>\n<seg id="1">house</seg>\n<seg id="2">yard</seg>\n</doc>\n')
    pairs = pairs_of(SourceConfig(src=str(src), tgt=str(tmp_path / "newstest.en.sgm.gz")))
    assert pairs == [("Haus & Hof <b> \"x\" 'y' &lt;", "house"), ("bare & ampersand", "yard")]


def test_tsv(tmp_path: Path) -> None:
    (tmp_path / "c.tsv").write_text("eins\tone\nzwei drei\ttwo three\n", encoding="utf-8")
    assert pairs_of(SourceConfig(tsv=str(tmp_path / "c.tsv"))) == [
        ("eins", "one"),
        ("zwei drei", "two three"),
    ]


def test_tsv_line_without_one_tab(tmp_path: Path) -> None:
    (tmp_path / "c.tsv").write_text("eins\tone\nzwei\tdrei\tthree\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.tsv: line 2 has 2 tabs"):
        pairs_of(SourceConfig(tsv=str(tmp_path / "c.tsv")))


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.de").write_bytes("gut\nüber\n".encode() + "K\xe4se\n".encode("latin-1"))
    (tmp_path / "bad.en").write_text("good\nover\ncheese\n", encoding="utf-8")
    source = SourceConfig(src=str(tmp_path / "bad.de"), tgt=str(tmp_path / "bad.en"))
    with pytest.raises(DataError, match=r"bad\.de: line 3 is not valid UTF-8; re-encode"):
        pairs_of(source)


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path: Path) -> None:
    (tmp_path / "m.de").write_text("a\nb\nc\nd\ne\n", encoding="utf-8")
    (tmp_path / "m.en").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"m\.de has 5 lines but .*m\.en has 2"):
        pairs_of(SourceConfig(src=str(tmp_path / "m.de"), tgt=str(tmp_path / "m.en")))
    with pytest.raises(DataError, match=r"m\.en has 2 lines but .*m\.de has 5"):
        pairs_of(SourceConfig(src=str(tmp_path / "m.en"), tgt=str(tmp_path / "m.de")))


def test_missing_file_named(tmp_path: Path) -> None:
    (tmp_path / "x.en").write_text("a\n", encoding="utf-8")
    source = SourceConfig(src=str(tmp_path / "nope.de"), tgt=str(tmp_path / "x.en"))
    with pytest.raises(DataError, match=r"nope\.de: not found"):
        pairs_of(source)


@pytest.mark.parametrize(
    "source",
    [SourceConfig(), SourceConfig(src="a", tgt="b", tsv="c"), SourceConfig(src="a")],
)
def test_source_must_name_exactly_one_kind(source: SourceConfig) -> None:
    with pytest.raises(ConfigError, match="src"):
        iter_pairs(source, "de", "en")


def test_normalize() -> None:
    assert normalize("  a\t\tb\u00a0 c\u2028d  ") == "a b c d"
    assert normalize("Cafe\u0301") == "Caf\u00e9"  # NFC composes the accent
    assert normalize(" \t ") == ""


def test_clean_pairs_counts() -> None:
    pairs = [
        ("ein  Haus", "a house"),  # kept, normalised
        ("", "empty source"),  # empty
        ("x", "\u00a0"),  # empty after normalisation
        ("w " * 6, "w " * 6),  # 6 words > max_words=5
        ("one", "one two three"),  # ratio 3 > 2
        ("one two", "one two three four"),  # ratio 2 == 2: kept
    ]
    stats = CleanStats()
    kept = list(clean_pairs(pairs, CleanConfig(max_words=5, max_ratio=2.0), stats))
    assert kept == [("ein Haus", "a house"), ("one two", "one two three four")]
    assert stats == CleanStats(read=6, kept=2, dropped_empty=2, dropped_long=1, dropped_ratio=1)


def _rows() -> dict:
    return {
        "translation": [{"de": "Hallo  Welt", "en": "hello world"}, {"de": "zwei", "en": "two"}],
        "extra": [1, 2],
    }


EXPECTED = [("Hallo  Welt", "hello world"), ("zwei", "two")]


def test_hf_parquet_file_and_dir(tmp_path: Path) -> None:
    import datasets

    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_dict(_rows()).to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
    assert pairs_of(SourceConfig(hf=str(tmp_path / "pq" / "part-0.parquet"))) == EXPECTED
    assert pairs_of(SourceConfig(hf=str(tmp_path / "pq"))) == EXPECTED


def test_hf_save_to_disk_and_arrow_file(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict(_rows()).save_to_disk(str(tmp_path / "saved"))
    assert pairs_of(SourceConfig(hf=str(tmp_path / "saved"))) == EXPECTED
    (arrow,) = (tmp_path / "saved").glob("*.arrow")
    assert pairs_of(SourceConfig(hf=str(arrow))) == EXPECTED


def test_hf_dataset_dict_split_and_named_columns(tmp_path: Path) -> None:
    import datasets

    table = {"source": ["a b", "c"], "target": ["x y", "z"], "id": [0, 1]}
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(table),
            "validation": datasets.Dataset.from_dict(table),
        }
    ).save_to_disk(str(tmp_path / "dd"))
    source = SourceConfig(
        hf=str(tmp_path / "dd"), hf_split="validation", src_column="source", tgt_column="target"
    )
    assert pairs_of(source) == [("a b", "x y"), ("c", "z")]
    with pytest.raises(DataError, match="no split 'test'; hf_split must be one of train, valid"):
        pairs_of(SourceConfig(hf=str(tmp_path / "dd"), hf_split="test"))
    with pytest.raises(DataError, match="no column 'text'; columns are: source, target, id"):
        pairs_of(SourceConfig(hf=str(tmp_path / "dd"), src_column="text", tgt_column="target"))
    with pytest.raises(DataError, match="no 'translation' column"):
        pairs_of(SourceConfig(hf=str(tmp_path / "dd")))


def test_hf_translation_missing_language(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict(_rows()).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match="translation has keys de, en, not 'fr' and 'en'"):
        pairs_of(SourceConfig(hf=str(tmp_path / "saved")), "fr", "en")


def test_hf_hub_name_offline_is_a_data_error() -> None:
    with pytest.raises(DataError, match="cannot open Hugging Face dataset 'wmt/wmt14'"):
        iter_pairs(SourceConfig(hf="wmt/wmt14", hf_config="de-en"), "de", "en")
