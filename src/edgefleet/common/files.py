"""Checks of the certificate, private key and queue files a process is told to use.

Pydantic-free on purpose: the edge agent's long-running process re-checks a rotated key with
them. :mod:`edgefleet.common.settings` re-exports the key and certificate checks.

Ownership rule: a key, the queue's folder and the queue's files must belong to the user the
process runs as, or to root (a root-owned file can only be changed by root, who can change
anything anyway). Anything else could be swapped or read by that other user.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgefleet.errors import ConfigError, KeyFileError


def check_private_key(path: Path, setting: str) -> None:
    """Refuse a missing key, or one that group or others can read or write."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{setting}: private key {path} does not exist") from None
    except PermissionError:
        raise KeyFileError(f"{setting}: private key {path} cannot be read by this user") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{setting}: private key {path} is not a regular file")
    _check_owner(st, f"{setting}: private key", path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{setting}: private key {path} is readable by group or others "
            f"(mode {mode:04o}); fix with: chmod 600 {path}"
        )
    if not os.access(path, os.R_OK):
        raise KeyFileError(f"{setting}: private key {path} cannot be read by this user")


def check_cert_file(path: Path, setting: str) -> None:
    """Refuse a missing or unreadable certificate file (a PEM certificate is expected)."""
    if not path.is_file():
        raise KeyFileError(f"{setting}: certificate file {path} does not exist")
    try:
        head = path.read_bytes()[:4096]
    except PermissionError:
        raise KeyFileError(f"{setting}: certificate file {path} cannot be read") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise KeyFileError(f"{setting}: {path} is not a PEM certificate")


def _check_owner(st: os.stat_result, what: str, path: Path) -> None:
    """Refuse a file owned by someone else than this process's user or root."""
    if st.st_uid not in (os.geteuid(), 0):
        raise KeyFileError(
            f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid "
            f"{os.geteuid()}) or root; fix with: chown {os.geteuid()} {path}"
        )


def check_queue_path(path: Path, setting: str) -> None:
    """Refuse a queue file whose folder others can write to, or that is a symbolic link.

    The folder (when it exists; the queue creates it 0700 otherwise) must belong to this
    user or root and not be writable by group or others: then nobody else can put a link or
    a file of theirs where the queue will be, between this check and SQLite's open. The
    file and its ``-wal``/``-shm`` companions, when present, must be regular files (never a
    link, which SQLite would follow) of this user or root, not writable by group or others.
    """
    folder = path.parent
    try:
        st = folder.stat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{setting}: {folder} (the queue's folder) is not a folder")
    _check_owner(st, f"{setting}: queue folder", folder)
    _refuse_shared_write(st, f"{setting}: queue folder", folder)
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        _check_queue_file(name, setting)


def _check_queue_file(path: Path, setting: str) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{setting}: queue file {path} is a symbolic link; refusing to follow it")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{setting}: queue file {path} is not a regular file")
    _check_owner(st, f"{setting}: queue file", path)
    _refuse_shared_write(st, f"{setting}: queue file", path)


def _refuse_shared_write(st: os.stat_result, what: str, path: Path) -> None:
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise ConfigError(
            f"{what} {path} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); fix with: chmod go-w {path}"
        )
