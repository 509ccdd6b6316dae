"""The fault suite: the whole system (broker, backend, Slack, real agents, simulated fleet)
under one fault at a time, checked against the simulator's ground truth at the end.

Each test: zero lost samples, zero duplicate alerts, every process still serving (see
``system.py`` for exactly what is compared). docs/faults.md describes each fault, how it is
injected and the figures seen. Times in the tests are seconds after the simulators started
(``system.until``), the same clock as their scripted spikes.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from system import (  # noqa: F401 - make_system is a fixture
    FAKETIME_LIB,
    AgentSpec,
    MakeSystem,
    SmallFilesystem,
    System,
    SystemSpec,
    make_system,
)

from edgefleet.dev.broker import Mosquitto
from edgefleet.sim import ScriptedEvent

pytestmark = [pytest.mark.fault, pytest.mark.slow]



def spike(device: int, at_s: float, duration_s: float, kind: str = "cpu") -> ScriptedEvent:
    return ScriptedEvent(device=device, kind="spike", at_s=at_s, duration_s=duration_s,
                         spike_kind=kind)


async def test_broker_restart(make_system: MakeSystem, broker: Mosquitto) -> None:
    """Mosquitto stops for 10 s (SIGTERM) and comes back on the same port."""
    system = await make_system(SystemSpec(
        spikes=(spike(0, 4, 8), spike(1, 12, 6, "temp")),  # one across the outage, one in it
    ))
    await system.start()
    await system.until(6)
    await asyncio.to_thread(broker.stop)
    down = time.monotonic()
    await system.until(16)
    await asyncio.to_thread(broker.start)
    back = time.monotonic()
    system.figures.extra["broker_down_s"] = round(back - down, 1)
    system.figures.extra["backend_reconnect_s"] = round(await _backend_reconnect(system), 1)
    system.figures.extra["recovered_s"] = round(time.monotonic() - back, 1)
    await system.wait_flowing(timeout=75, what="reconnect")
    system.figures.extra["all_flowing_s"] = round(time.monotonic() - back, 1)
    figures = await system.finish()
    assert figures.sim_connects >= 2 * 20, "the simulated devices did not reconnect"


async def _backend_reconnect(system: System, timeout: float = 90) -> float:
    """Seconds until the backend's /healthz says its broker link is up again."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status, _ = await system.get("/healthz")
        if status == 200:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"backend did not reconnect within {timeout}s")


def _link_events(log: str, since: float) -> list[tuple[float, str]]:
    """(seconds after ``since``, event) for the MQTT link lines of an agent's text log."""
    day = time.strftime("%Y-%m-%d", time.localtime(since))
    out: list[tuple[float, str]] = []
    for line in log.splitlines():
        if "mqtt " not in line or not line[:2].isdigit():
            continue
        at = time.mktime(time.strptime(f"{day} {line[:8]}", "%Y-%m-%d %H:%M:%S"))
        if at + 1 < since:
            continue
        what = line.split("edgefleet.transport.mqtt: ", 1)[-1]
        reason = what.split("reason=", 1)[-1].split(" ")[0] if "reason=" in what else ""
        out.append((round(at - since), f"{what.split(' client_id')[0]} {reason}".strip()))
    return out


async def test_network_blackhole(make_system: MakeSystem) -> None:
    """A TCP proxy between devices and broker black-holes everything for 20 s (no FIN, no
    RST), then heals. The agent and 5 simulated devices go through it."""
    system = await make_system(SystemSpec(
        sim_devices=15, proxied_sim_devices=5,
        agents=(AgentSpec("agent-1", via_proxy=True), AgentSpec("agent-2")),
        spikes=(spike(0, 4, 6, "temp"),),
        proxied_spikes=(spike(0, 8, 8),),  # fires and resolves inside the cut
    ))
    await system.start()
    proxy = system.proxy
    assert proxy is not None
    await system.until(6)
    cut_at = time.time()
    proxy.cut()
    await system.until(26)
    assert proxy.stats.closed_by_client == 0 and proxy.stats.closed_by_server == 0
    proxy.restore()
    system.figures.extra["cut_s"] = round(time.time() - cut_at, 1)
    system.figures.extra["recovered_s"] = round(await system.wait_flowing(what="heal"), 1)
    log = system.agents["agent-1"].log_text()
    figures = await system.finish()
    figures.extra["proxy"] = {k: v for k, v in proxy.stats.__dict__.items() if k != "cuts"}
    events = _link_events(log, cut_at)
    figures.extra["agent_link"] = events
    # The proxy closed nothing: the agent found the dead link by its own keep-alive (ping
    # timeout) while the hole was still there, and tried new connections through it.
    lost = [t for t, what in events if "PING_RESPONSE_TIMEOUT" in what]
    assert lost and lost[0] < 20, events
    assert proxy.stats.accepted_during_cut >= 1, proxy.stats


