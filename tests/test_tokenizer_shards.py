"""SentencePiece training and the Tokenizer; shard write/read round trips and manifest checks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from nmt_cli.config import TokenizerConfig
from nmt_cli.data.batching import pad_rows
from nmt_cli.data.shards import (
    FORMAT,
    ShardReader,
    ShardWriter,
    read_manifest,
    token_dtype,
    write_manifest,
)
from nmt_cli.data.tokenizer import (
    BOS,
    EOS,
    PAD,
    UNK,
    Tokenizer,
    sentences_within,
    train_sentencepiece,
)
from nmt_cli.errors import DataError

WORDS = "der die das haus katze hund baum maus und ist klein gross alt neu".split()


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    text = tmp_path_factory.mktemp("spm") / "text.txt"
    text.write_text(
        "".join(" ".join(rng.choices(WORDS, k=rng.randint(2, 8))) + "\n" for _ in range(300)),
        encoding="utf-8",
    )
    return train_sentencepiece([text], text.with_name("spm"), TokenizerConfig(vocab_size=60))


def test_special_ids_and_round_trip(spm_model: Path) -> None:
    tok = Tokenizer.from_file(spm_model)
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (PAD, UNK, BOS, EOS)
    assert 20 < tok.vocab_size <= 60
    ids = tok.encode("der hund ist klein")
    assert min(ids) > EOS
    assert tok.decode([BOS, *ids, EOS, PAD, PAD]) == "der hund ist klein"
    assert tok.encode_batch(["der hund ist klein", ""]) == [ids, []]


def test_tokenizer_from_bytes_and_hash(spm_model: Path) -> None:
    data = spm_model.read_bytes()
    tok = Tokenizer(data)
    assert tok.model_bytes == data
    assert tok.sha256 == Tokenizer(data).sha256 and len(tok.sha256) == 64


def test_not_a_sentencepiece_model(tmp_path: Path) -> None:
    (tmp_path / "fake.model").write_bytes(b"this is not a protobuf")
    with pytest.raises(DataError, match=r"fake\.model is not a SentencePiece model"):
        Tokenizer.from_file(tmp_path / "fake.model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        Tokenizer(b"")


def test_char_model(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("abc cab\nbca\n" * 20, encoding="utf-8")
    model = train_sentencepiece([tmp_path / "t.txt"], tmp_path / "c", TokenizerConfig("char", 50))
    tok = Tokenizer(model.read_bytes())
    assert tok.decode(tok.encode("cab abc")) == "cab abc"
    assert tok.vocab_size == 4 + 4  # specials, '▁', a, b, c


def _manifest(pairs: int, src_tokens: int, tgt_tokens: int, dtype: str) -> dict:
    split = {"pairs": pairs, "src_tokens": src_tokens, "tgt_tokens": tgt_tokens}
    return {"format": FORMAT, "format_version": 1, "dtype": dtype, "splits": {"train": split}}


@pytest.mark.parametrize("vocab_size", [8000, 70000])
def test_shard_round_trip(tmp_path: Path, vocab_size: int) -> None:
    dtype = token_dtype(vocab_size)
    src = [[5, 6, 7], [], [vocab_size - 1]]
    tgt = [[9], [10, 11], [12, 13, 14, 15]]
    with ShardWriter(tmp_path, "train", dtype, buffer_pairs=2) as writer:
        writer.add(src[0], tgt[0])
        writer.add_batch(src[1:], tgt[1:])
    stats = writer.close()
    assert (stats.pairs, stats.src_tokens, stats.tgt_tokens) == (3, 4, 7)
    write_manifest(tmp_path, _manifest(3, 4, 7, dtype.name))

    offsets = np.fromfile(tmp_path / "train.tgt.idx", dtype=np.int64)
    assert offsets.tolist() == [0, 1, 3, 7]  # raw int64, N+1 entries, no header
    assert (tmp_path / "train.src.bin").stat().st_size == 4 * dtype.itemsize

    reader = ShardReader(tmp_path, "train")
    assert len(reader) == 3 and (reader.src_tokens, reader.tgt_tokens) == (4, 7)
    assert reader.src_lengths.tolist() == [3, 0, 1] and reader.src_lengths.dtype == np.int64
    assert reader.tgt_lengths.tolist() == [1, 2, 4]
    for i in range(3):
        s, t = reader.pair(i)
        assert s.dtype == np.int64 and s.tolist() == src[i] and t.tolist() == tgt[i]
    # A batch gathered at once equals the pairs read one by one and padded (empty src 1 too).
    for indices in ([2, 0, 1], [1], [1, 1, 2]):
        for side, sentences in (("src", src), ("tgt", tgt)):
            rows, lengths = reader.padded(side, indices)
            expected_rows, expected_lengths = pad_rows([sentences[i] for i in indices])
            assert rows.tolist() == expected_rows.tolist()
            assert lengths.tolist() == expected_lengths.tolist()


def test_empty_split_reads(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, "train", "uint16"):
        pass
    write_manifest(tmp_path, _manifest(0, 0, 0, "uint16"))
    reader = ShardReader(tmp_path, "train")
    assert len(reader) == 0 and reader.src_lengths.tolist() == []


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no manifest.json in .*; run `nmt preprocess RECIPE"):
        read_manifest(tmp_path / "missing")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="'other' is not 'nmt_cli.shards'"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, {**_manifest(0, 0, 0, "uint16"), "format_version": 99})
    with pytest.raises(DataError, match="format version 99, newer"):
        read_manifest(tmp_path)


def test_truncated_shard_detected(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, "train", "uint16") as writer:
        writer.add([5, 6], [7])
    write_manifest(tmp_path, _manifest(2, 2, 1, "uint16"))  # claims 2 pairs, holds 1
    with pytest.raises(DataError, match=r"train\.src\.idx does not match"):
        ShardReader(tmp_path, "train")


def test_sentences_within_char_budget(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x" * 9 + "\n" + "y" * 29 + "\n", encoding="utf-8")  # 20 B/line
    (tmp_path / "b.txt").write_text("z" * 19 + "\n", encoding="utf-8")
    assert sentences_within([tmp_path / "a.txt", tmp_path / "b.txt"], 100) == 5
    assert sentences_within([tmp_path / "b.txt"], 10) == 1  # never zero


def test_bit_flipped_and_truncated_shards_fail_their_checksum(tmp_path: Path) -> None:
    """The manifest's CRC-32 of each file catches damage the offsets cannot see."""
    with ShardWriter(tmp_path, "train", "uint16") as writer:
        writer.add([5, 6, 7], [8, 9])
        writer.add([10], [11, 12, 13])
    stats = writer.close()
    assert sorted(stats.crc32) == ["train.src.bin", "train.src.idx", "train.tgt.bin",
                                   "train.tgt.idx"]  # fmt: skip
    write_manifest(tmp_path, {**_manifest(2, 4, 5, "uint16"),
                              "splits": {"train": stats.as_dict()}})  # fmt: skip
    assert len(ShardReader(tmp_path, "train")) == 2  # intact: opens
    shard = tmp_path / "train.tgt.bin"
    good = shard.read_bytes()
    shard.write_bytes(good[:2] + bytes([good[2] ^ 0x01]) + good[3:])  # one bit: token 9 -> 8
    with pytest.raises(DataError, match=r"train\.tgt\.bin does not match the CRC-32"):
        ShardReader(tmp_path, "train")
    shard.write_bytes(good)
    idx = tmp_path / "train.src.idx"
    idx.write_bytes(idx.read_bytes()[:-1] + b"\x7f")  # last offset's high byte
    with pytest.raises(DataError, match="damaged"):
        ShardReader(tmp_path, "train")
