"""Reading processes for :mod:`edgefleet.agent.collectors.processes`: identities (name,
command line, start time) and usage (CPU time, RSS), from ``/proc`` where it exists (a
fraction of psutil's cost, the same results) and through psutil elsewhere."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.agent.collectors import procfs


@dataclass(frozen=True, slots=True)
class Identity:
    """What matching needs: the process's name, command line and start time."""

    name: str
    cmdline: str
    create_time: float


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU seconds (user + system) and resident memory of one process."""

    cpu_s: float
    rss: int


def read_identity(pid: int) -> Identity | None:
    """Name, command line and start time of ``pid``; ``None`` when it is gone or hidden."""
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return Identity(proc.name(), " ".join(proc.cmdline()), proc.create_time())
    except (psutil.Error, OSError):
        return None


COMM_MAX = 15  # the kernel truncates a process name (``comm``) to 15 characters


def split_cmdline(data: bytes) -> list[str]:
    """The arguments in ``/proc/<pid>/cmdline`` (NUL-separated; a process that rewrote its
    title may use spaces), split the way psutil splits them."""
    text = data.decode("utf-8", "replace")
    if not text:
        return []
    sep = "\0" if text.endswith("\0") else " "
    args = text.removesuffix(sep).split(sep)
    return text.removesuffix(sep).split(" ") if sep == "\0" and len(args) == 1 else args


def parse_identity(stat: bytes, cmdline: bytes, boot_s: float, ticks_per_s: int) -> Identity:
    """Identity from ``/proc/<pid>/stat`` and ``/proc/<pid>/cmdline``, as psutil builds it:
    a name the kernel truncated (15 characters) is completed from the program's file name."""
    head, _, tail = stat.rpartition(b")")
    name = head.partition(b"(")[2].decode("utf-8", "replace")
    start_ticks = int(tail.split()[19])  # starttime, field 22 of proc(5)
    args = split_cmdline(cmdline)
    if len(name) >= COMM_MAX and args and (full := args[0].rpartition("/")[2]).startswith(name):
        name = full
    return Identity(name, " ".join(args), boot_s + start_ticks / ticks_per_s)


def parse_btime(stat: bytes) -> float:
    """The boot time (Unix seconds) in ``/proc/stat``, the base of processes' start times."""
    for line in stat.split(b"\n"):
        if line.startswith(b"btime "):
            return float(line.split()[1])
    raise ValueError("no btime line in /proc/stat")


@functools.cache
def _boot_s() -> float:
    return parse_btime(procfs.STAT.read())


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, 65536)]
        while len(chunks[-1]) == 65536 and len(chunks) < 64:
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_identity_proc(
    pid: int, need_cmdline: Callable[[str], bool] | None = None
) -> Identity | None:
    """:func:`read_identity` from ``/proc`` (a fraction of psutil's CPU). ``need_cmdline``
    (given the kernel's name): False leaves the command line unread (``""``) when no spec
    could use it; the costly read of a process's memory is then saved."""
    try:
        stat = _read_file(f"/proc/{pid}/stat")
        comm = stat.partition(b"(")[2].rpartition(b")")[0].decode("utf-8", "replace")
        wanted = need_cmdline is None or need_cmdline(comm)
        cmdline = _read_file(f"/proc/{pid}/cmdline") if wanted else b""
        return parse_identity(stat, cmdline, _boot_s(), _TICKS)
    except (OSError, IndexError, ValueError):
        return None


def read_usage_psutil(pid: int) -> Usage | None:
    """CPU times and RSS of ``pid`` through psutil; ``None`` when it is gone or not readable."""
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            return Usage(times.user + times.system, proc.memory_info().rss)
    except (psutil.Error, OSError):
        return None


def parse_proc_stat(data: bytes, ticks_per_s: int, page_bytes: int) -> Usage:
    """CPU seconds (utime + stime) and RSS from the content of ``/proc/<pid>/stat``."""
    fields = data.rsplit(b")", 1)[1].split()  # the name, in parens, may hold spaces and ')'
    # After the name: state is field 3 of proc(5)'s stat; utime 14, stime 15, rss 24 (pages).
    return Usage((int(fields[11]) + int(fields[12])) / ticks_per_s, int(fields[21]) * page_bytes)


_TICKS = procfs.TICKS_PER_S
_PAGE = procfs.PAGE_BYTES


def read_usage_proc(pid: int) -> Usage | None:
    """CPU times and RSS from one read of ``/proc/<pid>/stat`` (a fraction of psutil's cost)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        return parse_proc_stat(data, _TICKS, _PAGE)
    except (OSError, IndexError, ValueError):
        return None


PROC = procfs.HAVE_PROC
read_usage = read_usage_proc if PROC else read_usage_psutil
