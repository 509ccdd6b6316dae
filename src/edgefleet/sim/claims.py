"""Device names a running ``edgefleet demo`` uses, so that ``edgefleet simulate`` cannot take
them over (two clients under one thing name: interleaved streams, samples dropped as
duplicates, a device that looks alive with frozen charts).

The demo writes :data:`CLAIM_FILE` into its broker's CA folder (the folder ``simulate
--pki`` points at: that is what ties the two together) and removes it when it stops. The
claim names the demo's process (pid and start time, so a stale file left by a killed demo
or a reused pid claims nothing) and every device name it runs. The demo's own simulator is
its child process and is let through.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from edgefleet.errors import ConfigError

CLAIM_FILE = "demo-devices.json"


@dataclass(frozen=True, slots=True)
class Claim:
    """One running demo's process and device names."""

    pid: int
    started: float
    workdir: str
    devices: tuple[str, ...]

    def alive(self) -> bool:
        """Whether the demo that wrote the claim still runs (same pid, same start time)."""
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except psutil.Error:
            return False


def write_claim(pki: Path, workdir: Path, devices: list[str]) -> Path:
    """Claim ``devices`` for this process (the demo); return the file to remove at the end."""
    me = psutil.Process()
    doc = {"pid": me.pid, "started": me.create_time(), "workdir": str(workdir),
           "devices": devices}
    path = pki / CLAIM_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    tmp.replace(path)
    return path


def read_claim(pki: Path) -> Claim | None:
    """The claim in ``pki``, or None when there is none or it cannot be read."""
    try:
        doc = json.loads((pki / CLAIM_FILE).read_text())
        return Claim(int(doc["pid"]), float(doc["started"]), str(doc["workdir"]),
                     tuple(str(d) for d in doc["devices"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} names)"


def check_unclaimed(pki: Path, names: list[str]) -> None:
    """Refuse ``names`` that a running demo (other than our parent) is using."""
    claim = read_claim(pki)
    if claim is None or claim.pid == os.getppid() or not claim.alive():
        return
    taken = sorted(set(names) & set(claim.devices))
    if taken:
        raise ConfigError(
            f"device names {_span(taken)} are in use by the demo running from "
            f"{claim.workdir} (pid {claim.pid}); choose other names with --prefix"
        )
