"""Collectors: pure maths on literal inputs, fakes for hung mounts and failures, one real run."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Generic, TypeVar

import pytest

from edgefleet.agent.collectors import REGISTRY, build_collectors, collect_all
from edgefleet.agent.collectors.base import RateTracker, counter_rates, metric_key, percent
from edgefleet.agent.collectors.cpu import CpuCollector, CpuTimes, busy_percent, cpu_metrics
from edgefleet.agent.collectors.disk import DiskCollector, Mount, disk_metrics, real_mounts
from edgefleet.agent.collectors.diskio import DiskIoCollector, diskio_counters, is_physical_disk
from edgefleet.agent.collectors.load import LoadReading, load_metrics
from edgefleet.agent.collectors.memory import MemoryReading, memory_metrics
from edgefleet.agent.collectors.net import NetCollector, net_counters
from edgefleet.agent.collectors.swap import SwapReading, swap_metrics
from edgefleet.agent.collectors.temp import TempCollector, temp_metrics
from edgefleet.agent.collectors.timed import CallTimeoutError, TimedCalls
from edgefleet.agent.collectors.uptime import UptimeCollector, uptime_seconds
from edgefleet.common.logs import RateLimitedLog
from edgefleet.errors import ConfigError
from edgefleet.wire.messages import METRIC_KEY_PATTERN, Sample

KEY_RE = re.compile(METRIC_KEY_PATTERN)
T = TypeVar("T")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Scripted(Generic[T]):
    """A reader returning the given readings one after another."""

    def __init__(self, *readings: T) -> None:
        self._readings = list(readings)

    def __call__(self) -> T:
        return self._readings.pop(0)


# --- base ------------------------------------------------------------------------------


def test_metric_key_forms() -> None:
    assert metric_key("cpu.percent") == "cpu.percent"
    assert metric_key("disk.used_percent", "/") == "disk.used_percent[/]"
    assert metric_key("temp.celsius", "chip/a[1]") == "temp.celsius[chip/a(1)]"
    assert metric_key("net.rx_bytes_per_s", "") == "net.rx_bytes_per_s[_]"
    long_key = metric_key("disk.error", "/" + "x" * 500)
    assert KEY_RE.fullmatch(long_key)
    assert KEY_RE.fullmatch(metric_key("disk.error", "/mnt/a\nb"))


def test_percent_clamps_and_refuses_empty_whole() -> None:
    assert percent(1, 4) == 25.0
    assert percent(5, 4) == 100.0
    assert percent(-1, 4) == 0.0
    assert percent(1, 0) is None


def test_counter_rates_plain_and_missing() -> None:
    prev = {"a": 100.0, "gone": 1.0}
    cur = {"a": 300.0, "new": 5.0}
    assert counter_rates(prev, cur, 2.0) == {"a": 100.0}
    assert counter_rates(prev, cur, 0.0) == {}


def test_counter_rates_wrap_gives_no_rate_that_round() -> None:
    prev = {"wrapped": 2.0**32 - 10, "steady": 10.0}
    cur = {"wrapped": 5.0, "steady": 20.0}
    assert counter_rates(prev, cur, 1.0) == {"steady": 10.0}


def test_rate_tracker_skips_wrap_then_resumes() -> None:
    clock = FakeClock()
    tracker = RateTracker(clock)
    assert tracker.update({"c": 2.0**32 - 10}) == {}
    clock.now += 1
    assert tracker.update({"c": 5.0}) == {}
    clock.now += 2
    assert tracker.update({"c": 25.0}) == {"c": 10.0}


# --- cpu -------------------------------------------------------------------------------


def _times(user: float, idle: float, iowait: float = 0.0, guest: float = 0.0) -> dict[str, float]:
    return {"user": user, "system": 0.0, "idle": idle, "iowait": iowait, "guest": guest}


def test_busy_percent_counts_iowait_as_idle_and_ignores_guest() -> None:
    prev = _times(10, 10, 0, 0)
    cur = _times(40, 60, 10, 20)  # 30 busy, 50 idle, 10 iowait; guest already in user
    assert busy_percent(prev, cur) == pytest.approx(100 * 30 / 90)
    assert busy_percent(prev, prev) is None


def test_busy_percent_treats_backwards_mode_as_zero() -> None:
    prev = _times(0, 0, iowait=50)
    cur = _times(10, 10, iowait=40)
    assert busy_percent(prev, cur) == 50.0


def test_cpu_metrics_total_iowait_and_cores() -> None:
    prev = CpuTimes(_times(0, 0), [_times(0, 0), _times(0, 0)])
    cur = CpuTimes(_times(50, 40, 10), [_times(10, 10), _times(0, 20)])
    assert cpu_metrics(prev, cur) == {
        "cpu.percent": 50.0,
        "cpu.iowait_percent": 10.0,
        "cpu.core_percent[0]": 50.0,
        "cpu.core_percent[1]": 0.0,
    }


def test_cpu_metrics_skips_cores_when_count_changes_and_iowait_when_absent() -> None:
    prev = CpuTimes({"user": 0.0, "idle": 0.0}, [_times(0, 0)])
    cur = CpuTimes({"user": 1.0, "idle": 3.0}, [_times(1, 1), _times(1, 1)])
    assert cpu_metrics(prev, cur) == {"cpu.percent": 25.0}


def test_cpu_collector_measures_since_construction_with_fake_reader() -> None:
    first = CpuTimes(_times(0, 0), [])
    second = CpuTimes(_times(30, 10), [])
    collector = CpuCollector(read=Scripted(first, second))
    assert collector.collect()["cpu.percent"] == 75.0


def test_cpu_first_real_collect_is_not_the_meaningless_zero() -> None:
    collector = CpuCollector()
    start = time.process_time()
    while time.process_time() - start < 0.3:
        sum(i * i for i in range(1000))
    assert collector.collect()["cpu.percent"] > 0.0


# --- load, memory, swap, uptime ---------------------------------------------------------


def test_load_metrics_with_and_without_core_count() -> None:
    assert load_metrics(LoadReading(2.0, 1.0, 0.5, 4)) == {
        "load.load1": 2.0,
        "load.load5": 1.0,
        "load.load15": 0.5,
        "load.load1_per_core": 0.5,
        "load.load5_per_core": 0.25,
        "load.load15_per_core": 0.125,
    }
    assert set(load_metrics(LoadReading(2.0, 1.0, 0.5, None))) == {
        "load.load1",
        "load.load5",
        "load.load15",
    }


def test_memory_and_swap_metrics() -> None:
    assert memory_metrics(MemoryReading(total=1000, available=250)) == {
        "memory.total_bytes": 1000.0,
        "memory.available_bytes": 250.0,
        "memory.used_percent": 75.0,
    }
    assert swap_metrics(SwapReading(total=400, used=100))["swap.used_percent"] == 25.0
    assert swap_metrics(SwapReading(total=0, used=0)) == {
        "swap.total_bytes": 0.0,
        "swap.used_percent": 0.0,
    }


def test_uptime() -> None:
    assert uptime_seconds(now=1000.0, boot_time=400.0) == 600.0
    assert uptime_seconds(now=1000.0, boot_time=2000.0) == 0.0
    collector = UptimeCollector(read_boot_time=lambda: 10.0, wall_clock=lambda: 70.0)
    assert collector.collect() == {"uptime.seconds": 60.0}


# --- disk ------------------------------------------------------------------------------

MOUNT_TABLE = [
    Mount("proc", "/proc", "proc"),
    Mount("sysfs", "/sys", "sysfs"),
    Mount("overlay", "/", "overlay"),
    Mount("devtmpfs", "/dev", "devtmpfs"),
    Mount("tmpfs", "/run", "tmpfs"),
    Mount("cgroup2", "/sys/fs/cgroup", "cgroup2"),
    Mount("cgroup", "/sys/fs/cgroup/cpu", "cgroup"),
    Mount("/dev/sda1", "/data", "ext4"),
    Mount("/dev/sda1", "/etc/hosts", "ext4"),  # bind mount of the same device
    Mount("/dev/mmcblk0p1", "/boot/firmware", "vfat"),
    Mount("/dev/loop3", "/snap/core/123", "squashfs"),
    Mount("overlay", "/var/lib/docker/overlay2/abc/merged", "overlay"),
    Mount("/dev/sdb1", "/var/lib/docker/volumes/x", "ext4"),
    Mount("nas:/export", "/mnt/nas", "nfs4"),
    Mount("nas:/other", "/mnt/nas", "nfs4"),  # stacked on the same mountpoint
    Mount("lxcfs", "/proc/cpuinfo", "fuse.lxcfs"),
]


def test_real_mounts_filters_pseudo_duplicates_and_runtime_storage() -> None:
    assert [m.mountpoint for m in real_mounts(MOUNT_TABLE)] == [
        "/",
        "/data",
        "/boot/firmware",
        "/mnt/nas",
    ]


def _statvfs(
    frsize: int = 4096, blocks: int = 1000, bfree: int = 300, bavail: int = 200, files: int = 100
) -> SimpleNamespace:
    return SimpleNamespace(
        f_frsize=frsize, f_blocks=blocks, f_bfree=bfree, f_bavail=bavail, f_files=files, f_ffree=25
    )


def test_disk_metrics_counts_like_df() -> None:
    assert disk_metrics("/data", _statvfs()) == {
        "disk.total_bytes[/data]": 4096.0 * 1000,
        "disk.free_bytes[/data]": 4096.0 * 200,
        "disk.used_percent[/data]": pytest.approx(100 * 700 / 900),
        "disk.inodes_used_percent[/data]": 75.0,
    }


def test_disk_metrics_without_inodes_or_blocks() -> None:
    metrics = disk_metrics("/boot", _statvfs(blocks=0, bfree=0, bavail=0, files=0))
    assert metrics == {"disk.total_bytes[/boot]": 0.0, "disk.free_bytes[/boot]": 0.0}


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event the hung fakes wait on; set at teardown so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def test_hung_statvfs_is_reported_failed_without_blocking_or_piling_threads(
    release: threading.Event,
) -> None:
    calls: dict[str, int] = {}

    def statvfs(path: str) -> SimpleNamespace:
        calls[path] = calls.get(path, 0) + 1
        if path == "/mnt/hung":
            release.wait()
        if path == "/mnt/gone":
            raise OSError(116, "Stale file handle")
        return _statvfs()

    mounts = [Mount("/dev/sda1", "/", "ext4"), Mount("srv:/x", "/mnt/hung", "nfs")]
    mounts.append(Mount("srv:/y", "/mnt/gone", "nfs"))
    collector = DiskCollector(read=lambda: mounts, statvfs=statvfs, timeout_s=0.2)

    first = collector.collect()
    assert not release.is_set()  # collect returned while the fake was still blocked
    assert first["disk.error[/mnt/hung]"] == 1.0
    assert first["disk.error[/mnt/gone]"] == 1.0
    assert first["disk.error[/]"] == 0.0
    assert first["disk.used_percent[/]"] == pytest.approx(100 * 700 / 900)
    assert "disk.used_percent[/mnt/hung]" not in first

    second = collector.collect()
    assert second["disk.error[/mnt/hung]"] == 1.0
    assert calls == {"/": 2, "/mnt/hung": 1, "/mnt/gone": 2}  # the stuck mount is not retried

    release.set()
    for _ in range(200):  # the stuck call returns soon after release; then it is asked again
        third = collector.collect()
        if calls["/mnt/hung"] == 2:
            break
        time.sleep(0.01)
    assert third["disk.error[/mnt/hung]"] == 0.0
    assert "disk.used_percent[/mnt/hung]" in third


def test_local_disks_asked_in_place_others_in_a_worker() -> None:
    threads: dict[str, str] = {}

    def statvfs(path: str) -> SimpleNamespace:
        threads[path] = threading.current_thread().name
        if path == "/boot/firmware":
            raise OSError(5, "Input/output error")
        return _statvfs()

    mounts = [Mount("/dev/mmcblk0p2", "/", "ext4"), Mount("/dev/mmcblk0p1", "/boot/firmware", "vfat")]
    mounts += [Mount("srv:/x", "/mnt/nas", "nfs4"), Mount("/dev/sda1", "/data", "fuseblk")]
    got = DiskCollector(read=lambda: mounts, statvfs=statvfs).collect()
    here = threading.current_thread().name
    assert threads["/"] == threads["/boot/firmware"] == here
    assert threads["/mnt/nas"] != here and threads["/data"] != here  # a FUSE daemon can hang
    assert [k for k in got if k.startswith("disk.error")] == [
        "disk.error[/]", "disk.error[/boot/firmware]", "disk.error[/mnt/nas]", "disk.error[/data]",
    ]  # fmt: skip
    assert got["disk.error[/boot/firmware]"] == 1.0
    assert "disk.used_percent[/data]" in got


def test_timed_calls_returns_values_errors_and_timeouts(release: threading.Event) -> None:
    def func(key: str) -> int:
        if key == "bad":
            raise ValueError("boom")
        if key == "hang":
            release.wait()
        return len(key)

    calls: TimedCalls[str, int] = TimedCalls(func, timeout_s=0.1)
    out = calls.run_all(["ab", "bad", "hang", "ab"])
    assert out["ab"] == 2
    assert isinstance(out["bad"], ValueError)
    assert isinstance(out["hang"], CallTimeoutError)
    assert calls.stuck == frozenset({"hang"})
    for _ in range(20):  # the workers that returned are reused; the hung one stays busy
        again = calls.run_all(["ab", "bad", "hang", "xyz"])
        assert again["xyz"] == 3
        assert isinstance(again["hang"], CallTimeoutError)
    assert calls.threads == 4  # three calls a round, and the hung one


# --- diskio, net -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sda", "vda", "xvdb", "nvme0n1", "mmcblk0", "hdc", "sdaa"])
def test_physical_disks(name: str) -> None:
    assert is_physical_disk(name)


@pytest.mark.parametrize(
    "name",
    ["sda1", "nvme0n1p2", "mmcblk0p1", "mmcblk0boot0", "loop7", "ram0", "zram0", "dm-0", "md127"],
)
def test_not_physical_disks(name: str) -> None:
    assert not is_physical_disk(name)


def test_diskio_counters_and_rates() -> None:
    io = {"read_bytes": 1000, "write_bytes": 0, "read_count": 10, "write_count": 0}
    later = {"read_bytes": 5000, "write_bytes": 800, "read_count": 30, "write_count": 4}
    assert diskio_counters({"sda": io, "sda1": io, "loop0": io}) == {
        "diskio.read_bytes_per_s[sda]": 1000.0,
        "diskio.write_bytes_per_s[sda]": 0.0,
        "diskio.read_ops_per_s[sda]": 10.0,
        "diskio.write_ops_per_s[sda]": 0.0,
    }
    clock = FakeClock()
    collector = DiskIoCollector(read=Scripted({"sda": io}, {"sda": later}), clock=clock)
    clock.now += 2.0
    assert collector.collect() == {
        "diskio.read_bytes_per_s[sda]": 2000.0,
        "diskio.write_bytes_per_s[sda]": 400.0,
        "diskio.read_ops_per_s[sda]": 10.0,
        "diskio.write_ops_per_s[sda]": 2.0,
    }


def _nic(rx: int, tx: int = 0) -> dict[str, int]:
    return {"bytes_recv": rx, "bytes_sent": tx, "packets_recv": 1, "packets_sent": 1}


def test_net_counters_skip_loopback() -> None:
    assert net_counters({"lo": _nic(5), "eth0": _nic(7, 9)}) == {
        "net.rx_bytes_per_s[eth0]": 7.0,
        "net.tx_bytes_per_s[eth0]": 9.0,
        "net.rx_packets_per_s[eth0]": 1.0,
        "net.tx_packets_per_s[eth0]": 1.0,
    }


def test_net_collector_rates_and_32bit_wrap() -> None:
    clock = FakeClock()
    readings = Scripted(
        {"eth0": _nic(2**32 - 10, 100)},
        {"eth0": _nic(5, 300)},  # rx wrapped: no rx rate this round, tx still fine
        {"eth0": _nic(105, 300)},
    )
    collector = NetCollector(read=readings, clock=clock)
    clock.now += 1.0
    wrapped = collector.collect()
    assert "net.rx_bytes_per_s[eth0]" not in wrapped
    assert wrapped["net.tx_bytes_per_s[eth0]"] == 200.0
    clock.now += 4.0
    assert collector.collect()["net.rx_bytes_per_s[eth0]"] == 25.0


# --- temp ------------------------------------------------------------------------------


def test_temp_metrics_labels() -> None:
    sensors = {
        "coretemp": [("Package id 0", 51.0), ("Core 0", 49.0), ("Core 0", 50.0)],
        "acpitz": [("", 40.5), ("weird[1]", math.nan)],
    }
    assert temp_metrics(sensors) == {
        "temp.celsius[coretemp/Package id 0]": 51.0,
        "temp.celsius[coretemp/Core 0]": 49.0,
        "temp.celsius[coretemp/Core 0 (2)]": 50.0,
        "temp.celsius[acpitz/0]": 40.5,
    }
    assert TempCollector(read=dict).collect() == {}


# --- registry and collect_all ------------------------------------------------------------


class Fake:
    """A collector returning fixed metrics, or raising."""

    def __init__(self, name: str, metrics: dict[str, float] | None = None) -> None:
        self.name = name
        self._metrics = metrics

    def collect(self) -> dict[str, float]:
        if self._metrics is None:
            raise RuntimeError(f"{self.name} broke")
        return self._metrics


def test_build_collectors_selection() -> None:
    assert [c.name for c in build_collectors()] == list(REGISTRY)
    assert [c.name for c in build_collectors(["load", "cpu", "load"])] == ["load", "cpu"]
    assert "temp" not in [c.name for c in build_collectors(disabled=["temp"])]


@pytest.mark.parametrize(("enabled", "disabled"), [(["cpu", "gpu"], ()), (None, ["gpu"])])
def test_unknown_collector_is_a_config_error(
    enabled: list[str] | None, disabled: list[str]
) -> None:
    with pytest.raises(ConfigError, match=r"unknown collector 'gpu' \(known: cpu, ") as info:
        build_collectors(enabled, disabled)
    assert "\n" not in str(info.value)


def test_collector_that_cannot_start_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Fake:
        raise OSError("no /proc/stat")

    monkeypatch.setitem(REGISTRY, "cpu", broken)
    with pytest.raises(ConfigError, match="collector 'cpu' cannot start"):
        build_collectors(["cpu"])


def test_failing_collector_does_not_stop_others(caplog: pytest.LogCaptureFixture) -> None:
    collectors = [Fake("a", {"a.x": 1.0}), Fake("boom"), Fake("b", {"b.y[z]": 2.0})]
    durations: dict[str, float] = {}
    limiter = RateLimitedLog(60.0)
    with caplog.at_level(logging.WARNING):
        metrics, failed = collect_all(collectors, durations=durations, limiter=limiter)
        assert collect_all(collectors, limiter=limiter)[1] == ["boom"]
    assert metrics == {"a.x": 1.0, "b.y[z]": 2.0}
    assert failed == ["boom"]
    assert set(durations) == {"a", "boom", "b"}
    records = [r for r in caplog.records if r.getMessage() == "collector failed"]
    assert len(records) == 1  # rate limited: the second failure within a minute is silent
    fields = records[0].__dict__["fields"]
    assert fields["collector"] == "boom"
    assert fields["error"] == "RuntimeError: boom broke"


def test_collect_all_drops_keys_that_break_the_contract() -> None:
    bad = Fake("x", {"x.ok": 1.0, "X.Upper": 1.0, "x.nan": math.nan, "x.b[a[b]]": 1.0})
    metrics, failed = collect_all([bad], limiter=RateLimitedLog(60.0))
    assert metrics == {"x.ok": 1.0}
    assert failed == []


def test_real_collect_all_on_this_machine() -> None:
    collectors = build_collectors()
    time.sleep(0.1)
    metrics, failed = collect_all(collectors)
    assert failed == []
    assert {"cpu.percent", "memory.used_percent", "uptime.seconds", "procs.count"} <= set(metrics)
    for key, value in metrics.items():
        assert KEY_RE.fullmatch(key), key
        assert math.isfinite(value), key
    Sample(seq=0, ts=time.time(), metrics=metrics, failed=failed)


def test_registry_names_match_collector_names() -> None:
    for name, factory in REGISTRY.items():
        assert factory().name == name
