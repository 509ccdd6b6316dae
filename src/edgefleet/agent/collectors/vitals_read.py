"""Readers for the ``vitals`` collector: boot id and its saved state, clock, mounts, Pi flags.

Each returns raw text or numbers; :mod:`vitals` parses them. None starts a process per round.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.collectors import procfs
from edgefleet.agent.collectors.command import run_bounded

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
THROTTLED = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
STATE_NAME = "vitals-boot.txt"


@dataclass(frozen=True, slots=True)
class Timex:
    """The fields of the kernel's ``struct timex`` that tell whether the clock is synchronised."""

    state: int  # adjtimex's return value: 5 (TIME_ERROR) when not synchronised
    status: int
    offset: int  # microseconds, nanoseconds with STA_NANO
    maxerror_us: int


class _CTimex(ctypes.Structure):
    # struct timex of <sys/timex.h> (glibc, the ``long`` layout of the plain adjtimex symbol).
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long), ("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long),
        ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int), ("padding", ctypes.c_int * 16),
    ]  # fmt: skip


@functools.cache
def _libc() -> ctypes.CDLL:
    # The interpreter's own symbols, libc's among them: no ctypes.util (it imports shutil,
    # tempfile, bz2 and lzma, and find_library runs ldconfig).
    return ctypes.CDLL(None, use_errno=True)


@functools.cache
def _timex_buffer() -> _CTimex:
    return _CTimex()


def read_timex() -> Timex:
    """The kernel clock's state via ``adjtimex`` with no change requested (unprivileged)."""
    buf = _timex_buffer()
    buf.modes = 0  # read only: never ask the kernel to change the clock
    state = _libc().adjtimex(ctypes.byref(buf))
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex: {os.strerror(err)}")
    return Timex(state, buf.status, buf.offset, buf.maxerror)


def read_boot_id() -> str:
    """This boot's random id (changes with every boot)."""
    return BOOT_ID.read_text(encoding="ascii").strip()


def read_saved_boot(folder: Path) -> str | None:
    """The saved ``boot_id reboots`` line, or ``None`` when there is none yet."""
    try:
        return (folder / STATE_NAME).read_text(encoding="utf-8")[:200]
    except FileNotFoundError:
        return None


def save_boot(folder: Path, text: str) -> None:
    """Write the state file atomically (a temporary file renamed over it)."""
    tmp = folder / f".{STATE_NAME}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(folder / STATE_NAME)


def read_mounts_text() -> str:
    """The mount table of this process's namespace (read again only after a change)."""
    return procfs.MOUNTS.parsed(_decode)


def _decode(table: bytes) -> str:
    return table.decode("utf-8", "replace")


def read_throttled_file() -> str | None:
    """The firmware's throttled flags (hex) where the kernel exposes them, else ``None``."""
    try:
        return THROTTLED.read_text(encoding="ascii").strip()
    except OSError:
        return None


def vcgencmd_available() -> bool:
    """True when ``vcgencmd`` (Raspberry Pi firmware tool) is installed."""
    folders = os.environ.get("PATH", os.defpath).split(os.pathsep)
    # not shutil.which: shutil imports bz2 and lzma (RSS) for this one look-up
    return any(
        os.access(p, os.X_OK) and p.is_file()
        for p in (Path(f or ".") / "vcgencmd" for f in folders)
    )


def read_throttled_vcgencmd() -> str:
    """``throttled=0x...`` from ``vcgencmd get_throttled`` (2 s deadline)."""
    result = run_bounded(["vcgencmd", "get_throttled"], timeout_s=2.0, max_bytes=4096)
    error = result.error("vcgencmd get_throttled")
    if error is not None:
        raise RuntimeError(error)
    return result.stdout.decode("ascii", "replace").strip()
