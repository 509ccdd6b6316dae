"""Pure value generation for one simulated device: seeded, deterministic, no I/O.

A :class:`DeviceProfile` fixes what the device is (cores, memory, mounts, baselines, the
phase of its daily curve); a :class:`MetricModel` turns a sample time into the metric dict a
real agent's collectors would produce (same keys, see ``edgefleet.agent.collectors``).

Outside a :class:`Spike` every value stays below the ``clear`` levels of
``backend/alerts/default_rules.yaml`` (the ``_CAP_*`` constants), so every alert the default rules
raise is explained by a spike listed in the ground truth, and resolves right after it. A
spike holds its metric key above the rule's threshold for its whole window.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

PEAK_HOUR_UTC = 14.0  # the daily load curve peaks at this wall-clock hour (plus the phase)
GIB = 1024**3

# Normal (non-spike) ceilings, each below the matching default rule's `clear` level, so an
# alert never starts outside a spike and resolves at the first sample after one.
_CAP_CPU = 78.0  # high_cpu > 90, clear 80
_CAP_MEMORY = 80.0  # high_memory > 90, clear 85
_CAP_DISK = 80.0  # disk_filling > 90, clear 85
_CAP_SWAP = 50.0  # high_swap > 80, clear 70
_CAP_TEMP = 73.0  # high_temperature > 80, clear 75
_CAP_LOAD_PER_CORE = 1.4  # high_load > 2, clear 1.5
_LOAD_TAUS = {"load1": 60.0, "load5": 300.0, "load15": 900.0}
_NET_BURSTS_PER_S = 1.0 / 600.0
_TEMP_TAU_S = 30.0


@dataclass(frozen=True, slots=True)
class SpikeKind:
    """A kind of incident: which key it drives and how far above the threshold it holds it."""

    name: str
    key: str  # exact metric key driven while the spike lasts
    level: float  # nominal value; level - jitter stays above the rule's threshold
    jitter: float
    hold_s: float  # default duration: the default rule's ``for`` plus a margin


SPIKE_KINDS: dict[str, SpikeKind] = {
    k.name: k
    for k in (
        SpikeKind("cpu", "cpu.percent", 96.0, 3.0, 390.0),  # high_cpu: for 5m
        SpikeKind("memory", "memory.used_percent", 94.0, 1.5, 390.0),  # high_memory: 5m
        SpikeKind("disk", "disk.used_percent[/]", 97.0, 1.0, 690.0),  # disk_full: 10m
        SpikeKind("swap", "swap.used_percent", 88.0, 3.0, 690.0),  # high_swap: 10m
        SpikeKind("temp", "temp.celsius[coretemp/Package id 0]", 86.0, 2.0, 210.0),  # 2m
        SpikeKind("load", "load.load5_per_core", 3.0, 0.4, 690.0),  # high_load: 10m
    )
}


@dataclass(frozen=True, slots=True)
class Spike:
    """One incident on one device: ``key`` held near ``level`` during ``[start, end)``."""

    kind: str
    key: str
    start: float
    end: float
    level: float

    def active(self, ts: float) -> bool:
        return self.start <= ts < self.end


def make_spike(kind: str, start: float, duration_s: float | None = None) -> Spike:
    """A spike of ``kind`` from ``start``, for ``duration_s`` or the kind's default hold."""
    spec = SPIKE_KINDS[kind]
    hold = spec.hold_s if duration_s is None else duration_s
    return Spike(kind, spec.key, start, start + hold, spec.level)


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """What a device is: fixed for the whole run."""

    cores: int
    mem_total: int
    swap_total: int
    mounts: tuple[tuple[str, int], ...]  # (mount point, total bytes); "/" first
    disks: tuple[str, ...]
    nics: tuple[str, ...]
    cpu_base: float  # percent at the daily trough
    cpu_amplitude: float  # added at the daily peak
    phase_h: float  # shift of the daily peak, hours
    mem_base: float  # used percent at the trough
    disk_used: tuple[float, ...]  # used percent per mount at the start
    disk_growth_per_h: float  # percent per hour, every mount
    net_base: float  # received bytes/s at the trough
    temp_idle: float  # Celsius at 0 % CPU
    procs_base: int
    boot_ts: float  # when the device booted (Unix seconds)


