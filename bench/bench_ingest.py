"""Backend ingest: the highest rate held for 60 s from many devices, with nothing lost.

Run: ``python bench/bench_ingest.py [--devices 200] [--steps 2000,4000,6000,8000,10000]
[--step-s 15] [--hold-s 60] [--catchup-s 3] [--drain 20000] [--generators 1]
[--broker-inflight 0]`` (about 4 minutes).

Starts a Mosquitto on 127.0.0.1 (temp folder, mTLS, the fleet ACL), the real backend
process (``python -m edgefleet backend``, ``EDGE_BACKEND_AWS_LIMITS=false``, a temp SQLite
file), a *bare* awsiotsdk MQTT5 subscriber in this process (the backend's certificate, so the
ACL grants it the fleet, but client id ``bench-bare`` so it does not kick the backend's
``backend`` session; it only counts ``dt/edgefleet/+/metrics`` messages) and a load
generator in a separate process (``_loadgen.py``): ``--devices`` identities, each with its own
certificate and MQTT connection, publishing single-sample ``MetricsMessage`` payloads
(30 metric keys + health, ~1.2 KB, gap-free seq per device) at QoS 1, paced by a token
bucket at a fixed aggregate rate, devices taking turns.

1. Warm-up: 2 s at 500 msgs/s; the backend and the bare subscriber must get every message.
2. Ramp: each rate of ``--steps`` for ``--step-s`` seconds. Per step, over the generator's
   publishing time: the rate PUBACKed by the broker, the bare subscriber's and the backend's
   receive rate (backend: ``edgefleet_ingest_messages_total`` from ``/metrics``, sampled every
   0.5 s and interpolated), the largest backlog seen (PUBACKed but not yet handled by the
   backend) and the catch-up: the time from the end of publishing until the backend has
   handled every message. A step is *kept up* when no publish failed and the catch-up took at
   most 5 % of the step's length (at least 0.5 s, at most ``--catchup-s``): the backend then
   ingested at least ~95 % of the offered rate with a bounded lag. The ramp stops at the
   first step not kept up, or when the generator falls below 90 % of the target.
3. Hold: the highest kept-up rate for ``--hold-s`` seconds (60), same measurements, plus CPU
   (``psutil`` user+system time / wall time, % of one core) of the backend, the broker, the
   generator and this process (bare subscriber), the time the backend's threads were
   runnable but waiting for a CPU (``/proc/<pid>/task/*/schedstat``), the machine's busy
   cores and the backend's RSS. If the hold is not kept up, one more hold at the next lower
   kept-up step is tried. The figure "held" is the PUBACKed rate of a kept-up hold.
4. Drain (``--drain N``, default 20,000): the backend is stopped (SIGTERM), N messages are
   published while it is away (its persistent session queues them at the broker), then it
   is restarted and the rate at which it works off the backlog is measured (from its first
   ``/metrics`` answer until it has all N). Generator and bare subscriber are idle then, so
   this is the backend's own capacity on this machine next to the broker. Larger backlogs
   (``--drain 60000``) drain far slower: Mosquitto 2.0.11 then sends the resumed session
   several thousand messages beyond its in-flight window, and awscrt queues each manual
   PUBACK with a linear walk over the PUBACKs not yet written (quadratic; seen with
   ``perf``), so the SDK's event-loop thread spins while broker and backend code idle.
5. No loss: at the end the backend's ``edgefleet_ingest_samples_total`` (both processes)
   must equal the number of messages the broker acknowledged (one sample each),
   ``edgefleet_lost_samples`` 0, no rejected messages; duplicates are reported.

Targets: >= 5,000 msgs/s held for 60 s with no loss, and backend rate / bare subscriber rate
>= 0.5 in the same run. All four processes (broker, generator, backend, bare subscriber)
share this machine's cores: on a 2-core VM the figure is the rate of the whole pipeline on
2 cores, not of the backend alone. "backend msgs per CPU-second" (messages handled divided by
the backend's CPU time, all its threads) says roughly what it would do with a core to
itself; the drain rate is the closest to the backend's own ceiling that this machine shows.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from _loadgen import ACKED, FAILED, REFUSED, SENT, Device, GenConfig, generator_main
from benchlib import HOST, MIB, OBSERVER, exit_on_sigterm, figure, print_machine, print_result
from edgefleet.common.logs import setup_logging
from edgefleet.dev.broker import Mosquitto, free_port
from edgefleet.wire.messages import METRICS_FILTER

RATE_TARGET = 5_000.0
RATIO_TARGET = 0.5
CATCHUP_SHARE = 0.05  # a kept-up step is fully ingested within 5 % of its length after it
WARMUP_RATE, WARMUP_S = 500.0, 2.0
READY_LINE = "subscribed to the fleet"


# --- the broker, the backend, the bare subscriber --------------------------------------------


class Broker(Mosquitto):
    """The harness broker with some settings replaced (``{option: value}``), e.g.
    ``max_inflight_messages`` (the window of unacknowledged messages towards the backend,
    which sets no receive maximum; AWS IoT Core: 100) or ``autosave_interval``."""

    def __init__(self, workdir: Path, overrides: dict[str, int]) -> None:
        super().__init__(workdir, host=HOST, readers=(OBSERVER,))
        self.overrides = overrides

    def prepare(self) -> None:
        super().prepare()
        lines = self.conf.read_text().splitlines()
        for option, value in self.overrides.items():
            lines = [line for line in lines if not line.startswith(f"{option} ")]
            lines.insert(1, f"{option} {value}")
        self.conf.write_text("\n".join(lines) + "\n")

    def pid(self) -> int:
        proc = self._proc
        assert proc is not None
        return proc.pid


class Backend:
    """``python -m edgefleet backend`` with EDGE_BACKEND_* settings for the local broker."""

    def __init__(self, broker: Mosquitto, workdir: Path) -> None:
        cert, key, ca = broker.identity("backend")
        self.http_port = free_port(HOST)
        self.log_path = workdir / "backend.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_BACKEND_")}
        settings = {
            "endpoint": HOST, "port": broker.port, "cert_file": cert, "key_file": key,
            "ca_file": ca, "db_path": workdir / "fleet.db", "http_host": HOST,
            "http_port": self.http_port, "aws_limits": "false",
        }
        for name, value in settings.items():
            self.env[f"EDGE_BACKEND_{name.upper()}"] = str(value)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self.latency = 0.0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgefleet", "backend"], env=self.env,
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        self.ps = psutil.Process(self.proc.pid)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def metrics(self, timeout: float = 30.0) -> dict[str, float]:
        """``/metrics`` as {name or name{labels}: value}; ``latency`` keeps the time it took
        (the event loop that serves it also runs ingest: a long answer is a blocked loop)."""
        url = f"http://{HOST}:{self.http_port}/metrics"
        started = time.monotonic()
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
        self.latency = time.monotonic() - started
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/metrics`` answers and the log says the fleet subscription is in place."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"backend exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                self.metrics()
                if self.log_path.read_text(errors="replace").count(READY_LINE):
                    return
            time.sleep(0.2)
        raise TimeoutError(f"backend not ready in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class BareSubscriber:
    """awsiotsdk MQTT5 client straight from the builder; the callback only counts."""

    def __init__(self, broker: Mosquitto) -> None:
        from awscrt import mqtt5
        from awsiot import mqtt5_client_builder

        cert, key, ca = broker.identity(OBSERVER)
        self.count = 0
        self._connected = threading.Event()
        self._stopped = threading.Event()
        self._mqtt5 = mqtt5
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=HOST, port=broker.port, cert_filepath=str(cert), pri_key_filepath=str(key),
            ca_filepath=str(ca), client_id=OBSERVER,
            extended_validation_and_flow_control_options=(
                mqtt5.ExtendedValidationAndFlowControlOptions.NONE),
            on_publish_received=self._on_publish,
            on_lifecycle_connection_success=lambda _d: self._connected.set(),
            on_lifecycle_stopped=lambda _d: self._stopped.set(),
        )

    def _on_publish(self, _data: Any) -> None:
        self.count += 1  # one CRT thread delivers this connection's messages

    def start(self, timeout: float = 15.0) -> None:
        mqtt5 = self._mqtt5
        self.client.start()
        if not self._connected.wait(timeout):
            raise TimeoutError("bare subscriber did not connect")
        packet = mqtt5.SubscribePacket(subscriptions=[
            mqtt5.Subscription(topic_filter=METRICS_FILTER, qos=mqtt5.QoS.AT_LEAST_ONCE)])
        suback = self.client.subscribe(packet).result(timeout)
        if any(int(c) >= 128 for c in suback.reason_codes):
            raise RuntimeError(f"bare subscriber refused: {suback.reason_codes}")

    def stop(self) -> None:
        self.client.stop(self._mqtt5.DisconnectPacket())
        self._stopped.wait(3.0)


# --- the generator processes -----------------------------------------------------------------


class Generators:
    """``count`` generator processes, each with a share of the devices and of the rate."""

    def __init__(self, broker: Mosquitto, devices: list[Device], count: int) -> None:
        ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.shared: list[Any] = []
        ca = str(broker.identity("backend")[2])
        for i in range(count):
            mine = tuple(devices[i::count])
            parent, child = ctx.Pipe()
            shared = ctx.Array("q", 4, lock=False)
            cfg = GenConfig(host=HOST, port=broker.port, ca=ca, devices=mine, seed=i + 1)
            proc = ctx.Process(target=generator_main, args=(child, cfg, shared), daemon=True,
                               name=f"loadgen-{i}")
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
            self.shared.append(shared)

    def wait_ready(self, timeout: float = 120.0) -> float:
        connect_s = 0.0
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if not conn.poll(timeout):
                raise TimeoutError(f"{proc.name} not ready in {timeout}s")
            kind, info = conn.recv()
            if kind != "ready":
                raise RuntimeError(f"{proc.name} failed:\n{info}")
            connect_s = max(connect_s, info["connect_s"])
        return connect_s

    def counter(self, index: int) -> int:
        return sum(int(s[index]) for s in self.shared)

    def start_step(self, rate: float, seconds: float) -> None:
        for conn in self.conns:
            conn.send(("run", rate / len(self.conns), seconds))

    def step_done(self, timeout: float) -> list[dict[str, Any]] | None:
        """The per-process step stats once every process finished, else None."""
        if not all(conn.poll(timeout) for conn in self.conns):
            return None
        return [conn.recv()[1] for conn in self.conns]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


# --- measuring ---------------------------------------------------------------------------------


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def _runq_wait_s(pids: list[int]) -> float:
    """Seconds the threads of ``pids`` spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(stat.read_text().split()[1])
    return total / 1e9


