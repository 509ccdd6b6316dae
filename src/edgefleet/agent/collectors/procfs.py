"""Reading Linux's ``/proc`` directly: what psutil reads, at a fraction of its cost.

Once a second on a small device, psutil's general-purpose readers (a new file object per
call, every field parsed, named tuples, ``/proc/stat`` read again for the boot time) cost
more than the agent's whole round should. Here:

- :class:`ProcFile` keeps one file open and re-reads it with ``pread`` (procfs generates the
  text afresh on every read from offset 0), saving the ``open``/``close`` of each round.
  Within one sampling round (:func:`one_round`, entered by ``collect_all``) a file is read
  once, and parsed once per parser, for every collector that needs it (``cpu`` and
  ``load``; ``memory`` and ``swap``).
- :func:`pids` lists ``/proc`` once per round for ``procs`` and ``processes`` the same way.
- :class:`MountTable` re-reads the mount table (``disk``, ``vitals``) only after a change.

The parsers are pure (bytes in, plain data out) and tested on fixture files and against
psutil on the machine running the tests. Where there is no ``/proc`` (:data:`HAVE_PROC`
false) the collectors keep their psutil readers.
"""

from __future__ import annotations

import os
import re
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

HAVE_PROC = Path("/proc/self/stat").exists()
TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CHUNK = 65536
_MAX_CHUNKS = 64  # 4 MiB: far beyond any file read here


class _Round:
    """The sampling round in progress (:func:`one_round`); 0 outside of one."""

    number = 0
    counter = 0


@contextmanager
def one_round() -> Iterator[None]:
    """Within this block (one sampling round, :func:`collect_all`), each file is read and
    ``/proc`` listed at most once; outside of it every call reads afresh. Nested: one round."""
    if _Round.number:
        yield
        return
    _Round.counter += 1
    _Round.number = _Round.counter
    try:
        yield
    finally:
        _Round.number = 0


class ProcFile:
    """One procfs file, opened on first use and kept open; :meth:`read` gives its content."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._last: tuple[int, bytes] | None = None  # round number, content
        self._parsed: dict[Callable[[bytes], object], tuple[bytes, object]] = {}

    def read(self) -> bytes:
        """The file's current content (the same bytes again within one round)."""
        with self._lock:
            now = _Round.number
            if now and self._last is not None and self._last[0] == now:
                return self._last[1]
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            data = _pread_all(self._fd)
            self._last = (now, data)
            return data

    def parsed(self, parse: Callable[[bytes], T]) -> T:
        """``parse(self.read())``, parsed once per content and parser (the result is
        shared: callers must not change it)."""
        data = self.read()
        with self._lock:
            seen = self._parsed.get(parse)
            if seen is None or seen[0] is not data:
                seen = self._parsed[parse] = (data, parse(data))
            return seen[1]  # type: ignore[return-value]


def _pread_all(fd: int) -> bytes:
    chunks = [os.pread(fd, _CHUNK, 0)]
    while len(chunks[-1]) == _CHUNK and len(chunks) < _MAX_CHUNKS:
        chunks.append(os.pread(fd, _CHUNK, _CHUNK * len(chunks)))
    return b"".join(chunks)


class MountTable(ProcFile):
    """``/proc/self/mounts``, read again only after the kernel flagged a change.

    The file is pollable (proc(5)): a mount or unmount since the last read marks the kept
    descriptor with ``POLLPRI``. Generating the table costs the kernel more than any other
    file here (a path per mount), and it changes a few times in a device's life."""

    def __init__(self, path: str = "/proc/self/mounts") -> None:
        super().__init__(path)
        self._poller: select.poll | None = None
        self._table: bytes | None = None

    def read(self) -> bytes:
        """The table as of now (a ``poll`` with no wait when unchanged)."""
        with self._lock:
            if self._fd is None or self._poller is None:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                self._poller = select.poll()
                self._poller.register(self._fd, select.POLLPRI)
                self._table = None
            changed = any(ev & (select.POLLPRI | select.POLLERR) for _, ev in self._poller.poll(0))
            if changed or self._table is None:
                self._table = _pread_all(self._fd)
            return self._table


STAT = ProcFile("/proc/stat")
MEMINFO = ProcFile("/proc/meminfo")
DISKSTATS = ProcFile("/proc/diskstats")
NET_DEV = ProcFile("/proc/net/dev")
MOUNTS = MountTable()
SELF_STATM = ProcFile("/proc/self/statm")
LOADAVG = ProcFile("/proc/loadavg")


def list_pids() -> list[int]:
    """The PIDs in ``/proc`` now."""
    names = os.listdir(b"/proc")  # noqa: PTH208 - no Path object per entry
    return [int(name) for name in names if name.isdigit()]


def task_mark() -> bytes:
    """What changes whenever a task (process or thread) is created or ends, from
    ``/proc/loadavg``: the number of tasks and the PID created last."""
    fields = LOADAVG.read().split()
    return fields[3].partition(b"/")[2] + b" " + fields[4]


class PidList:
    """The PIDs in ``/proc``, listed once per round (a copy each call).

    Listing ``/proc`` is the dearest read of a round (a directory entry and a string per
    process). The kernel's task count and last PID (:func:`task_mark`) change with every
    task created or ended, so while they stay the same the last listing is still true and
    ``/proc`` is not listed again (on a quiet device: most rounds)."""

    def __init__(
        self,
        *,
        lister: Callable[[], list[int]] = list_pids,
        mark: Callable[[], bytes] | None = None,
    ) -> None:
        self._lister = lister
        self._mark = mark
        self._lock = threading.Lock()
        self._last: tuple[int, list[int]] | None = None
        self._seen: bytes | None = None  # the mark read just before the last listing
        self.listings = 0

    def __call__(self) -> list[int]:
        with self._lock:
            now = _Round.number
            if not now or self._last is None or self._last[0] != now:
                listed = self._listing()
                self._last = (now, listed)
            return list(self._last[1])

    def _listing(self) -> list[int]:
        mark = self._read_mark()
        if mark is not None and mark == self._seen and self._last is not None:
            return self._last[1]
        listed = self._lister()  # listed after the mark: a change meanwhile shows next time
        self._seen = mark
        self.listings += 1
        return listed

    def _read_mark(self) -> bytes | None:
        if self._mark is None:
            return None
        try:
            return self._mark()
        except (OSError, IndexError):
            return None


