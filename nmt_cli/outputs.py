"""Every file the tool writes goes through here, so that it only ever replaces what is its own.

The path a user names is written in one of two ways:
- A regular file (or a path where nothing exists yet) is written to a temporary file beside
  it, renamed over it only once complete: a failed or interrupted write keeps the previous
  file. A symlink is followed to its final target (the link stays a link); an existing file
  keeps its mode, and its owner when we run as root. A file with several hard links is not
  split from them: the complete temporary file is copied into the existing inode (only a
  failure during that last copy can leave it partial, and the message then says so).
  Checkpoints are the exception (`split_links`): a run's last.pt and best.pt are hard links
  of a step-N.pt by design (`link_output`), and writing one must not rewrite the others.
- Anything else (stdout, `-`, a character device such as /dev/null, a FIFO) is written
  through directly: renaming a file over /dev/null would destroy the device.

Temporary files are created exclusively (O_CREAT | O_EXCL | O_NOFOLLOW) under a random name,
`.NAME.nmt-tmp-PID-RANDOM`: another user who can write the directory cannot plant a symlink
we would follow, and clean-up after a kill (`remove_partial_writes`) deletes only names of
this scheme whose writer is dead. Outputs are checked before work starts (`check_output`,
`check_directory`), and every write failure, of any command, is one line from `write_error`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from nmt_cli.errors import ConfigError, OutputError

_TEMP_MARK = ".nmt-tmp-"
_TEMP_NAME = re.compile(r"\..*\.nmt-tmp-(\d+)-[0-9a-f]{8}", re.DOTALL)
_MAX_NAME_BYTES = 200  # of NAME in a temporary name; file names are limited to 255 bytes

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
_NO_DIRECTORY = {errno.ENOENT, errno.ENOTDIR}
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP}

INTACT = "the previous file is intact"
NOTHING_WRITTEN = "nothing was written"
_INCOMPLETE = "the output is incomplete"
_TEXT = {"encoding": "utf-8", "newline": "\n"}


def write_error(path: str | os.PathLike[str], exc: BaseException, kept: str) -> OutputError:
    """The one-line error of a failed write to `path`: the OS's reason, what was `kept`, and
    the fix that matches the error number (a missing directory is not a full disk)."""
    code = exc.errno if isinstance(exc, OSError) else None
    reason = (exc.strerror if isinstance(exc, OSError) else None) or (
        "the write failed part-way, as on a full disk"
    )
    if code in _NOT_WRITABLE:
        advice = "the location is not writable; choose another path"
    elif code in _NO_DIRECTORY:
        advice = "its directory is missing or not a directory; create it or choose another path"
    elif code == errno.EISDIR:
        advice = "it is a directory; name a file to write"
    elif code == errno.EPIPE:
        advice = "the program reading it exited first (e.g. head); read the whole output"
    elif code in _DISK_FULL or code is None:
        advice = "free disk space or write to another path"
    else:
        advice = "choose another path"
    return OutputError(f"could not write {path} ({reason}): {kept}; {advice}")


class Output:
    """The open output of an `open_output` block. A failed write raises the one-line
    `OutputError` and is remembered, because a caller such as `torch.save` turns it into its
    own RuntimeError; `open_output` then reports the remembered failure instead."""

    def __init__(self, handle: IO[Any], name: str, kept: str, *, live: bool) -> None:
        self.handle, self.name, self.kept = handle, name, kept
        self.live = live  # written through: a reader may be waiting for each line
        self.failure: OutputError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            raise self._failed(exc) from None

    def writelines(self, lines: Iterable[Any]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> OutputError:
        if self.failure is None:
            self.failure = write_error(self.name, exc, self.kept)
            if self.name == "stdout":
                _silence_stdout()
        return self.failure


@contextlib.contextmanager
def open_output(
    path: str | os.PathLike[str] | None, *, binary: bool = False, split_links: bool = False
) -> Iterator[Output]:
    """Yield an `Output` for `path` (None or `-`: stdout), kept only if the block succeeds.

    `split_links`: a hard-linked target gets a new inode instead of new contents. A run
    directory's checkpoints share inodes by design (`link_output`), and writing last.pt into
    its inode would rewrite the step-N.pt it is a link of.
    """
    if path is None or str(path) == "-":
        if sys.stdout is None:
            raise OutputError("stdout is closed; redirect it to a file or pass an output path")
        stream = sys.stdout.buffer if binary else sys.stdout
        yield from _reporting(Output(stream, "stdout", _INCOMPLETE, live=True))
        return
    target = Path(os.path.realpath(path))
    existing = _stat_or_none(target)
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        yield from _write_through(path, target, binary)
        return
    kept = NOTHING_WRITTEN if existing is None else INTACT
    hardlinked = existing is not None and existing.st_nlink > 1 and not split_links
    try:
        fd, tmp = _create_temp(target.parent, target.name)
    except OSError as exc:
        raise write_error(path, exc, kept) from None
    try:
        try:
            if existing is not None:
                _keep_owner_and_mode(fd, existing)
            handle = os.fdopen(fd, "wb" if binary else "w", **({} if binary else _TEXT))
        except OSError as exc:
            os.close(fd)
            raise write_error(path, exc, kept) from None
        try:
            yield from _reporting(Output(handle, str(path), kept, live=False))
            _close(handle, path, kept)  # the last buffered bytes may not fit
            try:
                if hardlinked:
                    _copy_into(tmp, target)
                else:
                    os.replace(tmp, target)
            except OSError as exc:
                raise write_error(
                    path, exc, f"{path} is incomplete" if hardlinked else kept
                ) from None
        finally:
            with contextlib.suppress(OSError):
                handle.close()  # after a failure: the write error is what is reported
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_through(path: str | os.PathLike[str], target: Path, binary: bool) -> Iterator[Output]:
    """A device, FIFO or socket: open it for writing as it is (no temp file, no rename)."""
    try:
        handle = open(target, "wb" if binary else "w", **({} if binary else _TEXT))  # noqa: SIM115
    except OSError as exc:
        raise write_error(path, exc, NOTHING_WRITTEN) from None
    try:
        yield from _reporting(Output(handle, str(path), _INCOMPLETE, live=True))
        _close(handle, path, _INCOMPLETE)
    finally:
        with contextlib.suppress(OSError):
            handle.close()


def _reporting(out: Output) -> Iterator[Output]:
    """Yield `out`, then flush it; report a write failure that the block's code caught and
    replaced with its own error (torch.save does)."""
    try:
        yield out
        out.flush()
    except Exception:
        if out.failure is not None:
            raise out.failure from None
        raise


def _close(handle: IO[Any], path: str | os.PathLike[str], kept: str) -> None:
    try:
        handle.close()
    except OSError as exc:
        raise write_error(path, exc, kept) from None


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null: Python flushes stdout again at exit, and the failure would
    print an 'Exception ignored' message after the one-line error."""
    try:
        stdout_fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return  # not a real file descriptor (a test harness's capture): nothing to silence
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stdout_fd)
    os.close(devnull)


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _create_temp(directory: Path, name: str) -> tuple[int, Path]:
    """An exclusive new file `.NAME.nmt-tmp-PID-RANDOM` in `directory`: never an existing
    name, never through a symlink. Its mode is 0666 less the umask, as for any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        tmp = _temp_path(directory, name)
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue  # a 1-in-4-billion clash, or a name planted on purpose: draw again


def _temp_path(directory: Path, name: str) -> Path:
    """A fresh name of our temp scheme for `name` in `directory`: `.NAME.nmt-tmp-PID-RANDOM`."""
    return directory / f"{_temp_prefix(name)}{os.getpid()}-{secrets.token_hex(4)}"


def _temp_prefix(name: str) -> str:
    """`.NAME.nmt-tmp-`, NAME cut short enough for the whole to be a valid file name."""
    return f".{os.fsencode(name)[:_MAX_NAME_BYTES].decode('utf-8', 'ignore')}{_TEMP_MARK}"


def _keep_owner_and_mode(fd: int, existing: os.stat_result) -> None:
    """Give the temp file the target's owner (as root) and mode before any data goes in."""
    if os.geteuid() == 0:
        os.fchown(fd, existing.st_uid, existing.st_gid)
    os.fchmod(fd, stat.S_IMODE(existing.st_mode))


