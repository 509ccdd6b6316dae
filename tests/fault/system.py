"""The whole system for the fault suite: broker, backend, Slack stand-in, real agents and the
fleet simulator, plus the end-of-run comparison with the simulator's ground truth.

    async with System(broker, tmp_path, SystemSpec(...)) as system:
        await system.start()           # everything up, every device flowing into the backend
        ...                            # inject the fault (system.broker.stop(), proxy.cut(), ...)
        await system.wait_flowing()    # every device publishes again
        await system.finish()          # stop the load, let it drain, check everything

What :meth:`System.finish` checks (the suite's definition of "nothing lost, nothing doubled,
still serving"):

- every process is alive and serving before the load stops: the backend answers
  ``/healthz`` 200 with its broker link up, each agent process runs, the broker runs, and
  every device's newest seq at the backend moved on after the fault;
- simulated devices: the backend's ``/api/sequences`` row is exactly the truth file's
  record: same stream, ``first_seq`` 0, ``last_seq`` and ``received`` equal to what the
  broker acknowledged, ``lost`` 0, nothing pending or dropped on the device;
- real agents (their SQLite queue is read after they stop): same stream; seqs 0..last all
  arrived except what the agent itself reported dropped (``lost`` == the queue's
  ``dropped_total`` == the ``dropped_total`` the backend shows for the agent); whatever the
  backend lacks above ``last_seq`` is still in the agent's queue (a durable tail, at most a
  sample or two left by the SIGTERM);
- alerts: the backend's events are exactly one ``firing`` and one ``resolved`` per scripted
  spike (nothing else, unless the test allows it), Slack got every event id exactly once and
  no other id, and the outbox is empty.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from blackhole import BlackholeProxy

from agentproc import AgentProc
from backendproc import BackendProc
from edgefleet.dev.broker import Mosquitto
from edgefleet.sim import ScriptedEvent, SimOptions, Truth, run_simulation
from fakeslack import FakeSlack

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
SPIKE_RULE = {"cpu": "high_cpu", "temp": "high_temperature"}

# Short `for` durations so a scripted spike of a few seconds fires and resolves. The real
# agents' metrics are whatever this machine does (a loaded CI box can sit at 95 % CPU), so the
# metric rules are off for them: every alert must be explained by the simulator's truth file.
# The offline rule keeps the shipped 60 s, longer than any outage here: no fault in this suite
# may page anyone about a device being offline.
RULES = """
version: 1
replay_grace: 2m
offline: {enabled: true, severity: critical, for: OFFLINE_FOR}
rules:
  - name: high_cpu
    metric: cpu.percent
    op: ">"
    threshold: 90
    clear: 80
    for: 2s
    overrides: [{devices: ["agent-*"], enabled: false}]
  - name: high_temperature
    metric: temp.celsius
    op: ">"
    threshold: 80
    clear: 75
    for: 1s
    overrides: [{devices: ["agent-*"], enabled: false}]
"""


@dataclass(frozen=True)
class AgentSpec:
    """One real agent process (``python -m edgefleet agent``)."""

    name: str = "agent-1"
    via_proxy: bool = False  # connect through the black-hole proxy
    queue_dir: Path | None = None  # where its SQLite queue lives (e.g. a small tmpfs)
    faketime_file: Path | None = None  # run under libfaketime, offset read from this file
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SystemSpec:
    """What runs: the simulated fleet, the agents, the spikes, the extra rules."""

    sim_devices: int = 20
    proxied_sim_devices: int = 0  # a second simulator whose devices go through the proxy
    sim_interval_s: float = 0.5
    spikes: tuple[ScriptedEvent, ...] = ()  # on the direct simulator's devices
    proxied_spikes: tuple[ScriptedEvent, ...] = ()
    agents: tuple[AgentSpec, ...] = (AgentSpec(),)
    agent_interval_s: float = 0.2
    extra_rules: str = ""  # YAML list items appended under `rules:`
    allowed_extra_alert_keys: tuple[str, ...] = ()  # alert keys a test expects besides spikes
    # devices outside the ground truth (e.g. a hostile publisher): their alerts and Slack
    # messages are not compared with the spikes
    unchecked_devices: tuple[str, ...] = ()
    seed: int = 20240601
    offline_for: str = "60s"  # the offline rule's `for`
    backend_settings: dict[str, Any] = field(default_factory=dict)  # extra EDGE_BACKEND_*
    backend_via_proxy: bool = False  # the backend's own link goes through the black hole


@dataclass
class QueueState:
    """A stopped agent's SQLite queue, read directly."""

    stream: str
    next_seq: int
    queued: list[int]
    dropped_total: int