def _busy_s() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _at(series: list[tuple[float, ...]], t: float, col: int) -> float:
    """Column ``col`` of a time series of counters, linearly interpolated at time ``t``."""
    before = max((row for row in series if row[0] <= t), default=series[0], key=lambda r: r[0])
    after = min((row for row in series if row[0] >= t), default=series[-1], key=lambda r: r[0])
    if after[0] <= before[0]:
        return before[col]
    share = (t - before[0]) / (after[0] - before[0])
    return before[col] + share * (after[col] - before[col])


@dataclass
class Step:
    """One measured window: the generator's publishing time, ``t_start`` to ``t_end``."""

    name: str
    target: float
    gen: dict[str, Any] = field(default_factory=dict)
    window_s: float = 0.0
    acked_rate: float = 0.0
    bare_rate: float = 0.0
    backend_rate: float = 0.0
    max_backlog: int = 0
    catchup_s: float | None = None  # None: the backend did not catch up in time
    allowed_s: float = 0.0  # the catch-up that still counts as kept up
    bare_catchup_s: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core
    rss_max: int = 0
    latency_max: float = 0.0  # slowest /metrics answer, s
    kept_up: bool = False

    @property
    def ratio(self) -> float:
        return self.backend_rate / self.bare_rate if self.bare_rate else 0.0

    @property
    def gen_limited(self) -> bool:
        return self.acked_rate < 0.9 * self.target


