"""The one format tag and version check, as each reader applies it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nmt_cli.checkpoint import CHECKPOINT
from nmt_cli.data.shards import SHARDS
from nmt_cli.errors import CheckpointError
from nmt_cli.formats import FileFormat
from nmt_cli.inference.ct2_format import EXPORT, METADATA, read_metadata

FORMATS = [CHECKPOINT, SHARDS, EXPORT]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.tag)
def test_each_format_accepts_its_own_versions(fmt: FileFormat) -> None:
    for version in range(1, fmt.version + 1):
        assert fmt.check("f", {"format": fmt.tag, "format_version": version}) == version


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.tag)
@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({}, "no '{tag}' tag"),
        (["{tag}", 1], "no '{tag}' tag"),
        ({"format": "x" * 500}, "x\\.\\.\\.x+' is not '{tag}'"),
        ({"format": "{tag}"}, "no valid {noun} format version"),
        ({"format": "{tag}", "format_version": True}, "no valid {noun} format version"),
        ({"format": "{tag}", "format_version": "1"}, "no valid {noun} format version"),
        ({"format": "{tag}", "format_version": 0}, "no valid {noun} format version"),
        ({"format": "{tag}", "format_version": 99}, "{noun} format version 99, newer.*upgrade"),
    ],
)
def test_each_format_refuses_in_one_line(fmt: FileFormat, document, says: str) -> None:
    text = json.dumps(document).replace("{tag}", fmt.tag)
    pattern = says.format(tag=fmt.tag.replace(".", "\\."), noun=fmt.noun)
    with pytest.raises(fmt.error, match=pattern) as caught:
        fmt.check("f", json.loads(text))
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 250


def test_an_export_of_a_newer_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / METADATA).write_text(json.dumps({"format": EXPORT.tag, "format_version": 9}))
    with pytest.raises(CheckpointError, match="export format version 9, newer.*upgrade nmt_cli"):
        read_metadata(tmp_path)
    (tmp_path / METADATA).write_text(json.dumps({"format": "nmt_cli.checkpoint"}))
    with pytest.raises(CheckpointError, match="not an nmt_cli CTranslate2 export.*export again"):
        read_metadata(tmp_path)