async def test_agent_sigkill(make_system: MakeSystem) -> None:
    """One of two agents is SIGKILLed mid-run and started again 3 s later on the same queue."""
    system = await make_system(SystemSpec(
        agents=(AgentSpec("agent-1"), AgentSpec("agent-2")), spikes=(spike(0, 4, 6),),
    ))
    await system.start()
    await system.until(6)
    await system.kill_agent("agent-1", signal.SIGKILL)
    await system.until(9)
    system.start_agent("agent-1")
    system.figures.extra["recovered_s"] = round(await system.wait_flowing(what="restart"), 1)
    await system.finish()


async def test_backend_sigkill(make_system: MakeSystem) -> None:
    """The backend is SIGKILLed just as an alert becomes due and restarted 4 s later; a second
    spike happens entirely while it is down (its samples wait at the broker)."""
    system = await make_system(SystemSpec(spikes=(spike(0, 4, 8), spike(1, 8, 4, "temp"))))
    await system.start()
    await system.until(6.5)
    await system.kill_backend(signal.SIGKILL)
    await system.until(10.5)
    await system.start_backend()
    system.figures.extra["recovered_s"] = round(await system.wait_flowing(what="restart"), 1)
    await system.finish()


async def test_slack_outage(make_system: MakeSystem) -> None:
    """Slack answers 503 for 15 s, then 429 with Retry-After 2 twice, while alerts fire and
    resolve; afterwards each is delivered exactly once."""
    system = await make_system(SystemSpec(spikes=(spike(0, 5, 5), spike(1, 8, 5, "temp"))))
    await system.start()
    await system.until(4)
    system.slack.fail_with(503, until=time.monotonic() + 15)
    system.slack.fail_with(429, count=2, retry_after=2)
    await system.until(20)
    figures = await system.finish()
    assert figures.slack_statuses.get(503, 0) >= 1, figures.slack_statuses
    assert figures.slack_statuses.get(429, 0) == 2, figures.slack_statuses


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFilesystem]:
    """A 2 MiB tmpfs, mounted for the test (skipped where mounting is not permitted)."""
    fs = SmallFilesystem(tmp_path / "qfs", size="2m")
    why = fs.mount()
    if why is not None:
        pytest.skip(why)
    try:
        yield fs
    finally:
        fs.unmount()  # no-op when the system already unmounted it after stopping the agents


async def test_queue_filesystem_full(
    make_system: MakeSystem, broker: Mosquitto, small_fs: SmallFilesystem
) -> None:
    """The agent's queue sits on a 2 MiB tmpfs. While the broker is down the filesystem is
    filled, so the queue cannot grow: the agent must keep running and count what it could not
    store as dropped. Then space comes back, then the broker."""
    system = await make_system(SystemSpec(
        agents=(AgentSpec("agent-disk", queue_dir=small_fs.path), AgentSpec("agent-2")),
        spikes=(spike(0, 4, 6),),
    ))
    system.after_close.append(small_fs.unmount)  # only once its agents are stopped
    await system.start()
    await system.until(6)
    await asyncio.to_thread(broker.stop)
    await system.until(7)
    filled = small_fs.fill()
    await system.until(13)
    small_fs.release()
    await system.until(14)
    await asyncio.to_thread(broker.start)
    system.figures.extra["recovered_s"] = round(
        await system.wait_flowing(timeout=75, what="reconnect"), 1)
    log = system.agents["agent-disk"].log_text()
    figures = await system.finish()
    figures.extra["filler_bytes"] = filled
    assert figures.agent_dropped["agent-disk"] > 0, "the full filesystem dropped nothing"
    assert figures.agent_dropped["agent-2"] == 0
    assert "falling back to memory" not in log


async def test_queue_filesystem_full_then_agent_sigkill(
    make_system: MakeSystem, broker: Mosquitto, small_fs: SmallFilesystem
) -> None:
    """As above, but the agent is SIGKILLed after space came back and before the broker did:
    what it dropped must still be accounted for after the restart."""
    system = await make_system(SystemSpec(
        sim_devices=10, agents=(AgentSpec("agent-disk", queue_dir=small_fs.path),),
    ))
    system.after_close.append(small_fs.unmount)
    await system.start()
    await system.until(5)
    await asyncio.to_thread(broker.stop)
    await system.until(6)
    small_fs.fill()
    await system.until(10)
    small_fs.release()
    await system.until(11)
    await system.kill_agent("agent-disk", signal.SIGKILL)
    system.start_agent("agent-disk")
    await system.until(13)
    await asyncio.to_thread(broker.start)
    await system.wait_flowing(timeout=75, what="reconnect")
    await system.finish()


async def test_device_clock_jump(make_system: MakeSystem, tmp_path: Path) -> None:
    """One agent runs under libfaketime; its wall clock steps to 1 h behind, back, to 1 h
    ahead, and back (the monotonic clock does not jump, as with a real clock step)."""
    if not FAKETIME_LIB.exists():
        pytest.skip(f"libfaketime not installed ({FAKETIME_LIB}): apt-get install -y faketime")
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    # Always true for the faked agent, with a `for` far longer than the test: it can only
    # fire if a clock step makes the condition look older than it is.
    canary = """
  - name: clock_canary
    metric: memory.total_bytes
    op: ">"
    threshold: 0
    for: 10m
    enabled: false
    overrides: [{devices: ["agent-clock"], enabled: true}]
"""
    system = await make_system(SystemSpec(
        agents=(AgentSpec("agent-clock", faketime_file=offset), AgentSpec("agent-2")),
        spikes=(spike(0, 4, 6),), extra_rules=canary,
        allowed_extra_alert_keys=("clock_canary|agent-clock|",),
    ))
    await system.start()
    for shift, start, end in (("-1h", 6, 12), ("+0", 12, 16), ("+1h", 16, 22), ("+0", 22, 25)):
        await system.until(start)
        offset.write_text(shift + "\n")
        await system.until(end)
    _, alerts = await system.get("/api/alerts")
    figures = await system.finish()
    now = time.time()
    status, detail = await system.get(
        f"/api/devices/agent-clock?start={now - 4000}&end={now + 4000}&points=5000&keys=cpu.percent"
    )
    assert status == 200
    ts = detail["history"]["t"]
    behind = sum(1 for t in ts if t < now - 3000)
    ahead = sum(1 for t in ts if t > now + 3000)
    mine = [a for a in alerts["recent"] if a["device"] == "agent-clock"]
    figures.extra.update(
        samples_behind=behind, samples_ahead=ahead,
        clock_alerts=[(a["rule"], a["kind"], round(a["at"] - a["started_at"])) for a in mine],
        last_sample_ts_ahead_s=round(detail["device"]["last_sample_ts"] - now),
    )
    # The jumps really reached the samples (up to 5 samples/s for 6 s in each phase) ...
    assert behind >= 5 and ahead >= 5, (behind, ahead)
    # ... and samples that look 1 h old (replayed) raised nothing.
    assert not [a for a in mine if a["at"] < now - 3000], mine
    assert all(a["rule"] == "clock_canary" for a in mine), mine
    # ... and samples from an hour ahead did not skip the rule's `for: 10m` either.
    assert mine == [], mine
