"""Hostile files never run code: a checkpoint whose pickle would create a file, a recipe that
asks YAML to build Python objects, and recipe paths written to be shell-expanded. Each is
refused with a one-line error, and the marker file the payload would create never appears."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch

from nmt_cli.checkpoint import FORMAT


class Payload:
    """Unpickling calls `open(marker, "w")`: the file's existence proves the code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def assert_refused(done, marker: Path) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not marker.exists(), "the payload ran"


def test_checkpoint_payload_never_runs(run_nmt: Callable, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil.pt"  # torch's zip format, as a real checkpoint would be
    torch.save({"format": FORMAT, "payload": Payload(marker)}, zipped)
    plain = tmp_path / "evil-plain.pt"  # a bare pickle stream
    plain.write_bytes(pickle.dumps(Payload(marker)))
    assert not marker.exists()
    for path in (zipped, plain):
        for command in (["translate", str(path)], ["eval", str(path), "--src", str(path),
                                                   "--ref", str(path)]):  # fmt: skip
            assert_refused(run_nmt(command, stdin=b"hallo welt\n"), marker)
        assert_refused(run_nmt(["average", str(path), str(path), "--out",
                                str(tmp_path / "avg.pt")]), marker)  # fmt: skip
    assert not (tmp_path / "avg.pt").exists()


def test_recipe_cannot_construct_python_objects(run_nmt: Callable, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"data: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    done = run_nmt(["preprocess", str(recipe), "--out", str(tmp_path / "data")])
    assert_refused(done, marker)
    assert "not valid YAML" in done.stderr


def test_recipe_paths_are_not_shell_expanded(run_nmt: Callable, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    src = f"$(touch {marker}).de"
    recipe = tmp_path / "paths.yaml"
    recipe.write_text(
        "data:\n  train:\n"
        f"    - {{src: '{src}', tgt: '`touch {marker}`.en'}}\n"
        "  valid:\n    - {src: '~/nothing.de', tgt: '~/nothing.en'}\n"
    )
    done = run_nmt(["preprocess", str(recipe), "--out", str(tmp_path / "data")], cwd=tmp_path)
    assert_refused(done, marker)
    assert "not found" in done.stderr and "$(touch" in done.stderr
