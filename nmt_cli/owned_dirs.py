"""Output directories replaced as a whole (`preprocess --out`, `export --out`), only when ours.

Users point `--out` at directories full of other work, often as root, so nothing here trusts
a name. A directory is ours when its marker file *parses* as ours (JSON with our format tag
and an int version) and every entry in it is a regular file the writer made: the marker lists
them under "files" (older markers: the `DirKind`'s fixed names). Anything else is refused with
one line before any work starts, and nothing is deleted.

The new output is built in a hidden sibling work dir and swapped in at the end, so a failure
never leaves half a directory nor destroys the earlier one. Sibling names carry the writer's
PID and a random token (`.NAME.nmt-work-PID-TOKEN`, `.NAME.nmt-old-PID-TOKEN`), and a work dir
holds an owner stamp from its creation. After a kill, the next run removes a leftover, or puts
back an earlier output caught mid-swap, only if its writer is dead and it carries our stamp or
is a complete output of ours; dated backups and other look-alikes are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmt_cli.errors import DataError
from nmt_cli.outputs import writer_alive

STAMP = ".nmt-owner.json"
_STAMP_FORMAT = "nmt_cli.work_dir"
_MARKER_LIMIT = 16 << 20  # bytes: our markers are kilobytes; a bigger file is not ours


@dataclass(frozen=True)
class DirKind:
    """What marks a directory as one a command wrote, and which entries it made."""

    noun: str  # for messages: "data dir", "export"
    marker: str  # the file whose content proves the directory is ours
    format: str  # the marker's "format" tag
    legacy_files: Callable[[dict[str, Any]], Collection[str]]  # for markers without "files"


def check_destination(out: Path, kind: DirKind) -> Path:
    """The resolved `out`, once it is known that it may be written or replaced; otherwise one
    line naming the fix. Also cleans up after killed writers of `out` (see the module doc)."""
    out = Path(out).resolve()
    if holds_working_directory(out):
        raise DataError(
            f"--out {out} is the current directory or one of its parents, which cannot be "
            "replaced; name a new directory inside it, e.g. --out ./out"
        )
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a directory; choose another --out")
    _check_writable(out.parent)
    try:
        _recover_killed_writers(out, kind)
        _check_replaceable(out, kind)
    except OSError as exc:
        raise DataError(
            f"cannot inspect {out} ({exc.strerror or type(exc).__name__}); check its "
            "permissions or choose another --out"
        ) from None
    return out


def holds_working_directory(path: Path) -> bool:
    """Whether `path` is the working directory or one of its parents: never to be replaced
    or moved. A deleted working directory has no ancestors to protect."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return False
    path = path.resolve()
    return path == cwd or path in cwd.parents


def made_files(work: Path, kind: DirKind) -> list[str]:
    """The entries of a finished work dir, for the marker's "files": what a re-run may replace."""
    return sorted({entry.name for entry in work.iterdir()} - {STAMP} | {kind.marker})


@contextlib.contextmanager
def replacing(out: Path, kind: DirKind) -> Iterator[Path]:
    """Yield a new work dir beside `out` (from `check_destination`). When the block succeeds
    the work dir replaces `out`, and an earlier output is deleted only after that; when it
    fails, the work dir is deleted and `out` is untouched."""
    pid, token = os.getpid(), secrets.token_hex(4)
    work = out.parent / f".{out.name}.nmt-work-{pid}-{token}"
    created = False
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir()  # exclusive: never a directory or link someone else put there
        created = True
        stamp = {"format": _STAMP_FORMAT, "pid": pid, "target": out.name, "token": token}
        (work / STAMP).write_text(json.dumps(stamp), encoding="utf-8")
    except OSError as exc:
        if created:
            shutil.rmtree(work, ignore_errors=True)
        raise DataError(
            f"cannot create a directory beside {out} ({exc.strerror or type(exc).__name__}); "
            "choose an --out in a writable directory"
        ) from None
    try:
        yield work
        (work / STAMP).unlink()  # the output is complete: recovery now knows it by its marker
        _swap(work, out, out.parent / f".{out.name}.nmt-old-{pid}-{token}", kind)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already after a successful swap


