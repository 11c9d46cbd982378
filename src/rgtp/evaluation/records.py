"""Append-only, resumable result logs (JSON lines), one file per process.

Every finished unit of work (a video sequence, a clip) is one line, flushed and synced as soon as it is done, so an
interrupted evaluation loses at most the unit in progress. On restart the log reads back what is finished; the
header written at the top of each file (preset, weights, data...) must match the new run, so results of different
runs are never mixed. Files are named per process rank; reading merges all of them, so a run may resume with a
different number of processes.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

__all__ = ["ResultLog", "ResumeError", "atomic_write_text", "environment", "plain", "write_results"]

logger = logging.getLogger(__name__)

_KEY = re.compile(r'^\{"key": ("(?:[^"\\]|\\.)*")')  # records are written with "key" first


class ResumeError(ValueError):
    """An output directory that holds results of a different run."""


class ResultLog:
    """Results keyed by unit name in ``directory/part-<rank>.jsonl``.

    Args:
        directory: where the part files live (created if needed).
        header: what identifies the run; compared with the header of every existing part file.
        rank: this process's rank (its own part file).
    """

    def __init__(self, directory: str | Path, header: dict[str, Any], rank: int = 0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.header = plain(header)  # normalised as it will read back
        self.path = self.directory / f"part-{rank:03d}.jsonl"
        for part in self._parts():
            self._check_header(part)
        self._repair_tail()
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._write({"header": self.header})

    def _parts(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.jsonl"))

    def _check_header(self, part: Path) -> None:
        with open(part) as f:
            first = f.readline()
        if not first.strip():
            return
        try:
            found = json.loads(first).get("header")
        except json.JSONDecodeError:
            found = None
        if found != self.header:
            diff = sorted(k for k in set(self.header) | set(found or {}) if (found or {}).get(k) != self.header.get(k))
            raise ResumeError(
                f"{part} holds results of a different run (differs in: {', '.join(diff) or 'format'}); "
                f"use another output directory or delete {self.directory}"
            )

    def keys(self) -> set[str]:
        """Names of the finished units (reads only the start of each line)."""
        return {key for key, _ in self._lines()}

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(unit name, record) of every finished unit, one at a time (the logs of a whole split can be large)."""
        for key, line in self._lines():
            yield key, json.loads(line)

    def done(self) -> dict[str, dict[str, Any]]:
        """Every finished record of every part file, keyed by unit name."""
        return dict(self.records())

    def _lines(self) -> Iterator[tuple[str, str]]:
        for part in self._parts():
            with open(part) as f:
                next(f, None)  # header
                for n, line in enumerate(f, start=2):
                    if not line.endswith("\n"):
                        logger.warning("%s:%d: ignoring a truncated last line (interrupted write)", part, n)
                        continue
                    match = _KEY.match(line)
                    key = json.loads(match.group(1)) if match else json.loads(line)["key"]
                    yield key, line

    def append(self, key: str, record: dict[str, Any]) -> None:
        """Write one finished unit (durably)."""
        self._write({"key": key, **record})

    def _write(self, obj: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _repair_tail(self) -> None:
        """Cut a partial last line left by an interrupted write, so appends start on a fresh line."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            # scan back (in blocks) for the last complete line
            end = size
            while end > 0:
                start = max(0, end - 65536)
                f.seek(start)
                block = f.read(end - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    f.truncate(start + cut + 1)
                    return
                end = start
            f.truncate(0)


class _Result(Protocol):  # what write_results needs
    preset: str

    def to_dict(self) -> dict[str, Any]: ...


def write_results(path: Path, results: list[_Result]) -> None:
    """Write ``results`` (objects with ``preset`` and ``to_dict()``) to ``path`` atomically, keeping the entries of
    other presets from earlier runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = {r.preset for r in results}
    old = json.loads(path.read_text()) if path.is_file() else []
    merged = [r for r in old if r.get("preset") not in new] + [r.to_dict() for r in results]
    atomic_write_text(path, json.dumps(merged, indent=2) + "\n")


def plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists): for comparing with what a file holds."""
    return json.loads(json.dumps(obj))


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (a hidden temporary file, then a rename): readers and an
    interrupted run never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "python": platform.python_version(),
    }
