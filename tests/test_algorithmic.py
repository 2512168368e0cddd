"""The NTM algorithmic tasks: generated pairs, bit errors, recipe checks and `nmt preprocess`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from nmt_cli.config import SourceConfig, config_from_dict, load_config
from nmt_cli.data.algorithmic import TASKS, bit_errors, generate
from nmt_cli.data.corpus import CleanStats, check_source, clean_pairs, iter_pairs
from nmt_cli.data.tokenizer import Tokenizer
from nmt_cli.errors import ConfigError

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
HEX = re.compile(r"[0-9a-f]{2}")
SYMBOLS = [f"{v:02x}" for v in range(256)]
MARKERS = ["|", "?", *(f"x{n}" for n in range(1, 11))]


def _all_symbols(words: list[str]) -> bool:
    return all(HEX.fullmatch(w) for w in words)


# --- generators -----------------------------------------------------------------------------


def test_copy_targets_equal_sources_of_every_length_in_range() -> None:
    pairs = list(generate("copy", 300, seed=1, lengths=(2, 5)))
    assert all(src == tgt for src, tgt in pairs)
    assert {len(src.split()) for src, _ in pairs} == {2, 3, 4, 5}
    assert all(_all_symbols(src.split()) for src, _ in pairs)


def test_repeat_copy_target_is_the_sequence_n_times() -> None:
    pairs = list(generate("repeat_copy", 300, seed=1, lengths=(1, 4), repeats=(2, 3)))
    counts, lengths = set(), set()
    for src, tgt in pairs:
        *seq, token = src.split()
        n = int(token.removeprefix("x"))
        assert token == f"x{n}" and _all_symbols(seq)
        assert tgt.split() == seq * n
        counts.add(n)
        lengths.add(len(seq))
    assert counts == {2, 3} and lengths == {1, 2, 3, 4}


def test_associative_recall_answer_is_the_item_after_the_query() -> None:
    pairs = list(generate("associative_recall", 300, seed=1, items=(2, 4)))
    counts, positions = set(), set()
    for src, tgt in pairs:
        story, query = src.split(" ? ")
        items = [tuple(item.split()) for item in story.split(" | ")]
        assert all(len(item) == 3 and _all_symbols(list(item)) for item in items)
        assert len(set(items)) == len(items)  # distinct, so the answer is unique
        q = items.index(tuple(query.split()))
        assert q < len(items) - 1
        assert tuple(tgt.split()) == items[q + 1]
        counts.add(len(items))
        positions.add(q)
    assert counts == {2, 3, 4} and positions == {0, 1, 2}


@pytest.mark.parametrize("task", TASKS)
def test_generation_is_deterministic_per_seed(task: str) -> None:
    assert list(generate(task, 20, seed=5)) == list(generate(task, 20, seed=5))
    assert list(generate(task, 20, seed=5)) != list(generate(task, 20, seed=6))


def test_generate_rejects_an_unknown_task() -> None:
    with pytest.raises(ValueError, match="copy, repeat_copy, associative_recall"):
        list(generate("reverse", 1, seed=1))


# --- bit errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hyp", "ref", "bits"),
    [
        ("3f 00 a5", "3f 00 a5", 0),
        ("00", "ff", 8),
        ("0f", "00", 4),
        ("3f 01", "3f 00", 1),
        ("80 7f", "00 ff", 2),  # 10000000 vs 0, 01111111 vs 11111111
        ("3f", "3f 00 12", 16),  # two missing symbols
        ("", "3f 00", 16),  # nothing produced
        ("3f 00 12", "3f 00", 8),  # one extra symbol
        ("3f 01 12 34", "3f 00", 1 + 16),  # a wrong bit and two extra
        ("<unk> 00", "ff 00", 8),  # not a hex symbol
        ("x3 |", "00 00", 16),
        ("3", "03", 8),  # one digit is not a symbol
        ("abc", "ab", 8),
    ],
)
def test_bit_errors(hyp: str, ref: str, bits: int) -> None:
    assert bit_errors(hyp, ref) == bits


# --- recipe checks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (dict(task="cpy", size=10), "task 'cpy' is unknown; use one of copy, repeat_copy"),
        (dict(task="copy"), "size is 0; set size"),
        (dict(task="copy", size=5, lengths=(5, 2)), r"lengths \[5, 2\] is not a range"),
        (dict(task="copy", size=5, lengths=(0, 2)), r"1 <= lo <= hi"),
        (dict(task="repeat_copy", size=5, repeats=(3, 1)), r"repeats \[3, 1\]"),
        (dict(task="associative_recall", size=5, items=(1, 4)), r"items .* 2 <= lo <= hi"),
        (dict(task="copy", size=5, tsv="x.tsv"), r"exactly one of .* \(found: tsv, task\)"),
    ],
)
def test_task_sources_are_checked(source: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_source(SourceConfig(**source))


def test_a_task_source_yields_the_generated_pairs() -> None:
    source = SourceConfig(task="repeat_copy", size=7, seed=3, lengths=(2, 3), repeats=(1, 2))
    assert check_source(source) == "task"
    expected = list(generate("repeat_copy", 7, seed=3, lengths=(2, 3), repeats=(1, 2)))
    assert list(iter_pairs(source, "src", "tgt")) == expected


def test_recipe_ranges_and_word_tokenizer_parse() -> None:
    cfg = config_from_dict(
        {
            "data": {"train": [{"task": "copy", "size": 3, "lengths": [4, 9]}]},
            "tokenizer": {"model_type": "word"},
        }
    )
    assert cfg.data.train[0].lengths == (4, 9) and cfg.tokenizer.model_type == "word"
    with pytest.raises(ConfigError, match="lengths needs 2 values"):
        config_from_dict({"data": {"train": [{"task": "copy", "size": 3, "lengths": [4]}]}})


@pytest.mark.parametrize(
    "name", ["ntm-copy", "ntm-repeat-copy", "ntm-associative-recall"], ids=lambda n: n
)
def test_ntm_recipes_clean_no_training_pair_away(name: str) -> None:
    """Repeat copy targets are up to 10x their source, recall sources 9x their target."""
    cfg = load_config(RECIPES / f"{name}.yaml")
    assert cfg.tokenizer.model_type == "word" and cfg.model.type == "ntm"
    for source in cfg.data.train:
        extreme = SourceConfig(
            task=source.task, size=50, lengths=(source.lengths[1],) * 2,
            repeats=(source.repeats[1],) * 2, items=(source.items[1],) * 2,
        )  # fmt: skip
        stats = CleanStats()
        list(clean_pairs(iter_pairs(extreme, "src", "tgt"), cfg.data.clean, stats))
        assert stats.kept == 50


# --- nmt preprocess -------------------------------------------------------------------------


def test_preprocess_builds_a_vocabulary_of_every_symbol(
    run_nmt: Callable, recipe_file: Callable, tmp_path: Path
) -> None:
    """A word tokenizer gives each symbol and marker one token; the ratio filter keeps all."""
    raw = {
        "data": {
            "train": [
                {"task": "copy", "size": 300, "seed": 1, "lengths": [10, 20]},
                {"task": "repeat_copy", "size": 100, "seed": 2, "lengths": [1, 3]},
                {"task": "associative_recall", "size": 50, "seed": 3, "items": [6, 6]},
            ],
            "valid": [{"task": "copy", "size": 5, "seed": 4}],
            "test": [{"task": "associative_recall", "size": 5, "seed": 5}],
            "clean": {"max_words": 1000, "max_ratio": 100.0},
        },
        "tokenizer": {"model_type": "word", "vocab_size": 300, "joint": True},
    }
    out = tmp_path / "data"
    done = run_nmt(["preprocess", str(recipe_file(raw)), "--out", str(out), "--json"])
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["pairs"] == {"train": 450, "valid": 5, "test": 5}
    assert summary["cleaning"]["kept"] == 450
    tok = Tokenizer.from_file(out / "spm.model")
    pieces = {tok.id_to_piece(i) for i in range(tok.vocab_size)}
    assert {"▁" + word for word in SYMBOLS + MARKERS} <= pieces
    assert tok.vocab_size == 4 + len(SYMBOLS) + len(MARKERS)  # pad, unk, bos, eos
    src, tgt = list(generate("associative_recall", 1, seed=5))[0]
    assert (out / "test.src").read_text(encoding="utf-8").splitlines()[0] == src
    assert tok.unk_id not in tok.encode(src)
    assert tok.decode(tok.encode(tgt)) == tgt