def _swap(work: Path, out: Path, old: Path, kind: DirKind) -> None:
    if not os.path.lexists(out):
        os.rename(work, out)
        return
    _check_replaceable(out, kind)  # again: files may have been added while we worked
    os.rename(out, old)
    try:
        os.rename(work, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_writable(parent: Path) -> None:
    """The nearest existing ancestor of `parent` must be a directory we can create entries in
    (missing directories below it are created later)."""
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"{existing} is a file, not a directory; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        reason = "is on a read-only file system" if read_only else "is not writable by you"
        raise DataError(f"{existing} {reason}; choose an --out in a writable directory")


def _check_replaceable(out: Path, kind: DirKind) -> None:
    """Refuse to replace anything but an empty directory or a complete output of ours."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    if _read_marker(out, kind) is None:
        raise DataError(
            f"{out} is not an nmt_cli {kind.noun} (no {kind.marker} with format "
            f"{kind.format!r}); refusing to replace it: choose another --out or remove it"
        )
    foreign = _foreign_entry(out, kind)
    if foreign is not None:
        raise DataError(
            f"{out} holds {foreign!r}, which nmt_cli did not write; refusing to replace it: "
            f"move it out of the {kind.noun} or choose another --out"
        )


def _read_marker(directory: Path, kind: DirKind) -> dict[str, Any] | None:
    """The marker's content if it is ours: a regular file (not a link), JSON, our format tag
    and a positive int version (a newer version is still ours to replace)."""
    marker = _read_json(directory / kind.marker)
    if marker is None or marker.get("format") != kind.format:
        return None
    version = marker.get("format_version")
    if type(version) is not int or version < 1:
        return None
    return marker


def _foreign_entry(directory: Path, kind: DirKind) -> str | None:
    """One entry of an output dir that its writer did not make (or that is not a regular
    file), or None. The marker must already be known to be ours."""
    marker = _read_marker(directory, kind) or {}
    listed = marker.get("files")
    if isinstance(listed, list) and all(isinstance(name, str) for name in listed):
        made = set(listed)
    else:
        made = set(kind.legacy_files(marker))
    made.add(kind.marker)
    for entry in os.scandir(directory):
        if entry.name not in made or not entry.is_file(follow_symlinks=False):
            return entry.name
    return None


def _complete_output(directory: Path, kind: DirKind) -> bool:
    return _read_marker(directory, kind) is not None and _foreign_entry(directory, kind) is None


def _recover_killed_writers(out: Path, kind: DirKind) -> None:
    """After a kill: delete the dead writer's work dir; put back (or, when `out` was already
    replaced, delete) the earlier output it had moved aside. Only names of our pattern whose
    PID no longer runs, and only when the stamp or the content proves them ours."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.nmt-(work|old)-(\d{{1,7}})-([0-9a-f]{{8}})")
    try:
        names = sorted(os.listdir(out.parent))
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        leftover = out.parent / name
        if match is None or not _plain_dir(leftover) or writer_alive(int(match[2])):
            continue
        role, pid, token = match[1], int(match[2]), match[3]
        if role == "work" and (
            _stamped(leftover, out.name, pid, token) or _complete_output(leftover, kind)
        ):
            shutil.rmtree(leftover, ignore_errors=True)
        elif role == "old" and _complete_output(leftover, kind):
            if os.path.lexists(out):
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                os.rename(leftover, out)


def _stamped(work: Path, target: str, pid: int, token: str) -> bool:
    stamp = {"format": _STAMP_FORMAT, "pid": pid, "target": target, "token": token}
    return _read_json(work / STAMP) == stamp


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small regular file's JSON object, or None (missing, a link, too big, not JSON)."""
    try:  # O_NOFOLLOW: a planted link is not ours; O_NONBLOCK: a FIFO must not hang us
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > _MARKER_LIMIT:
                return None
            content = json.loads(handle.read(_MARKER_LIMIT))
    except (OSError, ValueError, RecursionError):
        return None
    return content if isinstance(content, dict) else None


def _plain_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False
