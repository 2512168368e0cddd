"""Property-based: recipes and checkpoint configs with out-of-range or wrongly typed values.

Hypothesis sets one to three keys, drawn from every key of every section (walked from the
config dataclasses, so a new key is covered the day it is added), to huge, negative or zero
ints, NaN, infinite or huge floats, strings, lists, mappings, None or booleans. Recipes run
`nmt train` (or `nmt preprocess` when a data or tokenizer key changed); checkpoint configs are
written into a real checkpoint and run through `nmt translate`. The invariant: exit 0, or
exit 1 with one `error:` line on stderr as its last line, and never a traceback. An accepted
config must also run: those that would be slow here (a big model, many steps, a long search,
torch.compile) are built on the meta device instead, which is where a size error would show.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import TINY_MODEL
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nmt_cli.checkpoint import load_checkpoint, save_checkpoint
from nmt_cli.cli import app
from nmt_cli.config import MODEL_CONFIGS, Config, config_from_dict
from nmt_cli.errors import NMTError
from nmt_cli.models import build_model_shapes

property_settings = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

FAMILIES = {
    "rnn": TINY_MODEL,
    "transformer": {"type": "transformer", "d_model": 32, "heads": 2, "ff_dim": 64,
                    "enc_layers": 1, "dec_layers": 1, "dropout": 0.0, "max_len": 40},
    "ntm": {"type": "ntm", "emb_dim": 16, "controller_dim": 32, "memory_slots": 16,
            "memory_width": 8, "max_len": 40},
}  # fmt: skip

hostile = st.one_of(
    st.sampled_from([-(10**23), -1, 0, 1000, 65_536, 2**31, 2**63, 10**23]),
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-9, 2.5, 1e308]),
    st.sampled_from(["", "x", "1e23", "nan", "rnn", "transformer", "ntm", "bleu", "none"]),
    st.sampled_from([None, [], [1], [1, 2], [0.5, 2.0], [3, 1], {}, {"a": 1}]),
)


def plausible(current: Any) -> st.SearchStrategy:
    """Values near a key's current one, so that accepted configs get to run too."""
    if isinstance(current, bool):
        return st.sampled_from([current, not current])
    if isinstance(current, int):
        return st.sampled_from([current, current + 1, max(current // 2, 1), 2 * current])
    if isinstance(current, float):
        return st.sampled_from([current, current / 2, 1 - current / 2])
    return st.sampled_from([current, 1, 2, 0.5, True, [1, 2]])


def value_at(raw: Any, path: tuple) -> Any:
    for part in path:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def leaf_keys(cls: type, prefix: tuple = ()) -> list[tuple]:
    """Every key path of dataclass `cls`: sections, their fields, and the first item of a
    tuple of dataclasses (data.train[0].src)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path, hint = (*prefix, f.name), hints[f.name]
        keys.append(path)
        args = typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            keys += leaf_keys(hint, path)
        elif args and args[-1] is Ellipsis and dataclasses.is_dataclass(args[0]):
            keys += leaf_keys(args[0], (*path, 0))
    return keys


def config_keys(family: str) -> list[tuple]:
    """`Config.model` is the union of the families, so its keys come from the family's class."""
    return [
        *(k for k in leaf_keys(Config) if k[0] != "model"),
        *leaf_keys(MODEL_CONFIGS[family], ("model",)),
    ]


def put(raw: dict, path: tuple, value: Any) -> None:
    """Set `path` in the nested containers `raw`, making room where an earlier change left a
    scalar or a too-short list in the way."""
    node: Any = raw
    for part, following in zip(path, path[1:], strict=False):
        empty: Any = [] if isinstance(following, int) else {}
        if isinstance(part, int):
            while len(node) <= part:
                node.append({})
            if not isinstance(node[part], type(empty)):
                node[part] = empty
        elif not isinstance(node.get(part), type(empty)):
            node[part] = empty
        node = node[part]
    node[path[-1]] = value


@st.composite
def perturbed(draw, base: dict) -> tuple[dict, list[tuple]]:
    """`base` (a config of plain containers) with 1-3 keys set to drawn values."""
    sections: dict[str, list[tuple]] = {}
    for key in config_keys(base["model"]["type"]):
        sections.setdefault(key[0], []).append(key)
    raw = copy.deepcopy(base)
    keys = []
    for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):  # a section, then one of its keys
        keys.append(draw(st.sampled_from(sections[draw(st.sampled_from(sorted(sections)))])))
        near = draw(st.booleans())
        value = draw(plausible(value_at(raw, keys[-1])) if near else hostile)
        # a copy: a later change may write into a drawn list or dict, and sampled_from hands
        # out the same objects to every example
        put(raw, keys[-1], copy.deepcopy(value))
    event(f"sections {sorted({k[0] for k in keys})}")
    return raw, keys


def assert_success_or_one_line_error(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.stderr, result.stderr
    if result.exit_code != 0:
        event("one-line error")
        assert result.exit_code == 1, result.stderr
        lines = result.stderr.strip("\n").split("\n")
        assert lines[-1].startswith("error: "), result.stderr
        event(re.sub(r"[0-9]+", "N", lines[-1].split(".pt: ")[-1])[:90])  # the kinds seen
        assert sum(line.startswith("error:") for line in lines) == 1, result.stderr
    else:
        event("exit 0")


def too_slow_to_run(raw: dict, training: bool) -> bool:
    """Whether an accepted config would take more than a moment here, to train or else to
    translate with (a checkpoint's model is its weights' size: a config naming a bigger one
    fails the shape check). Then the test builds its model on the meta device instead."""
    try:
        cfg = config_from_dict(raw)
    except NMTError:
        return False  # rejected: cheap to run
    model = build_model_shapes(cfg.model, 32, 32, True)
    d, t = cfg.decode, cfg.train
    slow = d.beam * d.n_best * (d.max_len_a * cfg.model.max_len + d.max_len_b) > 50_000
    if training:
        params = sum(p.numel() for p in model.parameters())
        slow = slow or params > 2_000_000 or t.max_steps > 20 or t.compile or t.threads > 2
    if slow:
        event("accepted, built on meta only")
    return slow


@pytest.fixture(scope="module")
def cli() -> CliRunner:
    return CliRunner()


@pytest.fixture
def restore_threads():
    """`train.threads` sets torch's thread count for the whole process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_recipes(make_recipe) -> dict[str, dict]:
    return {
        family: make_recipe(
            train={"max_steps": 2, "valid_every": 2, "log_every": 1, "keep_last": 1}
        )
        | {"model": dict(model)}
        for family, model in FAMILIES.items()
    }


@property_settings
@given(data=st.data(), family=st.sampled_from(sorted(FAMILIES)))
def test_recipes_train_or_fail_in_one_line(
    data, family: str, base_recipes, reverse_data: Path, cli: CliRunner, tmp_path: Path,
    restore_threads,
) -> None:  # fmt: skip
    raw, keys = data.draw(perturbed(base_recipes[family]))
    work = tmp_path / f"example-{len(list(tmp_path.iterdir()))}"
    work.mkdir()
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    if too_slow_to_run(raw, training=True):
        return
    if any(k[0] in ("data", "tokenizer") for k in keys):
        args = ["preprocess", str(recipe), "--out", str(work / "data")]
    else:
        args = ["train", str(recipe), "--data", str(reverse_data), "--out", str(work / "run"),
                "--device", "cpu"]  # fmt: skip
    assert_success_or_one_line_error(cli.invoke(app, args))


@pytest.fixture(scope="module")
def stored(checkpoint: Path) -> dict:
    return load_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def input_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "input.txt"
    path.write_text("1 2 3\n4 5\n", encoding="utf-8")
    return path


@property_settings
@given(data=st.data())
def test_checkpoint_configs_translate_or_fail_in_one_line(
    data, stored: dict, input_file: Path, cli: CliRunner, tmp_path: Path
) -> None:
    config, _ = data.draw(perturbed(stored["config"]))
    path = tmp_path / "perturbed.pt"
    save_checkpoint(path, config=config, model_state=stored["model_state"],
                    tokenizer=stored["tokenizer"], step=stored["step"], metrics={})  # fmt: skip
    if too_slow_to_run(config, training=False):
        return
    result = cli.invoke(app, ["translate", str(path), "--input", str(input_file), "--device",
                              "cpu"])  # fmt: skip
    assert_success_or_one_line_error(result)
    if result.exit_code == 0:
        assert len(result.stdout.splitlines()) == 2