@dataclass
class Drain:
    """The backend restarted onto a backlog queued for it at the broker."""

    backlog: int = 0
    fill_rate: float = 0.0
    bare_rate: float = 0.0  # what the bare subscriber received during the fill
    rate: float = 0.0
    seconds: float = 0.0
    cpu_percent: float = 0.0
    wait_percent: float = 0.0  # runnable, waiting for a CPU (all threads), % of the time
    rss_max: int = 0
    done: bool = False
    progress: list[tuple[float, int]] = field(default_factory=list)  # (s, samples)
    log_errors: list[str] = field(default_factory=list)  # backend warnings while draining


class Bench:
    def __init__(self, args: argparse.Namespace, backend: Backend, bare: BareSubscriber,
                 gens: Generators, broker_pid: int) -> None:
        self.args = args
        self.backend = backend
        self.bare = bare
        self.gens = gens
        self.pids = {"backend": [backend.proc.pid if backend.proc else 0],
                     "broker": [broker_pid], "generator": gens.pids(), "bench": [os.getpid()]}
        self.earlier: dict[str, float] = {}  # counters of backend processes that have ended

    def backend_count(self) -> int:
        return int(self.backend.metrics()["edgefleet_ingest_messages_total"])

    def _check_alive(self) -> None:
        if not self.backend.alive:
            raise RuntimeError(f"backend exited:\n{self.backend.log_tail()}")
        if not all(p.is_alive() for p in self.gens.procs):
            raise RuntimeError("a generator process died")

    def _sample(self) -> tuple[float, int, int, int]:
        """(time, PUBACKed, bare received, backend handled), read at about the same time."""
        t0 = time.monotonic()
        backend = self.backend_count()
        t1 = time.monotonic()
        return (t0 + t1) / 2, self.gens.counter(ACKED), self.bare.count, backend

    def wait_caught_up(self, since: float, timeout: float) -> tuple[float | None, float | None]:
        """Seconds after ``since`` until the backend / the bare subscriber counted every
        PUBACKed message (None: not within ``timeout``)."""
        want = self.gens.counter(ACKED)
        backend_s = bare_s = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if bare_s is None and self.bare.count >= want:
                bare_s = time.monotonic() - since
            if backend_s is None and self.backend_count() >= want:
                backend_s = time.monotonic() - since
            if backend_s is not None and bare_s is not None:
                break
            self._check_alive()
            time.sleep(0.05)
        return backend_s, bare_s

    def step(self, name: str, rate: float, seconds: float, catchup_timeout: float) -> Step:
        st = Step(name, rate)
        assert self.backend.ps is not None
        cpu0 = {k: _cpu_s(v) for k, v in self.pids.items()}
        busy0, wait0 = _busy_s(), _runq_wait_s(self.pids["backend"])
        series = [self._sample()]
        self.gens.start_step(rate, seconds)
        stats = None
        while stats is None:
            stats = self.gens.step_done(0.5)
            series.append(self._sample())
            st.latency_max = max(st.latency_max, self.backend.latency)
            st.rss_max = max(st.rss_max, self.backend.ps.memory_info().rss)
            self._check_alive()
        cpu1 = {k: _cpu_s(v) for k, v in self.pids.items()}
        busy1, wait1 = _busy_s(), _runq_wait_s(self.pids["backend"])
        cpu_s = series[-1][0] - series[0][0]
        t_start = max(s["t_start"] for s in stats)
        t_end = min(s["t_end"] for s in stats)
        st.window_s = t_end - t_start
        st.gen = {k: sum(s[k] for s in stats)
                  for k in ("rate", "sent", "acked", "failed", "refused", "unacked")}
        st.gen["acks_done_s"] = max(s["acks_done_s"] for s in stats)
        rates = [(_at(series, t_end, col) - _at(series, t_start, col)) / st.window_s
                 for col in (1, 2, 3)]
        st.acked_rate, st.bare_rate, st.backend_rate = rates
        st.max_backlog = max(row[1] - row[3] for row in series)
        st.cpu = {k: 100.0 * (cpu1[k] - cpu0[k]) / cpu_s for k in cpu0}
        st.cpu["machine"] = 100.0 * (busy1 - busy0) / cpu_s
        st.cpu["other"] = st.cpu["machine"] - sum(
            st.cpu[k] for k in ("backend", "broker", "generator", "bench"))
        st.cpu["backend_wait"] = 100.0 * (wait1 - wait0) / cpu_s
        st.catchup_s, st.bare_catchup_s = self.wait_caught_up(t_end, catchup_timeout)
        st.allowed_s = min(self.args.catchup_s, max(0.5, CATCHUP_SHARE * st.window_s))
        st.kept_up = (
            st.catchup_s is not None and st.catchup_s <= st.allowed_s
            and st.gen["failed"] == 0 and st.gen["refused"] == 0 and st.gen["unacked"] == 0
        )
        return st

    def drain(self, backlog: int, rate: float, timeout: float = 90.0) -> Drain:
        """Stop the backend, queue ``backlog`` messages for it, restart it, time the drain."""
        out = Drain(backlog)
        self.earlier = self.backend.metrics()  # caught up: every acked message is in it
        self.backend.stop()
        bare0 = self.bare.count
        self.gens.start_step(rate, backlog / rate)
        stats = None
        while stats is None:
            stats = self.gens.step_done(1.0)
        out.backlog = sum(s["acked"] for s in stats)
        fill_s = max(s["seconds"] for s in stats)
        out.fill_rate = out.backlog / fill_s
        out.bare_rate = (self.bare.count - bare0) / fill_s
        log_start = self.backend.log_path.stat().st_size
        self.backend.start()
        assert self.backend.ps is not None
        self.pids["backend"] = [self.backend.ps.pid]
        first: tuple[float, float, float, float] | None = None  # time, samples, CPU, wait
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                samples = self.backend.metrics()["edgefleet_ingest_samples_total"]
            except OSError:
                time.sleep(0.05)
                continue
            now, cpu = time.monotonic(), _cpu_s(self.pids["backend"])
            wait = _runq_wait_s(self.pids["backend"])
            out.rss_max = max(out.rss_max, self.backend.ps.memory_info().rss)
            if first is None:
                first = (now, samples, cpu, wait)
            out.progress.append((round(now - first[0], 2), int(samples)))
            if samples >= out.backlog:
                out.seconds = now - first[0]
                if out.seconds > 0:
                    out.rate = (samples - first[1]) / out.seconds
                    out.cpu_percent = 100.0 * (cpu - first[2]) / out.seconds
                    out.wait_percent = 100.0 * (wait - first[3]) / out.seconds
                out.done = True
                break
            time.sleep(0.2)
        with self.backend.log_path.open("rb") as log:
            log.seek(log_start)
            out.log_errors = [line.decode(errors="replace").strip() for line in log
                              if b" ERROR " in line or b" WARNING " in line][:5]
        return out

    def totals(self) -> dict[str, int]:
        """Every counter over the whole run (both backend processes when it was restarted)."""
        final = self.backend.metrics()

        def total(name: str) -> int:
            return int(final.get(name, 0) + self.earlier.get(name, 0))

        return {
            "sent": self.gens.counter(SENT), "acked": self.gens.counter(ACKED),
            "failed": self.gens.counter(FAILED), "refused": self.gens.counter(REFUSED),
            "bare_received": self.bare.count,
            "backend_messages": total("edgefleet_ingest_messages_total"),
            "backend_samples": total("edgefleet_ingest_samples_total"),
            "duplicates": total("edgefleet_ingest_duplicates_total"),
            "lost": int(final["edgefleet_lost_samples"]),  # restored from the store on start
            "rejected": int(sum(v for k, v in [*final.items(), *self.earlier.items()]
                                if k.startswith("edgefleet_ingest_rejected_total"))),
        }


