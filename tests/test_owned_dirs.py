"""`preprocess --out` and `export --out` replace or delete a directory only when it is provably
theirs: a marker whose content is ours, nothing inside that they did not write, and after a
kill only leftovers they named and stamped, with the writer's PID dead. Everything else ends
in one `error:` line before any work starts, and is left exactly as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_bad_input import assert_one_line_error
from typer.testing import CliRunner

from nmt_cli.checkpoint import save_checkpoint, tokenizer_entry
from nmt_cli.cli import app
from nmt_cli.config import config_from_dict, config_to_dict
from nmt_cli.data.shards import ShardReader, load_tokenizers
from nmt_cli.models import build_model

TRANSFORMER = {"type": "transformer", "d_model": 16, "heads": 2, "ff_dim": 32, "enc_layers": 1,
               "dec_layers": 1, "dropout": 0.0, "max_len": 40}  # fmt: skip


@pytest.fixture
def data_recipe(recipe_file) -> Path:
    """A recipe of generated copy-task pairs: preprocess takes about a second."""
    return recipe_file({
        "data": {"train": [{"task": "copy", "size": 200, "seed": 1}],
                 "valid": [{"task": "copy", "size": 10, "seed": 2}]},
        "tokenizer": {"model_type": "word", "vocab_size": 30},
    })  # fmt: skip


@pytest.fixture(scope="module")
def transformer_ckpt(reverse_data: Path, tmp_path_factory) -> Path:
    """A random-weight Transformer checkpoint: export needs a real one, not a trained one."""
    tok, _ = load_tokenizers(reverse_data)
    cfg = config_from_dict({"model": TRANSFORMER})
    net = build_model(cfg.model, tok.vocab_size, tok.vocab_size, shared_vocab=True)
    path = tmp_path_factory.mktemp("owned-ckpt") / "model.pt"
    save_checkpoint(path, config=config_to_dict(cfg), model_state=net.state_dict(),
                    tokenizer=tokenizer_entry(tok.model_bytes, tok.model_bytes, joint=True),
                    step=1, metrics={})  # fmt: skip
    return path


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under `root` (hidden ones too): file bytes, link targets, or "dir"."""
    tree: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            tree[key] = f"-> {path.readlink()}"
        elif path.is_dir():
            tree[key] = "dir"
        else:
            tree[key] = path.read_bytes()
    return tree


def web_app(path: Path, manifest: str | None = '{"name": "app"}') -> Path:
    path.mkdir()
    (path / "index.html").write_text("<h1>app</h1>\n")
    if manifest is not None:
        (path / "manifest.json").write_text(manifest)
    return path


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


# --- a marker is ours by its content, not its name -----------------------------------------


@pytest.mark.parametrize(
    "manifest",
    [
        '{"name": "app"}',
        '{"format": "nmt_cli.shards"}',  # no version
        '{"format": "nmt_cli.shards", "format_version": "1"}',
        '{"format": "nmt_cli.shards", "format_version": true}',
        '["nmt_cli.shards", 1]',
        "not json {",
    ],
)
def test_a_web_app_with_a_manifest_json_survives_preprocess(
    manifest: str, data_recipe: Path, tmp_path: Path, run_nmt
) -> None:
    app = web_app(tmp_path / "app", manifest)
    before = snapshot(tmp_path)
    done = run_nmt(["preprocess", str(data_recipe), "--out", str(app)])
    assert_one_line_error(done.returncode, done.stderr, "not an nmt_cli data dir", "refusing")
    assert snapshot(tmp_path) == before


def test_a_linked_manifest_of_a_real_data_dir_is_not_ours(
    data_recipe: Path, tmp_path: Path, run_nmt
) -> None:
    real = tmp_path / "real"
    assert run_nmt(["preprocess", str(data_recipe), "--out", str(real)]).returncode == 0
    app = web_app(tmp_path / "app", manifest=None)
    (app / "manifest.json").symlink_to(real / "manifest.json")
    before = snapshot(tmp_path)
    done = run_nmt(["preprocess", str(data_recipe), "--out", str(app)])
    assert_one_line_error(done.returncode, done.stderr, "refusing to replace it")
    assert snapshot(tmp_path) == before


def test_a_web_app_with_an_nmt_cli_json_survives_export(
    transformer_ckpt: Path, tmp_path: Path, run_nmt
) -> None:
    app = web_app(tmp_path / "app")
    (app / "nmt_cli.json").write_text('{"name": "app", "format_version": 1}')
    before = snapshot(tmp_path)
    done = run_nmt(["export", str(transformer_ckpt), "--out", str(app)])
    assert_one_line_error(done.returncode, done.stderr, "not an nmt_cli export", "refusing")
    assert snapshot(tmp_path) == before


# --- a re-run replaces only what it made ------------------------------------------------------


def test_a_data_dir_holding_notes_and_a_run_is_refused(
    data_recipe: Path, tmp_path: Path, run_nmt
) -> None:
    data = tmp_path / "data"
    assert run_nmt(["preprocess", str(data_recipe), "--out", str(data)]).returncode == 0
    (data / "notes.txt").write_text("what I tried\n")
    (data / "run").mkdir()
    (data / "run" / "last.pt").write_bytes(b"weights")
    before = snapshot(tmp_path)
    done = run_nmt(["preprocess", str(data_recipe), "--out", str(data)])
    assert_one_line_error(done.returncode, done.stderr, "nmt_cli did not write", "refusing")
    assert snapshot(tmp_path) == before


def test_a_clean_data_dir_is_replaced_by_each_rerun(
    data_recipe: Path, tmp_path: Path, run_nmt
) -> None:
    data = tmp_path / "data"
    for _ in range(3):
        done = run_nmt(["preprocess", str(data_recipe), "--out", str(data)])
        assert done.returncode == 0, done.stderr
        files = json.loads((data / "manifest.json").read_text())["files"]
        assert sorted(p.name for p in data.iterdir()) == files
        assert len(ShardReader(data, "train")) == 200
        assert [p.name for p in tmp_path.iterdir() if p.name != "recipe.yaml"] == ["data"]


def test_a_data_dir_whose_manifest_lists_no_files_is_replaced(
    data_recipe: Path, tmp_path: Path, run_nmt
) -> None:
    """Manifests written before the "files" list: the known names of a data dir are ours."""
    data = tmp_path / "data"
    assert run_nmt(["preprocess", str(data_recipe), "--out", str(data)]).returncode == 0
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["files"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert run_nmt(["preprocess", str(data_recipe), "--out", str(data)]).returncode == 0
    (data / "notes.txt").write_text("mine\n")
    done = run_nmt(["preprocess", str(data_recipe), "--out", str(data)])
    assert_one_line_error(done.returncode, done.stderr, "'notes.txt'", "refusing")
    assert (data / "notes.txt").read_text() == "mine\n"


def test_export_replaces_its_own_export_and_refuses_one_with_a_foreign_file(
    transformer_ckpt: Path, tmp_path: Path, run_nmt
) -> None:
    out = tmp_path / "model"
    for _ in range(2):
        done = run_nmt(["export", str(transformer_ckpt), "--out", str(out)])
        assert done.returncode == 0, done.stderr
        listed = json.loads((out / "nmt_cli.json").read_text())["files"]
        assert sorted(p.name for p in out.iterdir()) == listed
        assert [p.name for p in tmp_path.iterdir()] == ["model"]
    (out / "README.md").write_text("benchmark notes\n")
    before = snapshot(tmp_path)
    done = run_nmt(["export", str(transformer_ckpt), "--out", str(out)])
    assert_one_line_error(done.returncode, done.stderr, "'README.md'", "refusing")
    assert snapshot(tmp_path) == before


# --- recovery after a kill touches only what it named and stamped -----------------------------


def test_look_alike_siblings_survive_two_runs(data_recipe: Path, tmp_path: Path, run_nmt) -> None:
    """A dated backup (even a copy of a real data dir), a user's `.data.tmp-PID`, and names of
    our own pattern without our stamp or with foreign files: never adopted, never deleted."""
    real = tmp_path / "real"
    assert run_nmt(["preprocess", str(data_recipe), "--out", str(real)]).returncode == 0
    pid = dead_pid()
    backup = tmp_path / ".data.old-20261130"
    shutil.copytree(real, backup)
    (backup / "notes.txt").write_text("before the big change\n")
    (tmp_path / f".data.tmp-{pid}").mkdir()
    (tmp_path / f".data.tmp-{pid}" / "draft.txt").write_text("draft\n")
    unstamped = tmp_path / f".data.nmt-work-{pid}-0123abcd"
    unstamped.mkdir()
    (unstamped / "draft.txt").write_text("draft\n")
    shutil.copytree(backup, tmp_path / f".data.nmt-old-{pid}-0123abcd")  # has notes.txt
    before = snapshot(tmp_path)
    for _ in range(2):
        done = run_nmt(["preprocess", str(data_recipe), "--out", str(tmp_path / "data")])
        assert done.returncode == 0, done.stderr
        after = snapshot(tmp_path)
        assert {k: v for k, v in after.items() if k.split("/")[0] != "data"} == before


def test_a_swap_killed_after_its_second_rename_is_finished(
    data_recipe: Path, tmp_path: Path, run_nmt
) -> None:
    """The dead writer's earlier output (ours, complete) and stamped work dir are removed."""
    data = tmp_path / "data"
    assert run_nmt(["preprocess", str(data_recipe), "--out", str(data)]).returncode == 0
    pid = dead_pid()
    shutil.copytree(data, tmp_path / f".data.nmt-old-{pid}-0123abcd")
    work = tmp_path / f".data.nmt-work-{pid}-89abcdef"
    work.mkdir()
    stamp = {"format": "nmt_cli.work_dir", "pid": pid, "target": "data", "token": "89abcdef"}
    (work / ".nmt-owner.json").write_text(json.dumps(stamp))
    (work / "train.src.bin").write_bytes(b"half")
    assert run_nmt(["preprocess", str(data_recipe), "--out", str(data)]).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "recipe.yaml"]


# --- --out names something that cannot be replaced ----------------------------------------


@pytest.mark.parametrize("out", [".", "..", "/"])
@pytest.mark.parametrize("with_files", [False, True])
def test_out_naming_the_working_directory_or_a_parent_is_refused(
    out: str, with_files: bool, data_recipe: Path, transformer_ckpt: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """In this interpreter (the refusal comes before any work): a fresh one per case would
    spend its time importing torch."""
    cwd = tmp_path / "here"
    cwd.mkdir()
    if with_files:
        (cwd / "notes.txt").write_text("mine\n")
    monkeypatch.chdir(cwd)
    before = snapshot(tmp_path)
    for command in (["preprocess", str(data_recipe)], ["export", str(transformer_ckpt)]):
        done = CliRunner().invoke(app, [*command, "--out", out])
        assert_one_line_error(done.exit_code, done.stderr, "current directory or one of its")
        assert snapshot(tmp_path) == before


def test_out_naming_a_file_is_refused(
    data_recipe: Path, transformer_ckpt: Path, tmp_path: Path, run_nmt
) -> None:
    target = tmp_path / "data"
    target.write_text("a file\n")
    for command in (["preprocess", str(data_recipe)], ["export", str(transformer_ckpt)]):
        done = run_nmt([*command, "--out", str(target)])
        assert_one_line_error(done.returncode, done.stderr, "is not a directory")
        assert target.read_text() == "a file\n"
    done = run_nmt(["preprocess", str(data_recipe), "--out", str(target / "sub")])
    assert_one_line_error(done.returncode, done.stderr, "is a file, not a directory")


def test_out_in_a_read_only_directory_is_one_line(
    data_recipe: Path, transformer_ckpt: Path, tmp_path: Path, run_nmt
) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("mounting a read-only tmpfs is not permitted here")
    try:
        for out in (mount / "data", mount / "missing" / "data"):
            for command in (["preprocess", str(data_recipe)], ["export", str(transformer_ckpt)]):
                done = run_nmt([*command, "--out", str(out)])
                line = assert_one_line_error(done.returncode, done.stderr, "read-only")
                assert "free disk space" not in line
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)