def _copy_into(tmp: Path, target: Path) -> None:
    """Rewrite `target`'s inode with the complete temp file, so its hard links stay one file."""
    with open(tmp, "rb") as source:
        fd = os.open(target, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as dest:
            shutil.copyfileobj(source, dest)
            dest.truncate()


def link_output(source: Path, target: Path) -> None:
    """Make `target` another name of the complete file `source`: a hard link (no second
    write of the bytes), or a copy where the filesystem has none. One rename puts it in
    place, so `target` is at every moment either its old file or the new one."""
    kept = INTACT if _stat_or_none(target) is not None else NOTHING_WRITTEN
    while True:
        tmp = _temp_path(target.parent, target.name)
        try:
            os.link(source, tmp)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise write_error(target, exc, kept) from None
            with (
                open(source, "rb") as data,
                open_output(target, binary=True, split_links=True) as out,
            ):
                shutil.copyfileobj(data, out)
            return
    try:
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise write_error(target, exc, kept) from None


def check_output(
    path: str | os.PathLike[str] | None,
    *,
    inputs: Iterable[str | os.PathLike[str] | int | None] = (),
    option: str,
) -> None:
    """Refuse, before any work starts, an output that cannot be written or would destroy an
    input: the same file (after symlinks) as any of `inputs` (paths, or open file
    descriptors such as stdin's), a directory, or a file whose directory is missing or not
    writable. Devices and FIFOs are written through and need no check here."""
    if path is None or str(path) == "-":
        return
    target = Path(os.path.realpath(path))
    try:
        existing = _stat_or_none(target)
    except OSError as exc:
        raise write_error(path, exc, NOTHING_WRITTEN) from None
    if existing is not None:
        if stat.S_ISDIR(existing.st_mode):
            raise OutputError(f"{option} {path} is a directory; name a file to write")
        if not stat.S_ISREG(existing.st_mode):
            return
        for source in inputs:
            if source is not None and _same_file(existing, source):
                shown = "stdin" if isinstance(source, int) else source
                raise ConfigError(
                    f"{option} {path} is one of the inputs ({shown}); write to a new file"
                )
    kept = NOTHING_WRITTEN if existing is None else INTACT
    try:
        if existing is not None and existing.st_nlink > 1:
            os.close(os.open(target, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
        _probe(target.parent)
    except OSError as exc:
        raise write_error(path, exc, kept) from None


def check_directory(path: str | os.PathLike[str], option: str) -> None:
    """Refuse, before any work starts, an output directory that could not be created or
    written: a file in its place, or a nearest existing ancestor that is a file or is not
    writable. Nothing is created: a command that fails later leaves no empty directory."""
    path = Path(path)
    for existing in (path, *path.parents):
        try:
            mode = existing.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise write_error(path, exc, NOTHING_WRITTEN) from None
        if existing == path and not stat.S_ISDIR(mode):
            raise OutputError(f"{option} {path} exists and is not a directory; name a directory")
        try:
            if not stat.S_ISDIR(mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            _probe(existing)
        except OSError as exc:
            raise write_error(path, exc, NOTHING_WRITTEN) from None
        return


def prepare_directory(path: str | os.PathLike[str], option: str) -> None:
    """`check_directory`, then create `path` (and its parents)."""
    check_directory(path, option)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc, NOTHING_WRITTEN) from None


def _probe(directory: Path) -> None:
    """Create and remove a temporary file in `directory`: the one reliable writability test."""
    fd, tmp = _create_temp(directory, "probe")
    os.close(fd)
    os.unlink(tmp)


def _same_file(existing: os.stat_result, source: str | os.PathLike[str] | int) -> bool:
    try:
        other = os.fstat(source) if isinstance(source, int) else os.stat(source)
    except OSError:
        return False  # a missing input is reported when it is read
    return (other.st_dev, other.st_ino) == (existing.st_dev, existing.st_ino)


def remove_partial_writes(directory: str | os.PathLike[str]) -> None:
    """Delete the temporary files of writers in `directory` that were killed mid-write
    (kill -9, power loss): only regular files named by our scheme, whose PID is gone."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry)
        if match is None or writer_alive(int(match.group(1))):
            continue
        path = Path(directory, entry)
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)


def writer_alive(pid: int) -> bool:
    """Whether the process that left a temporary name may still be writing it: recovery after
    a kill (here and in `owned_dirs`) touches only what a dead writer left."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process; an absurd number is not ours to judge
    return True