# --- reporting -----------------------------------------------------------------------------------


HEADER = (f"{'step':<10}{'target':>8}{'acked/s':>8}{'bare/s':>8}{'backend/s':>10}{'ratio':>6}"
          f"{'backlog':>9}{'catch-up':>9}  {'kept':<5}{'CPU %: backend':>15}{'wait':>6}"
          f"{'broker':>7}{'gen':>6}{'bare':>6}{'other':>6}{'busy':>6}{'http':>7}")
LEGEND = (
    "acked/s: published and PUBACKed by the broker; bare/s, backend/s: received over the "
    "same window (the generator's publishing time); ratio: backend/s / bare/s; backlog: "
    "most messages PUBACKed but not yet handled by the backend (sampled every 0.5 s); "
    "catch-up: from the end of publishing until the backend handled every message; kept: "
    "no publish failed and the catch-up took at most 5 % of the step's length (at least "
    "0.5 s, at most {catchup:g} s), i.e. the backend ingested >= ~95 % of acked/s with a "
    "bounded lag; * = generator below 90 % of the target. CPU in % of one core: wait = "
    "time the backend's threads were runnable but waiting for a CPU (/proc schedstat), "
    "bare = this process (bare subscriber and polling), other = processes outside this "
    "benchmark, busy = the whole machine. http: slowest /metrics answer of the backend (its "
    "event loop also runs ingest)."
)


