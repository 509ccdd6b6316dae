"""The device's vital signs: reboots, clock synchronisation, a read-only root, Pi throttling.

- **Reboots**: the kernel's boot id is saved in ``state_dir`` (the queue's folder); a
  different id at start means the device rebooted. ``vitals.reboots`` counts them (kept in the
  file), ``vitals.rebooted`` is 1 for :data:`REBOOT_FLAG_S` after a reboot was seen, else 0.
  Without a writable ``state_dir`` reboots cannot be told from agent restarts: no such keys.
- **Clock**: ``adjtimex`` (read only): ``vitals.clock_synced`` 0/1 as the kernel knows it
  (set by chrony, ntpd, systemd-timesyncd), ``vitals.clock_max_error_seconds``,
  ``vitals.clock_offset_seconds`` (the offset still being corrected; 0 for daemons that step
  or slew by themselves).
- **Root read-only**: ``vitals.root_readonly`` 0/1 from the mount table.
- **Raspberry Pi**: ``vitals.<flag>_now`` / ``vitals.<flag>_seen`` (since boot) for
  undervoltage, freq_capped, throttled, soft_temp_limit, where the firmware exposes them
  (sysfs ``get_throttled`` each round, else ``vcgencmd`` at most every 60 s; which of the
  two exists is found at start).

One part failing (a container forbidding ``adjtimex``) leaves the others; it is logged once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.collectors import vitals_read as rd
from edgefleet.agent.collectors.base import Clock
from edgefleet.agent.collectors.periodic import Refresher
from edgefleet.common.logs import RateLimitedLog, kv

log = logging.getLogger(__name__)

REBOOT_FLAG_S = 600.0
STA_UNSYNC = 0x0040
STA_NANO = 0x2000
TIME_ERROR = 5
THROTTLE_BITS = {"undervoltage": 0, "freq_capped": 1, "throttled": 2, "soft_temp_limit": 3}


def boot_step(saved: str | None, boot_id: str) -> tuple[str, int, bool]:
    """From the saved ``"<boot_id> <reboots>"`` and this boot's id: (text, reboots, rebooted)."""
    parts = (saved or "").split()
    if len(parts) != 2 or not parts[1].isdigit():
        return f"{boot_id} 0\n", 0, False
    reboots = int(parts[1]) + (parts[0] != boot_id)
    return f"{boot_id} {reboots}\n", reboots, parts[0] != boot_id


def clock_metrics(tx: rd.Timex) -> dict[str, float]:
    """Synchronised flag, maximum error and pending offset of the kernel clock."""
    synced = tx.state != TIME_ERROR and not tx.status & STA_UNSYNC
    per_second = 1e9 if tx.status & STA_NANO else 1e6
    return {
        "vitals.clock_synced": float(synced),
        "vitals.clock_max_error_seconds": max(0.0, tx.maxerror_us / 1e6),
        "vitals.clock_offset_seconds": tx.offset / per_second,
    }


def root_readonly(mounts: str) -> float | None:
    """1.0 when the last mount at ``/`` is read-only, 0.0 when writable, None if none found."""
    found: float | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "/":
            found = float("ro" in fields[3].split(","))
    return found


def throttled_metrics(text: str) -> dict[str, float]:
    """Named flags from ``get_throttled`` (``0x50005``, ``50005`` or ``throttled=0x50005``)."""
    value = int(text.strip().removeprefix("throttled=").strip(), 16)
    out: dict[str, float] = {}
    for flag, bit in THROTTLE_BITS.items():
        out[f"vitals.{flag}_now"] = float(bool(value >> bit & 1))
        out[f"vitals.{flag}_seen"] = float(bool(value >> (bit + 16) & 1))
    return out


def _absent() -> None:
    return None


class VitalsCollector:
    """``vitals.*``: reboots, clock, read-only root, Raspberry Pi throttling."""

    name = "vitals"

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        boot_id: Callable[[], str] = rd.read_boot_id,
        timex: Callable[[], rd.Timex] = rd.read_timex,
        mounts: Callable[[], str] = rd.read_mounts_text,
        throttled: Callable[[], str | None] = rd.read_throttled_file,
        vcgencmd: Callable[[], str] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._state_dir, self._clock = state_dir, clock
        self._timex, self._mounts, self._throttled = timex, mounts, throttled
        self._log_limit = RateLimitedLog(3600.0)
        self._boot_id = boot_id()
        self._started = clock()
        self._boot: tuple[str, int, bool] | None = None
        self._root_seen: tuple[str | None, float | None] = (None, None)
        self._vcgencmd: Refresher[str] | None = None
        if throttled() is None:  # no firmware file (looked for once: it comes with the board)
            self._throttled = _absent
            if vcgencmd is None and rd.vcgencmd_available():
                vcgencmd = rd.read_throttled_vcgencmd
            if vcgencmd is not None:
                self._vcgencmd = Refresher(vcgencmd, period_s=60.0, name="vcgencmd")
                self._vcgencmd.poll()

    def collect(self) -> dict[str, float]:
        """Every part that can be read here; a failing part is left out and logged."""
        out: dict[str, float] = {}
        for part, read in (
            ("boot", self._boot_part), ("clock", lambda: clock_metrics(self._timex())),
            ("root", self._root_part), ("throttled", self._throttled_part),
        ):  # fmt: skip
            try:
                out.update(read())
            except Exception as exc:  # noqa: BLE001 - one part must not hide the others
                self._warn(part, exc)
        return out

    def _boot_part(self) -> dict[str, float]:
        if self._state_dir is None:
            return {}
        if self._boot is None:  # until the state is saved (the folder may not exist yet)
            step = boot_step(rd.read_saved_boot(self._state_dir), self._boot_id)
            rd.save_boot(self._state_dir, step[0])
            self._boot, self._started = step, self._clock()
        _text, reboots, rebooted = self._boot
        recent = rebooted and self._clock() - self._started < REBOOT_FLAG_S
        return {"vitals.reboots": float(reboots), "vitals.rebooted": float(recent)}

    def _root_part(self) -> dict[str, float]:
        text = self._mounts()
        if text is not self._root_seen[0]:  # the same table object: the same answer
            self._root_seen = (text, root_readonly(text))
        flag = self._root_seen[1]
        return {} if flag is None else {"vitals.root_readonly": flag}

    def _throttled_part(self) -> dict[str, float]:
        text = self._throttled()
        if text is None and self._vcgencmd is not None:
            outcome = self._vcgencmd.poll()
            if isinstance(outcome, Exception):
                raise outcome
            text = outcome
        return {} if text is None else throttled_metrics(text)

    def _warn(self, part: str, exc: Exception) -> None:
        suppressed = self._log_limit.allow(part)
        if suppressed is not None:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("vitals part unavailable", extra=kv(part=part, error=error))
