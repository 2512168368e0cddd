"""`preprocess` end to end on a ~200-pair corpus, and its all-or-nothing output."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from nmt_cli.config import CleanConfig, Config, DataConfig, SourceConfig, TokenizerConfig
from nmt_cli.data.shards import ShardReader, load_tokenizers, read_manifest
from nmt_cli.errors import ConfigError, DataError
from nmt_cli.preprocess import preprocess

DE = "der die das haus katze hund baum maus und ist klein gross".split()
EN = "the a house cat dog tree mouse and is small big old".split()


def write_corpus(root: Path, n: int = 200) -> None:
    rng = random.Random(0)
    src, tgt = [], []
    for _ in range(n):
        k = rng.randint(2, 8)
        src.append(" ".join(rng.choices(DE, k=k)))
        tgt.append(" ".join(rng.choices(EN, k=k)))
    src += ["", "lang " * 30, "eins"]  # dropped: empty, too long, ratio 1:6
    tgt += ["leer", "long " * 30, "one two three four five six"]
    (root / "train.de").write_text("\n".join(src) + "\n", encoding="utf-8")
    (root / "train.en").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    (root / "valid.tsv").write_text("der  hund\tthe dog\n\t\nkatze\tcat\n", encoding="utf-8")


def make_config(root: Path, joint: bool = True) -> Config:
    return Config(
        data=DataConfig(
            src_lang="de",
            tgt_lang="en",
            train=(SourceConfig(src=str(root / "train.de"), tgt=str(root / "train.en")),),
            valid=(SourceConfig(tsv=str(root / "valid.tsv")),),
            clean=CleanConfig(max_words=20, max_ratio=3.0),
        ),
        tokenizer=TokenizerConfig(vocab_size=100, joint=joint),
    )


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_end_to_end_joint(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    out = tmp_path / "data"
    result = preprocess(make_config(tmp_path), out, show_progress=False)

    assert result.pairs == {"train": 200, "valid": 3, "test": 0}
    assert (result.clean.read, result.clean.kept) == (203, 200)
    assert (result.clean.dropped_empty, result.clean.dropped_long, result.clean.dropped_ratio) == (
        1,
        1,
        1,
    )
    manifest = read_manifest(out)
    assert manifest["tokenizer"]["src"] == manifest["tokenizer"]["tgt"] == "spm.model"
    assert manifest["dtype"] == "uint16"
    assert manifest["splits"]["train"]["pairs"] == 200
    assert manifest["cleaning"]["kept"] == 200
    assert manifest["config"]["tokenizer"]["vocab_size"] == 100
    assert (out / "valid.de").read_text(encoding="utf-8") == "der hund\n\nkatze\n"  # empty kept
    assert (out / "valid.en").read_text(encoding="utf-8") == "the dog\n\ncat\n"
    assert not (out / "_train_text").exists() and leftovers(tmp_path) == []

    src_tok, tgt_tok = load_tokenizers(out)
    assert src_tok is tgt_tok
    first_src = (tmp_path / "train.de").read_text(encoding="utf-8").splitlines()[0]
    train = ShardReader(out, "train")
    assert len(train) == 200 and train.src_tokens == int(train.src_lengths.sum())
    assert src_tok.decode(train.pair(0)[0]) == first_src
    valid = ShardReader(out, "valid")
    assert valid.src_lengths.tolist()[1] == 0
    assert tgt_tok.decode(valid.pair(2)[1]) == "cat"


def test_separate_tokenizers(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    result = preprocess(make_config(tmp_path, joint=False), tmp_path / "d", show_progress=False)
    manifest = read_manifest(tmp_path / "d")
    assert (manifest["tokenizer"]["src"], manifest["tokenizer"]["tgt"]) == (
        "spm.src.model",
        "spm.tgt.model",
    )
    src_tok, tgt_tok = load_tokenizers(tmp_path / "d")
    assert result.vocab_size == {"src": src_tok.vocab_size, "tgt": tgt_tok.vocab_size}
    assert "hund" in [src_tok.id_to_piece(i).lstrip("\u2581") for i in range(src_tok.vocab_size)]


def test_failed_rerun_leaves_existing_out_dir_untouched(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    cfg = make_config(tmp_path)
    out = tmp_path / "data"
    preprocess(cfg, out, show_progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    with open(tmp_path / "train.de", "ab") as f:
        f.write("K\xe4se\n".encode("latin-1"))
    with open(tmp_path / "train.en", "a", encoding="utf-8") as f:
        f.write("cheese\n")
    with pytest.raises(DataError, match=r"train\.de: line 204 is not valid UTF-8"):
        preprocess(cfg, out, show_progress=False)

    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_empty_train_after_cleaning(tmp_path: Path) -> None:
    (tmp_path / "t.tsv").write_text("\tx\nnur eins\t\n", encoding="utf-8")
    cfg = Config(
        data=DataConfig(
            src_lang="de", tgt_lang="en", train=(SourceConfig(tsv=str(tmp_path / "t.tsv")),)
        )
    )
    with pytest.raises(DataError, match=r"no training pairs left after cleaning \(2 read, 2 empty"):
        preprocess(cfg, tmp_path / "out", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tsv"]


def test_a_pair_over_max_tokens_subwords_is_dropped(tmp_path: Path) -> None:
    """A 60,000-character "word" passes the word-count filter; its subwords do not."""
    write_corpus(tmp_path)
    with (tmp_path / "train.de").open("a", encoding="utf-8") as src:
        src.write("der " + "".join(random.Random(1).choices("abcdefghijklmnop", k=60_000)) + "\n")
    with (tmp_path / "train.en").open("a", encoding="utf-8") as tgt:
        tgt.write("the word\n")
    out = tmp_path / "data"
    result = preprocess(make_config(tmp_path), out, show_progress=False)
    assert result.clean.dropped_long_tokens == 1
    assert (result.clean.read, result.clean.kept) == (204, 200)
    assert result.pairs["train"] == 200
    assert read_manifest(out)["cleaning"]["dropped_long_tokens"] == 1
    assert ShardReader(out, "train").src_lengths.max() <= 250


def test_no_pairs_left_after_the_subword_filter(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    cfg = make_config(tmp_path)
    cfg = Config(data=replace(cfg.data, clean=CleanConfig(max_words=20, max_tokens=1)),
                 tokenizer=cfg.tokenizer)  # fmt: skip
    with pytest.raises(DataError, match=r"no training pairs left .* 20\d over data.clean.max_tok"):
        preprocess(cfg, tmp_path / "data", show_progress=False)
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []


def test_no_train_sources() -> None:
    with pytest.raises(ConfigError, match="data.train is empty; add a source"):
        preprocess(Config(), Path("unused"), show_progress=False)


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an nmt_cli data dir"):
        preprocess(make_config(tmp_path), tmp_path / "notes", show_progress=False)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_missing_test_file_fails_before_any_work(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    cfg = make_config(tmp_path)
    missing = SourceConfig(src=str(tmp_path / "test.de"), tgt=str(tmp_path / "test.en"))
    cfg = Config(data=replace(cfg.data, test=(missing,)), tokenizer=cfg.tokenizer)
    with pytest.raises(DataError, match=r"test\.de: not found"):
        preprocess(cfg, tmp_path / "data", show_progress=False)
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []
