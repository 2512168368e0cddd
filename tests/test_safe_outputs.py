"""Every file `nmt` writes is its own: outputs never replace a device, a link or an input,
temporary files cannot be hijacked, unwritable outputs are refused before any work, every
write failure is one line that keeps the previous file, and inputs are read in bounded time
and memory. Each test runs the CLI on real files, as a user (or an attacker) would."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_bad_input import assert_last_line_error, assert_one_line_error

from nmt_cli.errors import DataError
from nmt_cli.outputs import remove_partial_writes
from nmt_cli.streams import MAX_LINE_BYTES, read_line_chunks

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, mount)")


def nmt(
    args: list[str | Path],
    *,
    stdin: bytes | None = b"",
    stdout: int | object = subprocess.PIPE,
    file_size_limit: int | None = None,
    close_stdin: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """`nmt ARGS` in a fresh interpreter; optionally with files limited to `file_size_limit`
    bytes (writes past it fail with EFBIG, as on a full disk) or with fd 0 closed."""

    def setup() -> None:
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
        if close_stdin:
            os.close(0)

    done = subprocess.run(
        [sys.executable, "-m", "nmt_cli.cli", *map(str, args)],
        input=None if close_stdin else stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        preexec_fn=setup,
        timeout=timeout,
    )
    done.stderr = done.stderr.decode("utf-8", "replace")
    if isinstance(done.stdout, bytes):
        done.stdout = done.stdout.decode("utf-8", "replace")
    return done


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if ".nmt-tmp-" in p.name]


@pytest.fixture
def sources(trained, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the held-out source and reference files (one sentence per line)."""
    src, ref = tmp_path / "test.src", tmp_path / "test.ref"
    shutil.copy(trained.corpus.path("test", "src"), src)
    shutil.copy(trained.corpus.path("test", "tgt"), ref)
    return src, ref


@pytest.fixture
def steps(trained) -> list[Path]:
    return sorted(trained.run_dir.glob("step-*.pt"))


def translate(checkpoint: Path, src: Path, output: Path | str, *extra: str | Path):
    return nmt(["translate", checkpoint, "--input", src, "--output", output, "--device", "cpu",
                "--beam", "1", *extra])  # fmt: skip


def evaluate(checkpoint: Path, src: Path, ref: Path, save_hyp: Path | str, **kwargs):
    return nmt(["eval", checkpoint, "--src", src, "--ref", ref, "--save-hyp", save_hyp,
                "--device", "cpu", "--beam", "1"], **kwargs)  # fmt: skip


def average(steps: list[Path], out: Path | str, **kwargs):
    return nmt(["average", *steps, "--out", out], **kwargs)


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A fresh tmpfs at `path` (`ro` for a read-only one); skips the test where mounting is
    not permitted."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


# --- what is at the output path --------------------------------------------------------------


@root_only
def test_a_character_device_output_stays_a_device(checkpoint, sources, steps, tmp_path) -> None:
    """As root, `--output /dev/null` used to become a regular file; a device is written through."""
    src, ref = sources
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for done in (translate(checkpoint, src, null), evaluate(checkpoint, src, ref, null),
                 average(steps, null)):  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert stat.S_ISCHR(null.lstat().st_mode)
    assert no_temp_files(tmp_path)


def test_dash_writes_to_stdout(checkpoint, sources, tmp_path) -> None:
    src, _ = sources
    done = translate(checkpoint, src, "-")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(src.read_text().splitlines())
    assert not (tmp_path / "-").exists()


def test_a_symlinked_output_is_written_through(checkpoint, sources, steps, tmp_path) -> None:
    src, _ = sources
    real, link = tmp_path / "real.txt", tmp_path / "link.txt"
    real.write_text("old\n")
    link.symlink_to(real.name)
    assert translate(checkpoint, src, link).returncode == 0
    assert link.is_symlink() and len(real.read_text().splitlines()) == 50
    real_pt, link_pt = tmp_path / "real.pt", tmp_path / "link.pt"
    link_pt.symlink_to(real_pt)  # dangling: the average is written where it points
    assert average(steps, link_pt).returncode == 0
    assert link_pt.is_symlink() and real_pt.stat().st_size > 0
    assert no_temp_files(tmp_path)


def test_an_existing_outputs_mode_is_kept(checkpoint, sources, steps, tmp_path) -> None:
    src, _ = sources
    out, avg = tmp_path / "out.txt", tmp_path / "avg.pt"
    out.write_text("old\n")
    avg.write_bytes(b"old")
    out.chmod(0o600)
    avg.chmod(0o640)
    assert translate(checkpoint, src, out).returncode == 0
    assert average(steps, avg).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_text() != "old\n"
    assert stat.S_IMODE(avg.stat().st_mode) == 0o640 and avg.read_bytes() != b"old"


def test_a_hardlinked_output_keeps_its_links(checkpoint, sources, tmp_path) -> None:
    src, _ = sources
    out, other = tmp_path / "out.txt", tmp_path / "other-name.txt"
    out.write_text("old\n")
    os.link(out, other)
    assert translate(checkpoint, src, out).returncode == 0
    assert out.stat().st_nlink == 2 and out.stat().st_ino == other.stat().st_ino
    assert other.read_text() == out.read_text() and len(out.read_text().splitlines()) == 50
    assert no_temp_files(tmp_path)


# --- an output that is an input ---------------------------------------------------------------


def test_translate_refuses_to_overwrite_its_inputs(checkpoint, sources, tmp_path) -> None:
    src, _ = sources
    ckpt = tmp_path / "model.pt"
    shutil.copy(checkpoint, ckpt)
    link = tmp_path / "also-the-input.txt"
    link.symlink_to(src)
    originals = {ckpt: ckpt.read_bytes(), src: src.read_bytes()}
    for output, extra in ((ckpt, ()), (src, ()), (link, ()), (src, ("--prefix", src))):
        done = translate(ckpt, src, output, *extra)
        assert_one_line_error(done.returncode, done.stderr, "is one of the inputs", str(output))
    with src.open("rb") as stdin:  # `nmt translate CKPT --output F < F`
        done = subprocess.run([sys.executable, "-m", "nmt_cli.cli", "translate", str(ckpt),
                               "--output", str(src), "--device", "cpu"], stdin=stdin,
                              capture_output=True, text=True)  # fmt: skip
    assert_one_line_error(done.returncode, done.stderr, "is one of the inputs (stdin)")
    assert {path: path.read_bytes() for path in originals} == originals


def test_eval_save_hyp_refuses_its_inputs(checkpoint, sources, tmp_path) -> None:
    src, ref = sources
    originals = {src: src.read_bytes(), ref: ref.read_bytes()}
    for target in (ref, src):
        done = evaluate(checkpoint, src, ref, target)
        assert_one_line_error(done.returncode, done.stderr, "--save-hyp", "is one of the inputs")
    assert {path: path.read_bytes() for path in originals} == originals


# --- the symlink race -------------------------------------------------------------------------


def test_planted_symlinks_at_temporary_names_are_never_followed(
    checkpoint, sources, steps, make_recipe, recipe_file, reverse_data, tmp_path
) -> None:
    """Another user who can write the output directory plants symlinks at every name the old
    scheme (`.NAME.tmp-PID`) would use, and at names of the new scheme; a root-owned 0600
    file they point at must stay as it was, and the links stay where they were."""
    src, _ = sources
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    shared, run = tmp_path / "shared", tmp_path / "run"
    shared.mkdir()
    run.mkdir()
    probe = subprocess.Popen(["true"])
    probe.wait()  # the next processes get ids just after this one
    names = [(shared, "out.txt"), (shared, "avg.pt"), (run, "last.pt"), (run, "best.pt"),
             (run, "step-2.pt"), (run, "metrics.jsonl")]  # fmt: skip
    planted = [
        directory / f".{name}.tmp-{pid}"
        for directory, name in names
        for pid in range(probe.pid, probe.pid + 1500)
    ]
    planted += [directory / f".{name}.nmt-tmp-{pid}-0123abcd"
                for directory, name in names for pid in (1, probe.pid)]  # fmt: skip
    for link in planted:
        link.symlink_to(victim)

    assert translate(checkpoint, src, shared / "out.txt").returncode == 0
    assert average(steps, shared / "avg.pt").returncode == 0
    recipe = recipe_file(make_recipe(train={"max_steps": 2, "valid_every": 2}))
    done = nmt(["train", recipe, "--data", reverse_data, "--out", run, "--device", "cpu"])
    assert done.returncode == 0, done.stderr

    assert victim.read_text() == "secret\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert all(link.is_symlink() for link in planted)
    assert len((shared / "out.txt").read_text().splitlines()) == 50
    assert (run / "last.pt").is_file() and not (run / "last.pt").is_symlink()


def test_clean_up_after_a_kill_removes_only_our_dead_writers_files(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    ours_dead = tmp_path / f".last.pt.nmt-tmp-{dead.pid}-0123abcd"
    ours_dead.write_bytes(b"half")
    kept = [
        tmp_path / f".last.pt.nmt-tmp-{os.getpid()}-0123abcd",  # a writer that still runs
        tmp_path / f".best.pt.nmt-tmp-{dead.pid}-456789ab",  # a symlink: never followed
        tmp_path / f".step-1.pt.nmt-tmp-{dead.pid}-cdef0123",  # a directory
        tmp_path / f".last.pt.tmp-{dead.pid}",  # another tool's (or an old) naming
        tmp_path / ".backup.nmt-tmp-2024",
        tmp_path / "notes.txt",
    ]
    kept[0].write_bytes(b"busy")
    kept[1].symlink_to(tmp_path / "notes.txt")
    kept[2].mkdir()
    for path in kept[3:]:
        path.write_text("user data")
    remove_partial_writes(tmp_path)
    assert not ours_dead.exists()
    assert all(path.is_symlink() or path.exists() for path in kept)
    assert (tmp_path / "notes.txt").read_text() == "user data"


# --- unwritable outputs, refused before any work ----------------------------------------------


def _file_outputs(checkpoint, sources, steps) -> dict[str, Callable[[Path], object]]:
    src, ref = sources
    return {
        "--output": lambda out: translate(checkpoint, src, out),
        "--save-hyp": lambda out: evaluate(checkpoint, src, ref, out),
        "--out": lambda out: average(steps, out),
    }


def _dir_outputs(checkpoint, sources, train_args) -> dict[str, Callable[[Path], object]]:
    src, _ = sources
    return {
        "--attention-plot": lambda out: translate(checkpoint, src, "-", "--attention-plot", out),
        "--out": lambda out: nmt([*train_args, "--out", out]),
    }


@pytest.fixture
def train_args(make_recipe, recipe_file, reverse_data) -> list:
    recipe = recipe_file(make_recipe(train={"max_steps": 2, "valid_every": 2}))
    return ["train", recipe, "--data", reverse_data, "--device", "cpu"]


def test_a_missing_directory_or_a_file_in_its_place(
    checkpoint, sources, steps, train_args, tmp_path
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("user data\n")
    for option, run in _file_outputs(checkpoint, sources, steps).items():
        for out in (tmp_path / "missing" / "x", a_file / "x"):
            done = run(out)
            assert_one_line_error(done.returncode, done.stderr, str(out), "nothing was written",
                                  "directory is missing or not a directory; create it")  # fmt: skip
        done = run(tmp_path)
        assert_one_line_error(done.returncode, done.stderr, option, "is a directory")
    for option, run in _dir_outputs(checkpoint, sources, train_args).items():
        done = run(a_file)
        assert_one_line_error(done.returncode, done.stderr, option, "is not a directory")
        done = run(a_file / "x")
        assert_one_line_error(done.returncode, done.stderr, "not a directory; create it")
    assert a_file.read_text() == "user data\n"
    assert not (tmp_path / "missing").exists() and no_temp_files(tmp_path)


@root_only
def test_a_read_only_directory(checkpoint, sources, steps, train_args, tmp_path) -> None:
    """As root `os.access` says every directory is writable; a read-only mount is not."""
    with tmpfs(tmp_path / "ro", "size=1m,ro") as read_only:
        for run in _file_outputs(checkpoint, sources, steps).values():
            done = run(read_only / "x")
            assert_one_line_error(done.returncode, done.stderr, str(read_only / "x"),
                                  "Read-only file system", "not writable")  # fmt: skip
        for run in _dir_outputs(checkpoint, sources, train_args).values():
            for out in (read_only, read_only / "new"):
                done = run(out)
                assert_one_line_error(done.returncode, done.stderr, str(out),
                                      "Read-only file system", "not writable")  # fmt: skip


# --- a full disk, on every write path ---------------------------------------------------------

FULL = ("free disk space",)


def test_a_full_disk_under_translate_output_keeps_the_previous_file(
    checkpoint, sources, tmp_path
) -> None:
    src, _ = sources
    out = tmp_path / "out.txt"
    out.write_text("good\n")
    done = nmt(["translate", checkpoint, "--input", src, "--output", out, "--device", "cpu"],
               file_size_limit=100)  # fmt: skip
    assert_one_line_error(done.returncode, done.stderr, str(out), "the previous file is intact",
                          *FULL)  # fmt: skip
    assert out.read_text() == "good\n" and no_temp_files(tmp_path)


@pytest.mark.parametrize("target", ["file", "/dev/full"])
def test_a_full_disk_under_translate_stdout(checkpoint, sources, tmp_path, target) -> None:
    """`nmt translate > file`: the failure of stdout itself, with no 'Exception ignored'."""
    src, _ = sources
    path = tmp_path / "stdout.txt" if target == "file" else Path(target)
    with path.open("wb") as stdout:
        done = nmt(["translate", checkpoint, "--input", src, "--device", "cpu"], stdout=stdout,
                   file_size_limit=100)  # fmt: skip
    assert_one_line_error(done.returncode, done.stderr, "could not write stdout", *FULL)


def test_a_full_disk_under_eval_save_hyp(checkpoint, sources, tmp_path) -> None:
    src, ref = sources
    saved = tmp_path / "hyp.txt"
    saved.write_text("good\n")
    done = evaluate(checkpoint, src, ref, saved, file_size_limit=100)
    assert_last_line_error(done.returncode, done.stderr, str(saved), "previous file is intact",
                           *FULL)  # fmt: skip
    assert saved.read_text() == "good\n" and no_temp_files(tmp_path)


def test_a_full_disk_under_average_out(steps, tmp_path) -> None:
    avg = tmp_path / "avg.pt"
    shutil.copy(steps[0], avg)
    good = avg.read_bytes()
    done = average(steps, avg, file_size_limit=len(good) // 2)
    assert_one_line_error(done.returncode, done.stderr, str(avg), "previous file is intact", *FULL)
    assert avg.read_bytes() == good and no_temp_files(tmp_path)


def test_a_full_disk_under_the_metrics_log_keeps_the_checkpoints(
    make_recipe, recipe_file, reverse_data, tmp_path
) -> None:
    """The log line that no longer fits ends the run with one line; last.pt stays as saved."""
    run = tmp_path / "run"
    recipe = recipe_file(make_recipe(train={"max_steps": 2, "valid_every": 2, "log_every": 1}))
    args = ["train", recipe, "--data", reverse_data, "--out", run, "--device", "cpu"]
    assert nmt(args).returncode == 0
    good = (run / "last.pt").read_bytes()
    limit = 4 * len(good)  # checkpoints fit; the log, filled up to the limit, does not
    metrics = run / "metrics.jsonl"
    with metrics.open("a") as log:
        padding = limit - metrics.stat().st_size - len('{"step": 1, "pad": ""}\n')
        log.write(json.dumps({"step": 1, "pad": " " * padding}) + "\n")  # a step it keeps
    done = nmt([*args, "--resume", run / "last.pt", "--set", "train.max_steps=4"],
               file_size_limit=limit)  # fmt: skip
    assert_last_line_error(done.returncode, done.stderr, "metrics.jsonl",
                           "the checkpoints saved so far are intact", *FULL)  # fmt: skip
    assert (run / "last.pt").read_bytes() == good and no_temp_files(run)


# --- bounded input ----------------------------------------------------------------------------


def test_an_endless_input_line_is_one_line_quickly(checkpoint) -> None:
    started = time.monotonic()
    done = nmt(["translate", checkpoint, "--input", "/dev/zero", "--device", "cpu"], timeout=120)
    assert_one_line_error(done.returncode, done.stderr, "/dev/zero: line 1 is longer than")
    assert time.monotonic() - started < 120


def test_a_long_newline_free_input_is_read_in_linear_time(checkpoint, tmp_path) -> None:
    """40 MB without a newline took 55 s and 2.9 GB when each read copied the whole line."""
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (40 << 20))
    done = nmt(["translate", checkpoint, "--input", big, "--device", "cpu"], timeout=120)
    assert_one_line_error(done.returncode, done.stderr, f"{big}: line 1 is longer than 1 MiB")


def test_lines_up_to_the_limit_are_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    longest = b"b" * MAX_LINE_BYTES
    path.write_bytes(b"x\n" + longest + b"\n" + longest)  # the last line has no newline
    with path.open("rb") as handle:
        lines = [line for chunk in read_line_chunks(handle, 1000, "t") for line in chunk]
    assert [len(line) for line in lines] == [1, MAX_LINE_BYTES, MAX_LINE_BYTES]
    path.write_bytes(b"x\n" * 3 + longest + b"b\n")
    with path.open("rb") as handle, pytest.raises(DataError, match="t: line 4 is longer"):
        list(read_line_chunks(handle, 1000, "t"))


def test_a_closed_stdin_is_one_line(checkpoint) -> None:
    done = nmt(["translate", checkpoint, "--device", "cpu"], close_stdin=True)
    assert_one_line_error(done.returncode, done.stderr, "stdin is closed", "--input FILE")
