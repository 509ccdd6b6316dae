"""The backend's own feed under faults: the broker stopped, the backend's link black-holed.

Neither may page anyone about a device being offline: the backend raises ONE fleet-level
``feed_lost`` alert while it cannot hear its fleet, resolves it when the feed returns, and
gives every device one staleness window from then. Nothing is lost (the system's usual
ground-truth checks in ``System.finish``).

The offline rule is short here (``for: 5s``, stale window 2 s), so a silent device would be
notified about 7 s after its last message: the "offline window" the outages are measured in.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from system import AgentSpec, MakeSystem, System, SystemSpec, make_system  # noqa: F401 - fixture

from conftest import ClientFactory
from devices import Device
from edgefleet.dev.broker import Mosquitto

pytestmark = [pytest.mark.fault, pytest.mark.slow]

FEED_KEY = "feed_lost|edgefleet-backend|"
OFFLINE_WINDOW_S = 2 + 5  # stale window + the offline rule's `for`
MARKER = "marker-1"  # sends once after the feed is back, then falls silent: a clock
BACKEND = {"stale_min_s": 2, "feed_silence_min_s": 3, "feed_alert_after_s": 3,
           "reconnect_max_s": 2}



def _spec(**kw: Any) -> SystemSpec:
    agents = tuple(AgentSpec(f"agent-{i}", settings={"interval_s": 0.5}) for i in range(1, 11))
    base: dict[str, Any] = {"sim_devices": 0, "agents": agents, "offline_for": "5s",
                            "backend_settings": BACKEND}
    base.update(kw)
    names = [a.name for a in base["agents"]]
    names += [f"sim-{i:04d}" for i in range(1, base["sim_devices"] + 1)]
    # System.finish stops every agent (their offline status alerts after 5 s): its own
    # alert check ignores those; the tests check "no offline alert" before the load stops.
    base["allowed_extra_alert_keys"] = (FEED_KEY, *(f"offline|{n}|" for n in names))
    base["unchecked_devices"] = (MARKER,)
    return SystemSpec(**base)


async def _wait_feed(system: System, state: str, timeout: float = 60) -> dict[str, Any]:
    """Until /healthz reports the feed in ``state``; return that body."""
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        try:
            _, body = await system.get("/healthz")
        except OSError:
            body = None
        if isinstance(body, dict) and body.get("feed", {}).get("state") == state:
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"feed never {state}: {body}")


async def _a_full_window_later(system: System, mqtt_client: ClientFactory) -> None:
    """Return once a full offline window has passed since the call, shown by an event: a
    device that announces itself (interval 0.5 s, so the same window as the agents), sends
    one sample and falls silent is declared offline, with an alert, only a window later."""
    marker = await Device.connect(mqtt_client, MARKER)
    await marker.online(time.time(), interval_s=0.5)
    await marker.sample(time.time(), cpu_percent=1.0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, alerts = await system.get("/api/alerts")
        if any(a["key"] == f"offline|{MARKER}|" for a in alerts["firing"]):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{MARKER} was never declared offline")


def _check_feed_alerts(system: System, alerts: dict[str, Any], ids: list[str]) -> None:
    """One feed_lost firing then resolved, delivered once each; no offline alert but the
    marker's (``alerts`` and the Slack ``ids`` as they were before the load stopped: stopping
    the agents at the end sends their offline status, which legitimately alerts)."""
    recent = list(reversed(alerts["recent"]))  # oldest first
    feed = [(a["kind"], a["severity"]) for a in recent if a["key"] == FEED_KEY]
    assert feed == [("firing", "critical"), ("resolved", "critical")], recent
    offline = [a for a in recent if a["rule"] == "offline" and a["device"] != MARKER]
    assert offline == [], offline
    assert [a["device"] for a in recent if a["rule"] == "offline"] == [MARKER], recent
    assert not [i for i in ids if i.startswith("offline|") and MARKER not in i], ids
    feed_ids = [i for i in ids if i.startswith(FEED_KEY)]
    assert Counter(i.split("|")[3] for i in feed_ids) == {"firing": 1, "resolved": 1}, ids
    texts = [m["text"] for m in system.slack.messages]
    assert any("edgefleet lost its feed" in t for t in texts), texts


async def test_broker_stopped_for_twice_the_offline_window(
    make_system: MakeSystem, broker: Mosquitto, mqtt_client: ClientFactory
) -> None:
    """10 agents; Mosquitto stops for 2 x the offline window, then comes back: zero
    device-offline notifications, one feed-lost notification firing then resolved, no
    sample lost (every agent's queue delivered everything)."""
    system = await make_system(_spec())
    await system.start()
    await asyncio.to_thread(broker.stop)
    down = time.monotonic()
    lost = await _wait_feed(system, "lost")
    assert lost["status"] == "degraded" and lost["feed"]["connected"] is False, lost
    await system.slack.wait_for_messages(1, within_s=30)  # the feed_lost alert
    await asyncio.sleep(max(0.0, down + 2 * OFFLINE_WINDOW_S - time.monotonic()))
    _, during = await system.get("/api/devices")
    await asyncio.to_thread(broker.start)
    system.figures.extra["broker_down_s"] = round(time.monotonic() - down, 1)
    back = await _wait_feed(system, "ok")
    system.figures.extra["feed_back_s"] = round(time.monotonic() - down, 1)
    await system.wait_flowing(timeout=60, what="broker back")
    assert all(d["online"] for d in during["devices"]), during  # nobody declared offline
    assert during["summary"]["feed"]["state"] == "lost"
    assert back["feed"]["connected"] is True
    await _a_full_window_later(system, mqtt_client)  # a full window after the return: quiet
    _, alerts = await system.get("/api/alerts")
    ids = system.slack.event_ids()
    await system.finish()
    _check_feed_alerts(system, alerts, ids)
    system.figures.extra["slack_messages"] = len(system.slack.messages)


async def test_backend_link_black_holed_while_broker_and_devices_are_fine(
    make_system: MakeSystem, mqtt_client: ClientFactory
) -> None:
    """Only the backend's own connection goes through the black hole; it is cut for 2 x the
    offline window (the backend hears nothing, the devices publish on), then heals. The
    backend notices by silence, long before its keep-alive would: one feed_lost alert, no
    device-offline alert, and everything the devices sent meanwhile arrives."""
    agents = tuple(AgentSpec(f"agent-{i}", settings={"interval_s": 0.5}) for i in range(1, 5))
    system = await make_system(_spec(agents=agents, sim_devices=6, backend_via_proxy=True))
    await system.start()
    proxy = system.proxy
    assert proxy is not None
    proxy.cut()
    cut = time.monotonic()
    lost = await _wait_feed(system, "lost")
    system.figures.extra["noticed_s"] = round(time.monotonic() - cut, 1)
    assert lost["feed"]["connected"] is True and "no device heard" in lost["feed"]["detail"]
    await system.slack.wait_for_messages(1, within_s=30)
    await asyncio.sleep(max(0.0, cut + 2 * OFFLINE_WINDOW_S - time.monotonic()))
    _, during = await system.get("/api/devices")
    proxy.restore()
    await _wait_feed(system, "ok")
    system.figures.extra["feed_back_s"] = round(time.monotonic() - cut, 1)
    await system.wait_flowing(timeout=90, what="heal")
    assert all(d["online"] for d in during["devices"]), during
    await _a_full_window_later(system, mqtt_client)
    _, alerts = await system.get("/api/alerts")
    ids = system.slack.event_ids()
    await system.finish()
    _check_feed_alerts(system, alerts, ids)
