"""Checks of the certificate and private key files a process is told to use.

Pydantic-free on purpose: the edge agent's long-running process re-checks a rotated key with
them. :mod:`edgefleet.common.settings` re-exports both.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgefleet.errors import KeyFileError


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