def make_profile(rng: random.Random, now: float) -> DeviceProfile:
    """Draw a plausible edge device (a Pi-class board up to a small x86 box)."""
    cores = rng.choice((2, 4, 4, 8))
    mounts: tuple[tuple[str, int], ...] = (("/", rng.choice((16, 32, 64, 128)) * GIB),)
    if rng.random() < 0.3:
        mounts += (("/data", rng.choice((256, 512)) * GIB),)
    mem_total = rng.choice((1, 2, 4, 8)) * GIB
    return DeviceProfile(
        cores=cores,
        mem_total=mem_total,
        swap_total=mem_total // 2,
        mounts=mounts,
        disks=(rng.choice(("mmcblk0", "sda", "nvme0n1")),),
        nics=("eth0",) if rng.random() < 0.7 else ("eth0", "wlan0"),
        cpu_base=rng.uniform(3.0, 20.0),
        cpu_amplitude=rng.uniform(10.0, 40.0),
        phase_h=rng.uniform(-3.0, 3.0),
        mem_base=rng.uniform(25.0, 60.0),
        disk_used=tuple(rng.uniform(20.0, 70.0) for _ in mounts),
        disk_growth_per_h=rng.uniform(0.001, 0.02),
        net_base=rng.uniform(2e3, 50e3),
        temp_idle=rng.uniform(32.0, 42.0),
        procs_base=rng.randint(90, 260),
        boot_ts=now - rng.uniform(3600.0, 30 * 86400.0),
    )


def diurnal(ts: float, phase_h: float = 0.0) -> float:
    """The daily load curve in [0, 1]: 1 at ``PEAK_HOUR_UTC + phase_h``, 0 twelve hours off."""
    hour = (ts % 86400.0) / 3600.0
    return 0.5 + 0.5 * math.cos(2.0 * math.pi * (hour - PEAK_HOUR_UTC - phase_h) / 24.0)


