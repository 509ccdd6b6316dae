"""Space and inodes of every real mounted filesystem.

Real means: not a pseudo or in-memory filesystem (proc, sysfs, tmpfs, cgroup, ...), not a
read-only image that is always full (squashfs, iso9660, erofs), not under /proc, /sys, /dev
or a container runtime's storage. ``overlay`` is kept only when mounted at ``/``: that is
the root of a container (or an overlayroot device), while other overlays are per-container
layers. A block device mounted twice (bind mounts) is reported once, at its first mount.

``statvfs`` of a local disk filesystem (:data:`IN_PLACE`: ext2/3/4, FAT, exFAT) is called
directly. Any other runs through :class:`TimedCalls`: a mount that does not answer within the
timeout (a dead NFS server) gets ``disk.error[mount] = 1`` instead of blocking the agent, and
is not asked again until its stuck call returns. Healthy mounts get ``disk.error[mount] = 0``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from edgefleet.agent.collectors import procfs
from edgefleet.agent.collectors.base import metric_key, percent
from edgefleet.agent.collectors.timed import TimedCalls
from edgefleet.common.logs import RateLimitedLog, kv

log = logging.getLogger(__name__)

PSEUDO_FSTYPES = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "devtmpfs", "efivarfs", "erofs", "fuse.gvfsd-fuse", "fuse.lxcfs", "fuse.portal", "fusectl",
    "hugetlbfs", "iso9660", "mqueue", "nsfs", "overlay", "proc", "procfs", "pstore", "ramfs",
    "rpc_pipefs", "securityfs", "selinuxfs", "squashfs", "sysfs", "tmpfs", "tracefs",
})  # fmt: skip
# Local disk filesystems whose statfs the kernel answers from the superblock in memory: asked
# in place. Every other kind (network, FUSE, ...) goes through a deadline-bound worker thread,
# whose hand-over cost more CPU than the call itself.
IN_PLACE = frozenset({"ext2", "ext3", "ext4", "vfat", "msdos", "exfat"})
SKIPPED_PREFIXES = (
    "/proc/", "/sys/", "/dev/", "/run/credentials/", "/var/lib/docker/",
    "/var/lib/containers/storage/", "/var/lib/kubelet/pods/", "/snap/",
)  # fmt: skip


class Mount(NamedTuple):
    """One line of the mount table."""

    device: str
    mountpoint: str
    fstype: str


class StatVfs(Protocol):
    """The fields of ``os.statvfs_result`` this module uses."""

    @property
    def f_frsize(self) -> int: ...
    @property
    def f_blocks(self) -> int: ...
    @property
    def f_bfree(self) -> int: ...
    @property
    def f_bavail(self) -> int: ...
    @property
    def f_files(self) -> int: ...
    @property
    def f_ffree(self) -> int: ...


def read_mounts_psutil() -> list[Mount]:
    """Every line of the mount table, pseudo filesystems included."""
    import psutil

    return [Mount(p.device, p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True)]


@functools.cache
def root_device() -> str | None:
    """The block device behind ``/`` (``/dev/mmcblk0p2``) for a table that says ``/dev/root``,
    from the kernel's ``uevent`` of its device number; None when it cannot be told."""
    dev = Path("/").stat().st_dev
    try:
        uevent = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/uevent").read_bytes()
    except OSError:
        return None
    for line in uevent.split(b"\n"):
        if line.startswith(b"DEVNAME="):
            return "/dev/" + line[8:].decode()
    return None


def mounts_from_table(table: bytes) -> list[Mount]:
    """:func:`read_mounts_psutil`'s answer from the text of a mount table: ``none`` as the
    device becomes ``""`` and ``/dev/root`` (``rootfs``) the real device, as psutil does."""
    out: list[Mount] = []
    for listed, mountpoint, fstype, _opts in procfs.parse_mounts(table):
        device = "" if listed == "none" else listed
        if device in ("/dev/root", "rootfs"):
            device = root_device() or device
        out.append(Mount(device, mountpoint, fstype))
    return out