def row(st: Step) -> str:
    catch = "-" if st.catchup_s is None else f"{st.catchup_s:.1f} s"
    kept = ("yes" if st.kept_up else "NO") + ("*" if st.gen_limited else "")
    c = st.cpu
    return (f"{st.name:<10}{st.target:>8,.0f}{st.acked_rate:>8,.0f}{st.bare_rate:>8,.0f}"
            f"{st.backend_rate:>10,.0f}{st.ratio:>6.2f}{st.max_backlog:>9,}{catch:>9}  "
            f"{kept:<5}{c['backend']:>15.0f}{c['backend_wait']:>6.0f}{c['broker']:>7.0f}"
            f"{c['generator']:>6.0f}{c['bench']:>6.0f}{c['other']:>6.0f}{c['machine']:>6.0f}"
            f"{st.latency_max:>6.1f}s")


def step_doc(st: Step) -> dict[str, Any]:
    return {
        "name": st.name, "target": st.target, "acked": round(st.acked_rate),
        "bare": round(st.bare_rate), "backend": round(st.backend_rate),
        "ratio": round(st.ratio, 3), "max_backlog": st.max_backlog,
        "catchup_s": None if st.catchup_s is None else round(st.catchup_s, 2),
        "kept_up": st.kept_up, "failed": st.gen["failed"], "window_s": round(st.window_s, 2),
        "cpu_percent": {k: round(v, 1) for k, v in st.cpu.items()},
        "backend_rss_mib": round(st.rss_max / MIB, 1),
        "metrics_latency_max_s": round(st.latency_max, 3),
    }