pids = PidList(mark=task_mark if HAVE_PROC else None)


# --- parsers -------------------------------------------------------------------------------

# /proc/stat's cpu columns, named as psutil names them (older kernels have fewer).
CPU_FIELDS = (
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice",
)  # fmt: skip


def parse_cpu_stat(
    data: bytes, ticks_per_s: int = TICKS_PER_S
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Seconds per mode for the machine (``cpu`` line) and each online core (``cpuN``)."""
    total: dict[str, float] = {}
    cores: list[dict[str, float]] = []
    for line in data.split(b"\n"):
        if not line.startswith(b"cpu"):
            if total:  # the cpu lines come first and together
                break
            continue
        fields = line.split()
        times = {m: int(v) / ticks_per_s for m, v in zip(CPU_FIELDS, fields[1:], strict=False)}
        if fields[0] == b"cpu":
            total = times
        else:
            cores.append(times)
    return total, cores


MEMINFO_FIELDS = ("MemTotal", "MemFree", "MemAvailable", "Cached", "SwapTotal", "SwapFree")
_MEMINFO_LINE = re.compile(
    rb"^(" + "|".join(MEMINFO_FIELDS).encode() + rb"):[ \t]*(\d+)( kB)?", re.MULTILINE
)


def parse_meminfo(data: bytes) -> dict[str, int]:
    """The fields of ``/proc/meminfo`` that the collectors use (:data:`MEMINFO_FIELDS`), in
    bytes; the ~50 others are not turned into names and numbers every round."""
    return {
        name.decode(): int(value) * (1024 if kb else 1)
        for name, value, kb in _MEMINFO_LINE.findall(data)
    }


def memory_available(mem: dict[str, int]) -> int:
    """Available memory as psutil reports it: ``MemAvailable``, bounded by 0 and the total
    (more than the total happens in LXC containers: then ``MemFree``); without the field
    (kernels before 3.14, or a 0) the old estimate ``MemFree + Cached``."""
    avail = mem.get("MemAvailable", 0) or mem["MemFree"] + mem.get("Cached", 0)
    if avail > mem["MemTotal"]:
        return mem["MemFree"]
    return max(0, avail)


def parse_diskstats(data: bytes, sector_bytes: int = 512) -> dict[str, dict[str, int]]:
    """Per block device: ``read_count``, ``write_count``, ``read_bytes``, ``write_bytes``
    (the line layouts of Linux 2.6 to 6.x; sectors are always 512 bytes here)."""
    out: dict[str, dict[str, int]] = {}
    for line in data.split(b"\n"):
        f = line.split()
        if len(f) == 7:  # a partition on old kernels: reads, read sectors, writes, ...
            reads, rsec, writes, wsec = int(f[3]), int(f[4]), int(f[5]), int(f[6])
        elif len(f) == 14 or len(f) >= 18:
            reads, rsec, writes, wsec = int(f[3]), int(f[5]), int(f[7]), int(f[9])
        else:
            continue
        out[f[2].decode()] = {
            "read_count": reads, "write_count": writes,
            "read_bytes": rsec * sector_bytes, "write_bytes": wsec * sector_bytes,
        }  # fmt: skip
    return out


def parse_net_dev(data: bytes) -> dict[str, dict[str, int]]:
    """Per interface: bytes, packets and errors received and sent (``/proc/net/dev``)."""
    out: dict[str, dict[str, int]] = {}
    for line in data.split(b"\n")[2:]:
        name, colon, rest = line.rpartition(b":")
        f = rest.split()
        if not colon or len(f) < 16:
            continue
        out[name.strip().decode()] = {
            "bytes_recv": int(f[0]), "packets_recv": int(f[1]), "errin": int(f[2]),
            "bytes_sent": int(f[8]), "packets_sent": int(f[9]), "errout": int(f[10]),
        }  # fmt: skip
    return out


def _unescape(field: bytes) -> str:
    # The mount table escapes space, tab, newline and backslash as \ooo (getmntent undoes it).
    text = field.decode("utf-8", "surrogateescape")
    if "\\" not in text:
        return text
    for code in ("\\040", "\\011", "\\012", "\\134"):
        text = text.replace(code, chr(int(code[1:], 8)))
    return text


def parse_mounts(data: bytes) -> list[tuple[str, str, str, str]]:
    """``(device, mountpoint, fstype, options)`` of each line of a mount table."""
    out: list[tuple[str, str, str, str]] = []
    for line in data.split(b"\n"):
        f = line.split()
        if len(f) >= 4:
            out.append((_unescape(f[0]), _unescape(f[1]), f[2].decode(), f[3].decode()))
    return out


def parse_statm_rss(data: bytes, page_bytes: int = PAGE_BYTES) -> int:
    """Resident bytes from ``/proc/<pid>/statm`` (its second field, in pages)."""
    return int(data.split()[1]) * page_bytes


def self_rss() -> int:
    """This process's resident memory in bytes (through psutil, itself ~4 MiB of RSS, only
    where there is no ``/proc``)."""
    if HAVE_PROC:
        return parse_statm_rss(SELF_STATM.read())
    import psutil

    return int(psutil.Process().memory_info().rss)