def _clip(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def _ewma(old: float, target: float, dt: float, tau: float) -> float:
    keep = math.exp(-dt / tau)
    return old * keep + target * (1.0 - keep)


class MetricModel:
    """Turns sample times into metric dicts; the only state is what a real host carries
    over between readings (load averages, temperature lag, memory drift, network bursts)."""

    def __init__(self, profile: DeviceProfile, rng: random.Random, t0: float) -> None:
        self.p = profile
        self.rng = rng
        self.t0 = t0
        self.boot_ts = profile.boot_ts
        self._last_ts: float | None = None
        busy = profile.cpu_base / 100.0 * profile.cores
        self._load = dict.fromkeys(_LOAD_TAUS, busy)
        self._temp = profile.temp_idle + 0.35 * profile.cpu_base
        self._mem_drift = 0.0
        self._burst_until = 0.0
        self._burst_factor = 1.0

    def reboot(self, ts: float) -> None:
        """The device lost power: uptime restarts, loads and memory drift start afresh."""
        self.boot_ts = ts
        self._load = dict.fromkeys(_LOAD_TAUS, 0.0)
        self._mem_drift = 0.0

    def sample(self, ts: float, spike: Spike | None = None) -> dict[str, float]:
        """Every metric of one reading taken at ``ts`` (with ``spike`` applied if active)."""
        dt = 10.0 if self._last_ts is None else max(0.0, ts - self._last_ts)
        self._last_ts = ts
        day = diurnal(ts, self.p.phase_h)
        out: dict[str, float] = {}
        cpu = self._cpu(out, day)
        self._loads(out, cpu, dt)
        mem = self._memory(out, day)
        self._swap(out, mem)
        self._disks(out, ts, day)
        self._net(out, ts, day, dt)
        self._temps(out, cpu, dt)
        out["uptime.seconds"] = round(max(0.0, ts - self.boot_ts), 1)
        out["procs.count"] = float(self.p.procs_base + int(25 * day) + self.rng.randint(-3, 3))
        if spike is not None and spike.active(ts):
            self._apply_spike(out, spike)
        return out

    def _cpu(self, out: dict[str, float], day: float) -> float:
        rng = self.rng
        target = _clip(self.p.cpu_base + self.p.cpu_amplitude * day + rng.gauss(0, 3), 0.5, 75)
        cores = [_clip(target + rng.gauss(0, 6), 0.0, 100.0) for _ in range(self.p.cores)]
        cpu = min(_CAP_CPU, sum(cores) / len(cores))
        out["cpu.percent"] = round(cpu, 2)
        out["cpu.iowait_percent"] = round(_clip(0.3 + 2 * day + rng.expovariate(2.0), 0, 20), 2)
        for index, value in enumerate(cores):
            out[f"cpu.core_percent[{index}]"] = round(value, 2)
        return cpu

    def _loads(self, out: dict[str, float], cpu: float, dt: float) -> None:
        runnable = max(0.0, cpu / 100.0 * self.p.cores * 1.1 + self.rng.gauss(0, 0.1))
        for name, tau in _LOAD_TAUS.items():
            self._load[name] = _ewma(self._load[name], runnable, dt, tau)
            value = min(self._load[name], _CAP_LOAD_PER_CORE * self.p.cores)
            out[f"load.{name}"] = round(value, 2)
            out[f"load.{name}_per_core"] = round(value / self.p.cores, 3)

    def _memory(self, out: dict[str, float], day: float) -> float:
        self._mem_drift = _clip(self._mem_drift + self.rng.gauss(0, 0.05), -5.0, 5.0)
        used = self.p.mem_base + 10 * day + self._mem_drift + self.rng.gauss(0, 0.4)
        used = _clip(used, 5.0, _CAP_MEMORY)
        self._set_memory(out, used)
        return used

    def _set_memory(self, out: dict[str, float], used: float) -> None:
        total = self.p.mem_total
        out["memory.total_bytes"] = float(total)
        out["memory.available_bytes"] = float(int(total * (1.0 - used / 100.0)))
        out["memory.used_percent"] = round(used, 2)

    def _swap(self, out: dict[str, float], mem: float) -> None:
        used = _clip(1.0 + max(0.0, mem - 70.0) * 1.5 + self.rng.gauss(0, 0.2), 0.0, _CAP_SWAP)
        out["swap.total_bytes"] = float(self.p.swap_total)
        out["swap.used_percent"] = round(used, 2)

    def _disks(self, out: dict[str, float], ts: float, day: float) -> None:
        grown = self.p.disk_growth_per_h * max(0.0, ts - self.t0) / 3600.0
        for (mount, total), used0 in zip(self.p.mounts, self.p.disk_used, strict=True):
            self._set_disk(out, mount, total, min(_CAP_DISK, used0 + grown))
        for disk in self.p.disks:
            read = 40e3 * (1 + 3 * day) * self.rng.lognormvariate(0, 0.5)
            write = 80e3 * (1 + 2 * day) * self.rng.lognormvariate(0, 0.5)
            out[f"diskio.read_bytes_per_s[{disk}]"] = round(read, 1)
            out[f"diskio.write_bytes_per_s[{disk}]"] = round(write, 1)
            out[f"diskio.read_ops_per_s[{disk}]"] = round(read / 4096, 2)
            out[f"diskio.write_ops_per_s[{disk}]"] = round(write / 8192, 2)

    @staticmethod
    def _set_disk(out: dict[str, float], mount: str, total: int, used: float) -> None:
        out[f"disk.total_bytes[{mount}]"] = float(total)
        out[f"disk.free_bytes[{mount}]"] = float(int(total * (1.0 - used / 100.0)))
        out[f"disk.used_percent[{mount}]"] = round(used, 2)
        out[f"disk.inodes_used_percent[{mount}]"] = round(used * 0.3, 2)

    def _net(self, out: dict[str, float], ts: float, day: float, dt: float) -> None:
        rng = self.rng
        if ts >= self._burst_until and rng.random() < 1 - math.exp(-_NET_BURSTS_PER_S * dt):
            self._burst_until = ts + rng.uniform(5.0, 60.0)
            self._burst_factor = rng.uniform(5.0, 30.0)
        burst = self._burst_factor if ts < self._burst_until else 1.0
        for index, nic in enumerate(self.p.nics):
            share = 1.0 if index == 0 else 0.2
            rx = self.p.net_base * share * (1 + 4 * day) * rng.lognormvariate(0, 0.3) * burst
            tx = rx * rng.uniform(0.1, 0.4)
            out[f"net.rx_bytes_per_s[{nic}]"] = round(rx, 1)
            out[f"net.tx_bytes_per_s[{nic}]"] = round(tx, 1)
            out[f"net.rx_packets_per_s[{nic}]"] = round(rx / 900.0, 2)
            out[f"net.tx_packets_per_s[{nic}]"] = round(tx / 300.0, 2)
            out[f"net.rx_errors_per_s[{nic}]"] = 0.1 if rng.random() < 0.002 else 0.0
            out[f"net.tx_errors_per_s[{nic}]"] = 0.0

    def _temps(self, out: dict[str, float], cpu: float, dt: float) -> None:
        self._temp = _ewma(self._temp, self.p.temp_idle + 0.35 * cpu, dt, _TEMP_TAU_S)
        package = _clip(self._temp + self.rng.gauss(0, 0.4), 20.0, _CAP_TEMP)
        out["temp.celsius[coretemp/Package id 0]"] = round(package, 1)
        for index in range(self.p.cores):
            core = _clip(package - 1.5 + self.rng.gauss(0, 0.8), 20.0, _CAP_TEMP)
            out[f"temp.celsius[coretemp/Core {index}]"] = round(core, 1)

    def _apply_spike(self, out: dict[str, float], spike: Spike) -> None:
        spec = SPIKE_KINDS[spike.kind]
        rng = self.rng

        def level() -> float:
            return spike.level + rng.uniform(-spec.jitter, spec.jitter)

        if spike.kind == "cpu":
            cores = [min(100.0, level()) for _ in range(self.p.cores)]
            for index, value in enumerate(cores):
                out[f"cpu.core_percent[{index}]"] = round(value, 2)
            out["cpu.percent"] = round(sum(cores) / len(cores), 2)
        elif spike.kind == "memory":
            self._set_memory(out, level())
        elif spike.kind == "disk":
            self._set_disk(out, "/", self.p.mounts[0][1], min(99.9, level()))
        elif spike.kind == "load":
            per_core = {name: level() for name in _LOAD_TAUS}
            for name, value in per_core.items():
                out[f"load.{name}_per_core"] = round(value, 3)
                out[f"load.{name}"] = round(value * self.p.cores, 2)
        else:  # swap, temp: the key alone
            out[spike.key] = round(level(), 2)


# --- disk scenarios for the predictive disk alert (issue 18) ----------------------------------
DISK_SCENARIOS = ("linear", "rotation", "noisy", "sudden")


def disk_series(
    scenario: str, *, seed: int = 0, days: float = 3.0, step_s: float = 60.0, t0: float = 0.0
) -> tuple[list[tuple[float, float]], float | None]:
    """``disk.used_percent`` of one mount every ``step_s`` for ``days``, and when it is full
    (None if never). Seeded, deterministic:

    - ``linear``: 30 % rising 1.5 %/h (full after ~47 h), noise 0.3;
    - ``rotation``: 40 % rising 1.5 %/h, rotated back to 40 % every day at 03:00, noise 0.3;
    - ``noisy``: stable at 85 %, noise 1.0, and every ~2 h a 5-minute burst of +4 (temp files);
    - ``sudden``: stable at 50 % for 30 h, then a runaway log adds 12 %/h (full ~4.2 h later).
    """
    if scenario not in DISK_SCENARIOS:
        raise ValueError(f"disk scenario must be one of {', '.join(DISK_SCENARIOS)}")
    rng = random.Random(f"{scenario}-{seed}")
    points: list[tuple[float, float]] = []
    full_at: float | None = None
    burst_until = -1.0
    for i in range(int(days * 86400 / step_s)):
        hours = i * step_s / 3600.0
        ts = t0 + i * step_s
        if scenario == "noisy" and hours * 3600 >= burst_until + 5400 and rng.random() < 0.02:
            burst_until = hours * 3600 + 300
        level = _disk_level(scenario, hours, burst=hours * 3600 < burst_until)
        noise = rng.gauss(0.0, 1.0 if scenario == "noisy" else 0.3)
        value = min(100.0, max(0.0, level + noise))
        points.append((ts, round(value, 2)))
        if level >= 100.0:
            full_at = ts
            break
    return points, full_at


def _disk_level(scenario: str, hours: float, *, burst: bool) -> float:
    if scenario == "linear":
        return 30.0 + 1.5 * hours
    if scenario == "rotation":
        since_rotation = (hours - 3.0) % 24.0  # rotated every day at 03:00
        return 40.0 + 1.5 * since_rotation
    if scenario == "noisy":
        return 85.0 + (4.0 if burst else 0.0)
    return 50.0 + 12.0 * max(0.0, hours - 30.0)  # sudden
