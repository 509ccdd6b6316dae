"""The vitals collector: reboots, clock, read-only root and Pi flags, parsed from literal input."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.agent.collectors import vitals_read
from edgefleet.agent.collectors.vitals import (
    VitalsCollector,
    boot_step,
    clock_metrics,
    root_readonly,
    throttled_metrics,
)
from edgefleet.agent.collectors.vitals_read import Timex
from edgefleet.wire.metric_families import BY_COLLECTOR

FIXTURES = Path(__file__).parent / "fixtures"
SYNCED = Timex(state=0, status=0x2001, offset=-250_000, maxerror_us=12_500)  # PLL | NANO


def test_boot_step() -> None:
    assert boot_step(None, "b1") == ("b1 0\n", 0, False)  # first start: nothing to compare
    assert boot_step("b1 0\n", "b1") == ("b1 0\n", 0, False)  # agent restart, same boot
    assert boot_step("b1 0\n", "b2") == ("b2 1\n", 1, True)
    assert boot_step("b2 1\n", "b3") == ("b3 2\n", 2, True)
    assert boot_step("garbage", "b4") == ("b4 0\n", 0, False)


def test_clock() -> None:
    assert clock_metrics(SYNCED) == {
        "vitals.clock_synced": 1.0,
        "vitals.clock_max_error_seconds": 0.0125,
        "vitals.clock_offset_seconds": -0.00025,  # nanoseconds with STA_NANO
    }
    micro = clock_metrics(Timex(state=0, status=0x0001, offset=1500, maxerror_us=1000))
    assert micro["vitals.clock_offset_seconds"] == 0.0015
    unsync = clock_metrics(Timex(state=5, status=0x0040, offset=0, maxerror_us=16_000_000))
    assert unsync["vitals.clock_synced"] == 0.0
    assert unsync["vitals.clock_max_error_seconds"] == 16.0
    assert clock_metrics(Timex(0, 0x0040, 0, 0))["vitals.clock_synced"] == 0.0


def test_root_readonly_from_mount_tables() -> None:
    assert root_readonly((FIXTURES / "proc_mounts_rw.txt").read_text()) == 0.0
    assert root_readonly((FIXTURES / "proc_mounts_ro.txt").read_text()) == 1.0  # last / wins
    assert root_readonly("proc /proc proc rw 0 0\n") is None


def test_throttled_flags() -> None:
    flags = throttled_metrics("throttled=0x50005")  # vcgencmd: undervoltage and throttled now
    assert flags == {
        "vitals.undervoltage_now": 1.0, "vitals.undervoltage_seen": 1.0,
        "vitals.freq_capped_now": 0.0, "vitals.freq_capped_seen": 0.0,
        "vitals.throttled_now": 1.0, "vitals.throttled_seen": 1.0,
        "vitals.soft_temp_limit_now": 0.0, "vitals.soft_temp_limit_seen": 0.0,
    }
    assert throttled_metrics("80000")["vitals.soft_temp_limit_seen"] == 1.0  # sysfs: bare hex
    assert set(throttled_metrics("0").values()) == {0.0}
    assert set(flags) <= set(BY_COLLECTOR["vitals"])
    with pytest.raises(ValueError, match="invalid literal"):
        throttled_metrics("throttled=oops")


def make(
    state_dir: Path | None,
    boot: str,
    clock: Callable[[], float] = time.monotonic,
    vcgencmd: Callable[[], str] | None = None,
) -> VitalsCollector:
    return VitalsCollector(
        state_dir=state_dir, boot_id=lambda: boot, timex=lambda: SYNCED,
        mounts=lambda: "/dev/sda1 / ext4 rw 0 0\n", throttled=lambda: None,
        vcgencmd=vcgencmd, clock=clock,
    )


def test_reboot_seen_across_agent_restarts(tmp_path: Path) -> None:
    now = [0.0]
    assert make(tmp_path, "boot-a", clock=lambda: now[0]).collect()["vitals.reboots"] == 0.0
    assert make(tmp_path, "boot-a").collect()["vitals.rebooted"] == 0.0  # restart, same boot
    after = make(tmp_path, "boot-b", clock=lambda: now[0])
    first = after.collect()
    assert (first["vitals.reboots"], first["vitals.rebooted"]) == (1.0, 1.0)
    now[0] = 599.0
    assert after.collect()["vitals.rebooted"] == 1.0
    now[0] = 601.0
    assert after.collect()["vitals.rebooted"] == 0.0  # the flag lasts 10 minutes
    assert (tmp_path / "vitals-boot.txt").read_text() == "boot-b 1\n"


def test_no_state_dir_no_reboot_keys_and_parts_fail_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def forbidden() -> Timex:
        raise PermissionError(1, "adjtimex: Operation not permitted")

    collector = VitalsCollector(
        state_dir=tmp_path / "missing", boot_id=lambda: "b", timex=forbidden,
        mounts=lambda: "/dev/sda1 / ext4 ro 0 0\n", throttled=lambda: "0x0",
    )
    with caplog.at_level(logging.WARNING):
        metrics = collector.collect()
        collector.collect()
    assert metrics["vitals.root_readonly"] == 1.0
    assert metrics["vitals.undervoltage_now"] == 0.0
    assert not any(k.startswith(("vitals.clock", "vitals.reboot")) for k in metrics)
    parts = sorted(r.__dict__["fields"]["part"] for r in caplog.records)
    assert parts == ["boot", "clock"]  # logged once each, not every sample
    assert "vitals.reboots" not in make(None, "b").collect()


def test_vcgencmd_fallback_when_sysfs_has_no_flags() -> None:
    calls: list[int] = []

    def vcgencmd() -> str:
        calls.append(1)
        return "throttled=0x1"

    collector = make(None, "b", vcgencmd=vcgencmd)
    assert collector._vcgencmd is not None
    assert collector._vcgencmd.wait_idle(30)
    assert collector.collect()["vitals.undervoltage_now"] == 1.0
    assert collector.collect()["vitals.undervoltage_now"] == 1.0
    assert calls == [1]  # at most once a minute


def test_real_readers_on_this_machine(tmp_path: Path) -> None:
    boot_id = vitals_read.read_boot_id()
    assert len(boot_id) == 36
    timex = vitals_read.read_timex()
    assert timex.state >= 0
    assert root_readonly(vitals_read.read_mounts_text()) in (0.0, 1.0)
    metrics = VitalsCollector(state_dir=tmp_path).collect()
    assert {"vitals.clock_synced", "vitals.root_readonly", "vitals.reboots"} <= set(metrics)
    assert set(metrics) <= set(BY_COLLECTOR["vitals"])
