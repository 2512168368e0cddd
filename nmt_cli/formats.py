"""The format tag and version that every file nmt_cli writes carries, checked one way on reading.

A checkpoint, a data dir's `manifest.json` and an export's `nmt_cli.json` each name what wrote
them (`format`) and the layout's revision (`format_version`, an integer raised when the layout
changes). A reader refuses a foreign tag, a missing or malformed version and a version newer
than it knows, each in one line that names the file and the fix. The module imports no torch,
so the shard reader and the CTranslate2 engine can use it without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nmt_cli.errors import NMTError, show


@dataclass(frozen=True)
class FileFormat:
    """One of our file formats: its tag, the newest version this nmt_cli reads, and how its
    messages name a file of it and the way to make a good one."""

    tag: str
    version: int
    noun: str  # "checkpoint", "data dir", ...
    remedy: str  # what to do about a foreign or malformed file
    error: type[NMTError]

    def check(self, where: object, document: Any) -> int:
        """`document`'s format version, once its tag is ours and its version one we read."""
        tag = document.get("format") if isinstance(document, dict) else None
        if tag != self.tag:
            found = f"no {self.tag!r} tag" if tag is None else f"{show(tag)} is not {self.tag!r}"
            raise self.error(f"{where} is not an nmt_cli {self.noun} ({found}); {self.remedy}")
        version = document.get("format_version")
        if type(version) is not int or not 1 <= version < 2**31:  # bool is no version either
            raise self.error(
                f"{where} has no valid {self.noun} format version (an integer from 1 to "
                f"{self.version}); {self.remedy}"
            )
        if version > self.version:
            raise self.error(
                f"{where} has {self.noun} format version {version}, newer than this nmt_cli "
                f"reads ({self.version}); upgrade nmt_cli"
            )
        return version