def read_mounts_proc() -> Sequence[Mount]:
    """The same from ``/proc/self/mounts``, read and parsed again only after the kernel
    flagged a change (see :class:`~edgefleet.agent.collectors.procfs.MountTable`): the same
    list object while the table is unchanged (callers must not change it)."""
    return procfs.MOUNTS.parsed(mounts_from_table)


read_mounts = read_mounts_proc if procfs.HAVE_PROC else read_mounts_psutil


def _is_real(mount: Mount) -> bool:
    if mount.fstype == "overlay" and mount.mountpoint == "/":
        return True
    if mount.fstype in PSEUDO_FSTYPES or mount.fstype.startswith("cgroup"):
        return False
    return not (mount.mountpoint + "/").startswith(SKIPPED_PREFIXES)


def real_mounts(mounts: Iterable[Mount]) -> list[Mount]:
    """The mounts worth reporting, each mountpoint and each block device at most once."""
    seen: set[str] = set()
    out: list[Mount] = []
    for mount in mounts:
        if not _is_real(mount):
            continue
        ids = {mount.mountpoint}
        if mount.device.startswith("/"):
            ids.add("dev:" + mount.device)
        if ids & seen:
            continue
        seen |= ids
        out.append(mount)
    return out


def disk_metrics(mountpoint: str, st: StatVfs) -> dict[str, float]:
    """Space (as ``df`` counts it: root's reserve is not free) and inode use of one mount."""
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    values = {
        "disk.total_bytes": float(st.f_blocks * st.f_frsize),
        "disk.free_bytes": float(avail),
        "disk.used_percent": percent(used, used + avail),
        # Some filesystems (btrfs, vfat) report no inode count.
        "disk.inodes_used_percent": percent(st.f_files - st.f_ffree, st.f_files),
    }
    return {metric_key(k, mountpoint): v for k, v in values.items() if v is not None}


class DiskCollector:
    """``disk.{total_bytes,free_bytes,used_percent,inodes_used_percent,error}[mount]``."""

    name = "disk"

    def __init__(
        self,
        *,
        read: Callable[[], Sequence[Mount]] = read_mounts,
        statvfs: Callable[[str], StatVfs] = os.statvfs,
        timeout_s: float = 2.0,
    ) -> None:
        self._read = read
        self._statvfs = statvfs
        self._calls: TimedCalls[str, StatVfs] = TimedCalls(statvfs, timeout_s=timeout_s)
        self._log_limit = RateLimitedLog(60.0)
        self._table: Sequence[Mount] | None = None  # the table last read, and its real mounts
        self._real: list[Mount] = []

    def collect(self) -> dict[str, float]:
        """Figures for every real mount; a failed or hung mount only sets its error flag."""
        table = self._read()
        if table is not self._table:  # the same table object: the same real mounts
            self._table, self._real = table, real_mounts(table)
        mounts = self._real
        results = self._calls.run_all(m.mountpoint for m in mounts if m.fstype not in IN_PLACE)
        for mount in mounts:
            if mount.fstype in IN_PLACE:
                results[mount.mountpoint] = self._in_place(mount.mountpoint)
        out: dict[str, float] = {}
        for mountpoint in (m.mountpoint for m in mounts):
            result = results[mountpoint]
            if isinstance(result, Exception):
                self._log_failure(mountpoint, result)
            else:
                out.update(disk_metrics(mountpoint, result))
            out[metric_key("disk.error", mountpoint)] = float(isinstance(result, Exception))
        return out

    def _in_place(self, mountpoint: str) -> StatVfs | Exception:
        try:
            return self._statvfs(mountpoint)
        except OSError as exc:
            return exc

    def _log_failure(self, mountpoint: str, exc: Exception) -> None:
        suppressed = self._log_limit.allow(mountpoint)
        if suppressed is not None:
            fields = kv(
                collector=self.name,
                mount=mountpoint,
                error=f"{type(exc).__name__}: {exc}",
                suppressed=suppressed,
            )
            log.warning("mount check failed", extra=fields)
