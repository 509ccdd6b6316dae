"""Metrics from ``*.prom`` files in a folder, as node_exporter's textfile collector reads them.

Each file is parsed only when it changed (inode, size or modification time); between changes
the parsed figures are reused, so a steady folder costs one ``scandir`` and a ``stat`` per
file and round. Bounds: :data:`MAX_FILES` files (in name order), :data:`MAX_FILE_BYTES` per
file (a larger file is skipped whole), ``max_keys`` keys in all. A bad line is logged (file
and line, at most once a minute per file) and skipped; the rest of the file is used.
Keys: ``textfile.<name>[labels]`` (see :mod:`promtext`) and ``textfile.status.{files,errors}``.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.collectors.promtext import parse_exposition, prom_metrics
from edgefleet.common.logs import RateLimitedLog, kv

log = logging.getLogger(__name__)

MAX_FILES = 100
MAX_FILE_BYTES = 1 << 20
PREFIX = "textfile"
Stamp = tuple[int, int, int]  # inode, size, mtime_ns


@dataclass(frozen=True, slots=True)
class FileFigures:
    """One file's metrics and its problems as ``(line, reason)`` (line 0: the whole file)."""

    metrics: dict[str, float]
    problems: list[tuple[int, str]]


def list_prom_files(folder: Path) -> list[tuple[str, Stamp]]:
    """Regular ``*.prom`` files of ``folder`` (links followed), in name order, with stamps
    (paths as strings: a ``Path`` per file and round cost more than the listing)."""
    found: list[tuple[str, Stamp]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(".prom") or entry.name.startswith("."):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue  # removed meanwhile
            found.append((entry.path, (st.st_ino, st.st_size, st.st_mtime_ns)))
    return sorted(found)


def read_limited(path: Path, max_bytes: int) -> str:
    """The file's text (bad UTF-8 replaced); ``ValueError`` when it is over ``max_bytes``.

    Opened without blocking and checked to be a regular file, so a FIFO swapped in after
    the folder was listed cannot hang the agent.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file; skipped")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes; skipped")
    return data.decode("utf-8", "replace")


def file_figures(text: str, max_keys: int) -> FileFigures:
    """Parse one file's text into its metrics and problems."""
    parsed = parse_exposition(text)
    metrics, refused = prom_metrics(parsed.samples, PREFIX, max_keys)
    return FileFigures(metrics, sorted(parsed.bad + refused))


_SETTLED_S = 2.0


def _restat(listed: list[tuple[str, Stamp]]) -> list[tuple[str, Stamp]] | None:
    """The same files with fresh stamps; None when one is gone or no longer a regular file."""
    out: list[tuple[str, Stamp]] = []
    for path, _ in listed:
        try:
            st = os.stat(path)  # noqa: PTH116 - no Path object per file and round
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        out.append((path, (st.st_ino, st.st_size, st.st_mtime_ns)))
    return out


class TextfileCollector:
    """``textfile.<name>[labels]`` from the folder's ``*.prom`` files; nothing without a folder."""

    name = "textfile"

    def __init__(
        self,
        *,
        folder: Path | None,
        max_keys: int = 200,
        max_files: int = MAX_FILES,
        max_file_bytes: int = MAX_FILE_BYTES,
        list_files: Callable[[Path], Sequence[tuple[str, Stamp]]] = list_prom_files,
        read: Callable[[Path, int], str] = read_limited,
    ) -> None:
        self._folder, self._max_keys = folder, max_keys
        self._max_files, self._max_file_bytes = max_files, max_file_bytes
        self._list, self._read = list_files, read
        self._cache: dict[str, tuple[Stamp, FileFigures]] = {}
        self._log_limit = RateLimitedLog(60.0)
        self._folder_seen: tuple[int, int] | None = None  # the folder's inode, mtime
        self._listed: list[tuple[str, Stamp]] = []

    def collect(self) -> dict[str, float]:
        """Merged figures of every file, in name order, within the key bound."""
        if self._folder is None:
            return {}
        files = self._files(self._folder)
        errors = 0
        if len(files) > self._max_files:
            self._warn("folder", f"{len(files)} files; only the first {self._max_files} are read")
            errors += len(files) - self._max_files
            files = files[: self._max_files]
        out: dict[str, float] = {}
        for path, stamp in files:
            figures = self._figures(path, stamp)
            errors += len(figures.problems)
            for key, value in figures.metrics.items():
                if key in out or len(out) >= self._max_keys:
                    errors += 1
                    self._warn(path, f"{key} dropped: duplicate or over {self._max_keys} keys")
                    continue
                out[key] = value
        self._cache = {p: self._cache[p] for p, _ in files if p in self._cache}
        out["textfile.status.files"] = float(len(files))
        out["textfile.status.errors"] = float(errors)
        return out

    def _files(self, folder: Path) -> list[tuple[str, Stamp]]:
        """The listing, from the last one while the folder itself is unchanged (a file
        added, removed or renamed changes its mtime; each listed file is still looked at).
        A folder changed in the last two seconds is listed again: a coarse clock could hide
        a second change within the same tick."""
        try:
            st = folder.stat()
        except OSError:
            self._folder_seen = None
            return list(self._list(folder))  # says what is wrong with the folder
        seen = (st.st_ino, st.st_mtime_ns)
        if seen == self._folder_seen and time.time() - st.st_mtime > _SETTLED_S:
            again = _restat(self._listed)
            if again is not None:
                return again
        files = list(self._list(folder))  # listed after the stat: a change meanwhile shows
        self._folder_seen, self._listed = seen, files
        return list(files)

    def _figures(self, path: str, stamp: Stamp) -> FileFigures:
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            figures = file_figures(self._read(Path(path), self._max_file_bytes), self._max_keys)
        except (OSError, ValueError) as exc:
            figures = FileFigures({}, [(0, str(exc))])
        for line, reason in figures.problems[:1]:
            where = f"{path}:{line}" if line else path
            more = len(figures.problems) - 1
            self._warn(path, f"{where}: {reason}" + (f" (+{more} more)" if more else ""))
        self._cache[path] = (stamp, figures)
        return figures

    def _warn(self, key: str, message: str) -> None:
        suppressed = self._log_limit.allow(key)
        if suppressed is not None:
            log.warning("textfile problem", extra=kv(detail=message, suppressed=suppressed))