def print_drain(drain: Drain) -> None:
    print(f"\ndrain     backend stopped, {drain.backlog:,} messages queued for it at "
          f"{drain.fill_rate:,.0f} msgs/s (bare subscriber meanwhile {drain.bare_rate:,.0f} "
          "msgs/s), backend restarted: "
          + (f"drained at {drain.rate:,.0f} msgs/s ({drain.seconds:.1f} s, CPU "
             f"{drain.cpu_percent:.0f} % of one core, waiting for a CPU "
             f"{drain.wait_percent:.0f} %, RSS max "
             f"{drain.rss_max / MIB:.1f} MiB)" if drain.done else "NOT drained in time"))
    marks = drain.progress[:: max(1, len(drain.progress) // 12)]
    print("          progress (s: samples) " + ", ".join(f"{t:g}: {n:,}" for t, n in marks))
    for line in drain.log_errors:
        print(f"          backend log: {line[:150]}")


# --- the run -----------------------------------------------------------------------------------


def _phases(args: argparse.Namespace, bench: Bench) -> tuple[list[Step], list[Step], list[Step]]:
    """Warm-up, ramp and hold; prints each step as it ends."""
    warm = bench.step("warm-up", WARMUP_RATE, WARMUP_S, 30.0)
    if warm.catchup_s is None or warm.bare_catchup_s is None or warm.gen["failed"]:
        raise RuntimeError(f"warm-up: not every message arrived (backend caught up: "
                           f"{warm.catchup_s}, bare: {warm.bare_catchup_s}, "
                           f"gen {warm.gen})\n{bench.backend.log_tail()}")
    print("\n" + HEADER)
    print(row(warm), flush=True)
    ramp: list[Step] = []
    for rate in args.steps:
        st = bench.step(f"ramp {rate / 1000:g}k", rate, args.step_s, 60.0)
        ramp.append(st)
        print(row(st), flush=True)
        if not st.kept_up or st.gen_limited:
            break
    passed = sorted({s.target for s in ramp if s.kept_up}, reverse=True)
    holds: list[Step] = []
    for rate in (passed or [args.steps[0]])[:2]:
        st = bench.step(f"hold {rate / 1000:g}k", rate, args.hold_s, 90.0)
        holds.append(st)
        print(row(st), flush=True)
        if st.kept_up:
            break
    print("\n" + textwrap.fill(LEGEND.format(catchup=args.catchup_s), 100))
    return [warm], ramp, holds


def report(args: argparse.Namespace, bench: Bench, steps: list[Step], holds: list[Step],
           drain: Drain | None) -> None:
    """Totals, the summary lines and the RESULT line; ``steps`` = warm-up + ramp."""
    totals = bench.totals()
    acked = totals["acked"]
    missing = acked - totals["backend_samples"]
    # more stored than PUBACKed (missing < 0): publishes stored before the generator counted
    # their PUBACK when it read its counters; duplicates are counted apart (0 here means none)
    no_loss = (missing <= 0 and totals["lost"] == 0
               and totals["rejected"] == 0 and totals["failed"] == 0)
    if missing > 0 and drain is not None and not drain.done:
        print(f"\nNOTE      {missing:,} messages were still queued at the broker for the "
              "backend when the drain timed out: loss not verified")
    print(f"\ntotals    {totals['sent']:,} sent, {acked:,} PUBACKed, {totals['failed']} "
          f"failed; bare subscriber {totals['bare_received']:,}; backend "
          f"{totals['backend_messages']:,} messages, {totals['backend_samples']:,} new "
          f"samples, {totals['duplicates']} duplicates, {totals['lost']} lost, "
          f"{totals['rejected']} rejected -> {'no loss' if no_loss else 'LOSS'}")

    hold = next((h for h in holds if h.kept_up), holds[-1])
    # kept up: every message PUBACKed during the hold was ingested by shortly after it
    held = hold.acked_rate if hold.kept_up else 0.0
    backend_cpu = hold.cpu["backend"]
    per_cpu_s = hold.backend_rate / (backend_cpu / 100.0) if backend_cpu > 0 else 0.0
    top = max((s.target for s in steps[1:] if s.kept_up), default=0.0)
    print(f"held      {held:,.0f} msgs/s for {hold.window_s:.0f} s "
          f"({'kept up' if hold.kept_up else 'NOT kept up'}); bare subscriber "
          f"{hold.bare_rate:,.0f} msgs/s; ratio {hold.ratio:.2f}; generator "
          f"{hold.acked_rate:,.0f} msgs/s")
    print(f"backend   CPU {backend_cpu:.0f} % of one core in the hold ({per_cpu_s:,.0f} msgs "
          f"per CPU-second), runnable but waiting for a CPU "
          f"{hold.cpu['backend_wait']:.0f} % of the time, RSS max "
          f"{hold.rss_max / MIB:.1f} MiB; machine busy "
          f"{hold.cpu['machine'] / 100:.2f} of {os.cpu_count()} cores, of which other "
          f"jobs {hold.cpu['other'] / 100:.2f}")
    top_step = steps[-1]  # the first step not kept up (or the last one)
    figures = [
        figure(f"ingest held {args.hold_s:g} s, no loss", round(held), "msgs/s",
               f">= {RATE_TARGET:,.0f}", held >= RATE_TARGET and no_loss),
        figure("backend / bare subscriber (hold)", round(hold.ratio, 3), "ratio",
               f">= {RATIO_TARGET:g}", hold.ratio >= RATIO_TARGET),
        figure("bare subscriber (hold)", round(hold.bare_rate), "msgs/s"),
        figure(f"backend / bare subscriber, top ramp step ({top_step.target:,.0f})",
               round(top_step.ratio, 3), "ratio"),
        figure("generator PUBACKed (hold)", round(hold.acked_rate), "msgs/s"),
        figure("highest ramp step kept up", round(top), "msgs/s"),
        figure("backend CPU (hold)", round(backend_cpu, 1), "% of one core"),
        figure("backend msgs per CPU-second (hold)", round(per_cpu_s), "msgs/s"),
        figure("backend RSS max (hold)", round(hold.rss_max / MIB, 1), "MiB"),
        figure("backend /metrics answer max (hold)", round(hold.latency_max, 2), "s"),
        figure("samples lost or missing", max(0, missing) + totals["lost"], "samples", "0",
               no_loss),
        figure("duplicates removed", totals["duplicates"], "samples"),
    ]
    if drain is not None:
        figures += [
            figure("backlog drain after restart", round(drain.rate), "msgs/s"),
            figure("backend CPU while draining", round(drain.cpu_percent, 1),
                   "% of one core"),
        ]
    print_result(
        "ingest", figures, devices=args.devices, generators=args.generators,
        broker_inflight=args.broker_inflight or 1000, totals=totals,
        steps=[step_doc(s) for s in [*steps, *holds]],
        drain=None if drain is None else {
            "backlog": drain.backlog, "fill_rate": round(drain.fill_rate),
            "bare_rate": round(drain.bare_rate),
            "rate": round(drain.rate), "seconds": round(drain.seconds, 2),
            "cpu_percent": round(drain.cpu_percent, 1), "done": drain.done,
            "wait_percent": round(drain.wait_percent, 1),
            "log_errors": drain.log_errors,
            "rss_max_mib": round(drain.rss_max / MIB, 1)},
    )


def run(args: argparse.Namespace, workdir: Path) -> None:
    overrides = {"autosave_interval": args.broker_autosave}
    if args.broker_inflight:
        overrides["max_inflight_messages"] = args.broker_inflight
    broker = Broker(workdir / "broker", overrides)
    backend: Backend | None = None
    bare: BareSubscriber | None = None
    gens: Generators | None = None
    try:
        broker.start()
        started = time.monotonic()
        names = [f"bench-dev-{i:04d}" for i in range(args.devices)]
        devices = [Device(n, *(str(p) for p in broker.identity(n)[:2])) for n in names]
        print(f"setup     {args.devices} device certificates in "
              f"{time.monotonic() - started:.1f} s; broker on port {broker.port}, "
              f"max_inflight_messages {args.broker_inflight or '1000 (harness default)'}, "
              f"autosave_interval {args.broker_autosave} s (harness: 60)")
        backend = Backend(broker, workdir)
        backend.start()
        bare = BareSubscriber(broker)
        bare.start()
        gens = Generators(broker, devices, args.generators)
        connect_s = gens.wait_ready()
        backend.wait_ready()
        print(f"setup     {args.devices} device connections in {connect_s:.1f} s "
              f"({args.generators} generator process(es)); backend ready")
        bench = Bench(args, backend, bare, gens, broker.pid())
        warm, ramp, holds = _phases(args, bench)
        drain = None
        if args.drain:
            drain = bench.drain(args.drain, max(args.steps))
            print_drain(drain)
        report(args, bench, [*warm, *ramp], holds, drain)
    finally:
        if gens is not None:
            gens.stop()
        if bare is not None:
            with contextlib.suppress(Exception):
                bare.stop()
        if backend is not None:
            backend.stop()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200, help="device identities")
    parser.add_argument("--steps", default="2000,4000,6000,8000,10000",
                        help="ramp rates, msgs/s, comma-separated")
    parser.add_argument("--step-s", type=float, default=15.0, help="seconds per ramp step")
    parser.add_argument("--hold-s", type=float, default=60.0, help="seconds of the hold")
    parser.add_argument("--catchup-s", type=float, default=3.0,
                        help="a kept-up step is fully ingested this soon after it ends")
    parser.add_argument("--drain", type=int, default=20_000,
                        help="backlog for the restart-and-drain phase (0: skip it)")
    parser.add_argument("--generators", type=int, default=1, help="generator processes")
    parser.add_argument("--broker-inflight", type=int, default=0,
                        help="Mosquitto max_inflight_messages (0: harness default, 1000)")
    parser.add_argument("--broker-autosave", type=int, default=3600,
                        help="Mosquitto autosave_interval, s (harness default: 60)")
    args = parser.parse_args()
    args.steps = [float(x) for x in args.steps.split(",") if x.strip()]
    exit_on_sigterm()
    setup_logging("ERROR")
    print_machine()
    print(f"workload  {args.devices} devices (own certificate and MQTT5 connection each), "
          f"single-sample MetricsMessage ~1.2 KB, 30 metric keys, QoS 1; ramp "
          f"{', '.join(f'{r:,.0f}' for r in args.steps)} msgs/s x {args.step_s:g} s, then "
          f"hold {args.hold_s:g} s, then a {args.drain:,}-message backlog drain; broker, "
          "backend, generator and bare subscriber on the same machine")
    sys.stdout.flush()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