@dataclass
class Figures:
    """What one run measured; printed and used by docs/faults.md."""

    name: str
    seconds: float = 0.0
    sim_samples: int = 0
    sim_publish_errors: int = 0
    sim_connects: int = 0
    agent_samples: dict[str, int] = field(default_factory=dict)
    agent_tail_queued: dict[str, int] = field(default_factory=dict)
    agent_dropped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    alerts: int = 0
    slack_messages: int = 0
    slack_statuses: dict[int, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return "FAULT-FIGURES " + json.dumps(self.__dict__, default=str, sort_keys=True)


def read_queue(path: Path) -> QueueState:
    """Stream, next seq, queued seqs and dropped total of an agent's queue (agent stopped)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        queued = [row[0] for row in conn.execute("SELECT seq FROM samples ORDER BY seq")]
    finally:
        conn.close()
    next_seq = max(int(meta["next_seq"]), (queued[-1] + 1) if queued else 0)
    return QueueState(str(meta["stream"]), next_seq, queued, int(meta["dropped_total"]))


def event_id(alert: dict[str, Any]) -> str:
    """The backend's deterministic event id (edgefleet.notify.model.event_id)."""
    return f"{alert['key']}|{alert['kind']}|{float(alert['started_at']):.3f}"


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


class System:
    """Owns every process and task of one fault run; ``async with`` cleans up on any exit."""

    def __init__(self, broker: Mosquitto, workdir: Path, spec: SystemSpec, name: str) -> None:
        self.broker = broker
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        self.figures = Figures(name)
        self.started = time.monotonic()
        self.slack = FakeSlack()
        self.proxy: BlackholeProxy | None = None
        self.backend: BackendProc | None = None
        self.agents: dict[str, AgentProc] = {}
        self.agent_specs = {a.name: a for a in spec.agents}
        self.old_agents: list[AgentProc] = []
        self.old_backends: list[BackendProc] = []
        self.sim_stop = asyncio.Event()
        self.sim_tasks: list[asyncio.Task[Truth]] = []
        self.truths: list[Truth] = []
        self.rules_file = workdir / "rules.yaml"
        self.sim_started = 0.0  # wall clock when the simulators started (their t0, roughly)
        self._slack_open = False
        self.after_close: list[Callable[[], None]] = []  # run once everything is stopped
        self.finished = False

    # --- life cycle -------------------------------------------------------------------------
    async def __aenter__(self) -> System:
        await self.slack.__aenter__()
        self._slack_open = True
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop whatever still runs (also after a failure): sims, agents, backend, proxy, Slack."""
        self.sim_stop.set()
        if self.sim_tasks:
            _, pending = await asyncio.wait(self.sim_tasks, timeout=15)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self.sim_tasks, return_exceptions=True)
        for proc in [*self.agents.values(), *self.old_agents]:
            await asyncio.to_thread(_terminate, proc.proc)
        for backend in [self.backend, *self.old_backends]:
            if backend is not None:
                await asyncio.to_thread(_terminate, backend.proc)
        if self.proxy is not None:
            await self.proxy.close()
        if self._slack_open:
            self._slack_open = False
            await self.slack.__aexit__(None, None, None)
        while self.after_close:
            self.after_close.pop()()
        if self.finished:
            self.finished = False
            print(self.figures.line())  # the suite's figures (pytest -s, or -rA), for the docs

    async def start(self) -> None:
        """Proxy, backend, agents and simulators up; returns when every device is flowing."""
        spec = self.spec
        if (spec.proxied_sim_devices or spec.backend_via_proxy
                or any(a.via_proxy for a in spec.agents)):
            self.proxy = await BlackholeProxy("127.0.0.1", self.broker.port).start()
        self.rules_file.write_text(RULES.replace("OFFLINE_FOR", spec.offline_for)
                                   + spec.extra_rules)
        self.backend = self._make_backend()
        self.backend.start()
        await asyncio.to_thread(self.backend.wait_healthy, 30)
        for agent in spec.agents:
            self.agents[agent.name] = self._make_agent(agent).start()
        self.sim_started = time.time()
        self._start_sim("sim", spec.sim_devices, self.broker.port, spec.spikes)
        if spec.proxied_sim_devices:
            assert self.proxy is not None
            self._start_sim("simp", spec.proxied_sim_devices, self.proxy.port, spec.proxied_spikes)
        await self.wait_flowing(timeout=60, what="start")

    def _make_backend(self, http_port: int | None = None) -> BackendProc:
        settings = dict(self.spec.backend_settings)
        if self.spec.backend_via_proxy:
            assert self.proxy is not None
            settings["port"] = self.proxy.port
        return BackendProc(
            self.broker, self.workdir / "backend", http_port=http_port,
            rules_file=self.rules_file, slack_webhook_url=self.slack.webhook_url,
            alert_group_window_s=0.5, **settings,
        )

    def _make_agent(self, spec: AgentSpec) -> AgentProc:
        settings: dict[str, Any] = {
            "interval_s": self.spec.agent_interval_s, "keep_alive_s": 5, "reconnect_max_s": 2,
            "aws_limits": "false",
        }
        if spec.via_proxy:
            assert self.proxy is not None
            settings["port"] = self.proxy.port
        queue_dir = spec.queue_dir or self.workdir / "agents"
        queue_dir.mkdir(parents=True, exist_ok=True)
        settings["queue_path"] = queue_dir / f"{spec.name}-queue.db"
        settings.update(spec.settings)
        (self.workdir / "agents").mkdir(parents=True, exist_ok=True)
        agent = AgentProc(self.broker, self.workdir / "agents", thing=spec.name, **settings)
        agent.queue_path = settings["queue_path"]
        if spec.faketime_file is not None:
            agent.env.update({
                "LD_PRELOAD": str(FAKETIME_LIB),
                "FAKETIME_TIMESTAMP_FILE": str(spec.faketime_file),
                "FAKETIME_NO_CACHE": "1",  # a new offset applies at once
                # Only the wall clock jumps, as with a real clock step (NTP, RTC): the
                # monotonic clock never does, and asyncio's timers run on it.
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                # File times stay real: faking them re-reads the offset file on every stat()
                # and made the collectors (psutil) 40x slower, so the agent skipped ticks.
                "NO_FAKE_STAT": "1",
            })
        return agent

    def _start_sim(self, prefix: str, devices: int, port: int, spikes: tuple[ScriptedEvent, ...]
                   ) -> None:
        if devices <= 0:
            return
        opts = SimOptions(
            devices=devices, interval_s=self.spec.sim_interval_s, port=port,
            pki=self.broker.pki, prefix=prefix, seed=self.spec.seed, spike_rate=0.0,
            dropout_rate=0.0, script=spikes, truth_file=self.workdir / f"truth-{prefix}.json",
            truth_every_s=2.0, keep_alive_s=5, reconnect_max_s=2.0, stop_budget_s=8.0,
        )
        task = asyncio.create_task(run_simulation(opts, self.sim_stop), name=f"sim-{prefix}")
        self.sim_tasks.append(task)

    # --- faults -----------------------------------------------------------------------------
    async def until(self, sim_s: float) -> None:
        """Sleep until ``sim_s`` seconds after the simulators started (their script's clock)."""
        await asyncio.sleep(max(0.0, self.sim_started + sim_s - time.time()))

    async def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        agent = self.agents.pop(name)
        await asyncio.to_thread(agent.stop, sig)
        self.old_agents.append(agent)

    def start_agent(self, name: str) -> AgentProc:
        agent = self._make_agent(self.agent_specs[name]).start()
        self.agents[name] = agent
        return agent

    async def kill_backend(self, sig: int = signal.SIGKILL) -> None:
        assert self.backend is not None
        await asyncio.to_thread(self.backend.stop, sig)
        self.old_backends.append(self.backend)
        self.backend = None

    async def start_backend(self) -> None:
        port = self.old_backends[-1].http_port if self.old_backends else None
        self.backend = self._make_backend(http_port=port)
        self.backend.start()
        await asyncio.to_thread(self.backend.wait_healthy, 30)

    # --- reading the backend ---------------------------------------------------------------
    async def get(self, path: str) -> tuple[int, Any]:
        assert self.backend is not None
        return await asyncio.to_thread(self.backend.get, path)

    async def sequences(self) -> dict[str, Any]:
        status, body = await self.get("/api/sequences")
        assert status == 200, body
        return dict(body)

    def device_names(self) -> list[str]:
        names = list(self.agent_specs)
        names += [f"sim-{i:04d}" for i in range(1, self.spec.sim_devices + 1)]
        names += [f"simp-{i:04d}" for i in range(1, self.spec.proxied_sim_devices + 1)]
        return names

    async def wait_flowing(self, timeout: float = 45, step: int = 3, what: str = "") -> float:
        """Until every device's newest seq at the backend moved ``step`` past where it was
        when this was called (or first appears): all connected and ingested. Returns seconds."""
        started = time.monotonic()
        try:
            before = await self.sequences()
        except OSError:
            before = {}
        base = {n: (before.get(n) or {}).get("last_seq") for n in self.device_names()}
        lagging: list[str] = list(base)
        deadline = started + timeout
        while time.monotonic() < deadline:
            seqs = await self.sequences()
            lagging = []
            for name, start in base.items():
                row = seqs.get(name)
                last = None if row is None else row.get("last_seq")
                if last is None or (start is not None and last < start + step):
                    lagging.append(name)
            if not lagging:
                return time.monotonic() - started
            await asyncio.sleep(0.25)
        raise AssertionError(
            f"{what}: devices not flowing after {timeout}s: {lagging[:8]} ({len(lagging)}); "
            f"backend log tail:\n{self._backend_log()[-2000:]}\n{self._agent_logs()}"
        )

    def _backend_log(self) -> str:
        return self.backend.log_text() if self.backend else ""

    def _agent_logs(self, tail: int = 1500) -> str:
        out = []
        for name, agent in self.agents.items():
            out.append(f"--- agent {name} log tail:\n{agent.log_text()[-tail:]}")
        return "\n".join(out)

    # --- the end ----------------------------------------------------------------------------
    async def assert_serving(self) -> None:
        """Every process alive and doing its job (called before the load stops)."""
        assert self.broker.running, "broker not running"
        assert self.backend is not None and self.backend.proc is not None
        assert self.backend.proc.poll() is None, f"backend exited:\n{self._backend_log()[-3000:]}"
        status, body = await self.get("/healthz")
        assert status == 200 and body.get("mqtt_connected"), (status, body)
        for name, agent in self.agents.items():
            assert agent.proc is not None and agent.proc.poll() is None, (
                f"agent {name} exited {agent.proc.returncode if agent.proc else None}:\n"
                f"{agent.log_text()[-3000:]}"
            )
        for task in self.sim_tasks:
            assert not task.done(), f"simulator ended early: {task}"

    async def finish(self, *, drain_timeout: float = 45) -> Figures:
        """Check serving, stop the load, wait for the backend to drain, compare everything."""
        spikes = (*self.spec.spikes, *self.spec.proxied_spikes)
        await self.until(max((e.at_s + e.duration_s for e in spikes), default=0) + 2)
        await self.wait_flowing(timeout=75, what="after the fault")
        await self.assert_serving()
        self.sim_stop.set()
        truths = await asyncio.wait_for(asyncio.gather(*self.sim_tasks), 30)
        self.truths = list(truths)
        for agent in self.agents.values():
            await asyncio.to_thread(agent.stop, signal.SIGTERM, 15)
        queues = {name: read_queue(agent.queue_path) for name, agent in self.agents.items()}
        await self._wait_drained(queues, drain_timeout)
        seqs = await self.sequences()
        self._check_sims(seqs)
        await self._check_agents(seqs, queues)
        await self._check_alerts()
        _, metrics = await self.get("/metrics")
        self.figures.duplicates = int(metric_value(metrics, "edgefleet_ingest_duplicates_total"))
        self.figures.seconds = round(time.monotonic() - self.started, 1)
        self.finished = True
        return self.figures

    async def _wait_drained(self, queues: dict[str, QueueState], timeout: float) -> None:
        want: dict[str, int] = {}
        for truth in self.truths:
            for name, dev in truth.devices.items():
                want[name] = dev.acked.count
        tops = {}  # the newest seq each agent no longer holds: the backend must have it
        for name, q in queues.items():
            held = set(q.queued)
            tops[name] = max((s for s in range(q.next_seq) if s not in held), default=-1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seqs = await self.sequences()
            short = [n for n, c in want.items() if (seqs.get(n) or {}).get("received", -1) < c]
            for name, top in tops.items():
                if (seqs.get(name) or {}).get("last_seq", -1) < top:
                    short.append(name)
            if not short:
                return
            await asyncio.sleep(0.25)
        # fall through: the exact checks below say what is missing

    def _check_sims(self, seqs: dict[str, Any]) -> None:
        problems = []
        for truth in self.truths:
            self.figures.sim_connects += sum(d.connects for d in truth.devices.values())
            for name, dev in truth.devices.items():
                self.figures.sim_samples += dev.acked.count
                self.figures.sim_publish_errors += dev.publish_errors
                row = seqs.get(name)
                expect = {"stream": dev.stream, "first_seq": 0, "last_seq": dev.taken - 1,
                          "received": dev.taken, "lost": 0}
                if dev.pending or dev.dropped.count or dev.acked.ranges() != [[0, dev.taken - 1]]:
                    problems.append(f"{name}: simulator did not deliver everything: pending="
                                    f"{dev.pending[:5]} dropped={dev.dropped.ranges()} "
                                    f"acked={dev.acked.ranges()[:5]}")
                elif row != expect:
                    problems.append(f"{name}: backend {row} != truth {expect}")
        assert not problems, "\n".join(problems[:20])

    async def _check_agents(self, seqs: dict[str, Any], queues: dict[str, QueueState]) -> None:
        _, devices = await self.get("/api/devices")
        rows = {d["id"]: d for d in devices["devices"]}
        for name, q in queues.items():
            row = seqs.get(name)
            assert row is not None, f"{name}: unknown to the backend"
            assert row["stream"] == q.stream, (name, row, q.stream)
            assert row["first_seq"] == 0, (name, row)
            assert row["received"] + row["lost"] == row["last_seq"] + 1, (name, row)
            tail = set(range(row["last_seq"] + 1, q.next_seq))
            assert tail <= set(q.queued), (
                f"{name}: seqs {sorted(tail - set(q.queued))[:10]} neither at the backend nor "
                f"in the queue (last_seq={row['last_seq']}, next_seq={q.next_seq})"
            )
            reported = (rows[name].get("agent") or {}).get("dropped_total")
            assert row["lost"] == q.dropped_total, (
                f"{name}: backend lost {row['lost']} but the agent dropped {q.dropped_total}"
            )
            assert reported == q.dropped_total, (name, reported, q.dropped_total)
            self.figures.agent_samples[name] = row["received"]
            self.figures.agent_tail_queued[name] = len(tail)
            self.figures.agent_dropped[name] = q.dropped_total

    async def _check_alerts(self, timeout: float = 60) -> None:
        expected: Counter[tuple[str, str]] = Counter()
        for truth in self.truths:
            for name, dev in truth.devices.items():
                for spike in dev.spikes:
                    _, _, rest = spike.key.partition("[")
                    key = f"{SPIKE_RULE[spike.kind]}|{name}|{rest[:-1] if rest else ''}"
                    expected[(key, "firing")] += 1
                    expected[(key, "resolved")] += 1
        unchecked = set(self.spec.unchecked_devices)

        def checked(ids: list[str]) -> list[str]:
            return [i for i in ids if i.split("|", 2)[1] not in unchecked]

        deadline = time.monotonic() + timeout
        while True:
            _, alerts = await self.get("/api/alerts")
            _, metrics = await self.get("/metrics")
            backend_ids = checked([event_id(a) for a in alerts["recent"]])
            depth = metric_value(metrics, "edgefleet_alert_outbox_depth")
            if (depth == 0 and set(backend_ids) <= set(self.slack.event_ids())) or (
                time.monotonic() > deadline
            ):
                break
            await asyncio.sleep(0.5)
        got = Counter((a["key"], a["kind"]) for a in alerts["recent"]
                      if a["key"] not in self.spec.allowed_extra_alert_keys
                      and a["device"] not in unchecked)
        assert got == expected, f"alerts {dict(got)} != spikes in the truth {dict(expected)}"
        slack_ids = checked(self.slack.event_ids())
        doubled = [i for i, n in Counter(slack_ids).items() if n > 1]
        assert not doubled, f"delivered more than once: {doubled}"
        assert len(backend_ids) == len(set(backend_ids)), backend_ids
        assert set(slack_ids) == set(backend_ids), (
            f"slack {sorted(slack_ids)} != backend {sorted(backend_ids)}"
        )
        assert depth == 0, f"outbox still holds {depth} alerts"
        self.figures.alerts = len(backend_ids)
        self.figures.slack_messages = len(self.slack.messages)
        self.figures.slack_statuses = dict(Counter(self.slack.statuses()))


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


MakeSystem = Callable[[SystemSpec], Awaitable[System]]


@pytest.fixture
async def make_system(
    broker: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[MakeSystem]:
    """Build a :class:`System`; whatever it started is stopped at teardown, pass or fail."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    made: list[System] = []

    async def make(spec: SystemSpec) -> System:
        system = System(broker, tmp_path / "system", spec, request.node.name)
        made.append(system)
        return await system.__aenter__()

    yield make
    for system in made:
        await system.close()


# --- the queue's small filesystem --------------------------------------------------------------
class SmallFilesystem:
    """A tmpfs of ``size`` mounted on ``path`` (root only); :meth:`fill` takes all its space."""

    def __init__(self, path: Path, size: str = "2m") -> None:
        self.path = path
        self.size = size
        self.mounted = False
        self.filler = path / "filler.bin"

    def mount(self) -> str | None:
        """Mount it; return why not (to skip the test) or None."""
        if os.geteuid() != 0:
            return "mounting a tmpfs needs root"
        if shutil.which("mount") is None:
            return "no mount command"
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path)],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            return f"mount -t tmpfs not permitted here: {done.stderr.strip()[:200]}"
        self.mounted = True
        return None

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Write a file until the filesystem is full; return how many bytes it took."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 1 << 16, 1 << 12, 1):
                block = b"\0" * size
                while True:
                    try:
                        n = os.write(fd, block)
                    except OSError:
                        break
                    written += n
                    if n < size:
                        break
        finally:
            os.close(fd)
        return written

    def release(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            done = subprocess.run(["umount", str(self.path)], capture_output=True, check=False)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
            self.mounted = False
