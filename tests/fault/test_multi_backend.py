"""Issue 17's first must-show: two backend processes, one PostgreSQL, 50 devices, one real
Mosquitto with mTLS. The backends (connections ``backend-1`` and ``backend-2``) share the
fleet through the shared subscription. Under load the alert leader (or the follower) is
SIGKILLed and a device's CPU spikes at that moment: the other backend leads (takes the
lead, or keeps it) and the alert fires once. Mosquitto keeps handing the killed backend
its share of the shared subscription, queued in its session until it reconnects: the
test restarts it at once, as its supervisor would. Then the killed one is restarted and rejoins (it serves and receives its share
again). At the end: every seq of every device is stored once (0 lost, 0 duplicates), Slack
got no message twice, and both dashboards (``/api/devices`` and a WebSocket client on
each) list all 50 devices with live updates.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from tests.backend.store_backends import schema_url

from backendproc import BackendProc
from conftest import ClientFactory
from devices import Device
from edgefleet.dev.broker import Mosquitto
from edgefleet.dev.postgres import Postgres
from fakeslack import FakeSlack

pytestmark = [pytest.mark.slow, pytest.mark.fault, pytest.mark.postgres]

DEVICES = 50
SPIKE = "dev-07"
RULES = """
version: 1
offline: {enabled: false}
rules:
  - {name: hot, metric: cpu.percent, op: ">", threshold: 90, clear: 80, for: 0s}
"""
NORMAL, HIGH, MARK = 50.0, 99.0, 42.0


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


class Load:
    """Every device sends a sample every ``period_s``; ``value`` says what each sends."""

    def __init__(self, devices: list[Device], period_s: float = 0.1) -> None:
        self.devices = devices
        self.period_s = period_s
        self.value: dict[str, float] = {d.name: NORMAL for d in devices}
        self.sent: dict[str, int] = {d.name: 0 for d in devices}
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            await asyncio.gather(*(self._one(d) for d in self.devices))
            await asyncio.sleep(self.period_s)

    async def _one(self, device: Device) -> None:
        await device.sample(round(time.time(), 3), cpu_percent=self.value[device.name])
        self.sent[device.name] = device.seq


class Page:
    """A WebSocket client of one backend's dashboard: the newest row of each device."""

    def __init__(self, be: BackendProc) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.updates = 0
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._read(be.http_port))

    async def _read(self, port: int) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"ws://127.0.0.1:{port}/ws") as ws:
            async for msg in ws:
                frame = json.loads(msg.data)
                self.updates += frame["type"] == "update"
                for row in frame["devices"]:  # full rows, or changed fields (docs/api.md)
                    self.rows.setdefault(row["id"], {}).update(row)
                self.ready.set()

    def all_at(self, cpu: float) -> bool:
        return sum(row.get("cpu") == cpu for row in self.rows.values()) == DEVICES


async def until(check: Any, timeout: float = 60.0, step: float = 0.2) -> None:
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(check):
            await asyncio.sleep(step)


def received(be: BackendProc) -> int:
    """Messages this backend process received from the broker (its ``/metrics``)."""
    _, text = be.get("/metrics")
    found = re.findall(r'edgefleet_connection_messages_total\{connection="1"\} (\d+)', str(text))
    return int(found[0]) if found else 0


def stored(url: str) -> dict[str, list[int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT d.name, r.seq FROM raw AS r JOIN devices AS d "
                            "ON d.id = r.device ORDER BY d.name, r.seq").fetchall()
    out: dict[str, list[int]] = {}
    for name, seq in rows:
        out.setdefault(str(name), []).append(int(seq))
    return out


def leader(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT holder FROM alert_leader").fetchone()
    return "" if row is None else str(row[0]).split("@")[0]


@pytest.mark.parametrize("victim", ["leader", "follower"])
async def test_two_backends_survive_a_sigkill_with_nothing_lost_or_repeated(
    broker: Mosquitto, mqtt_client: ClientFactory, postgres: Postgres, tmp_path: Path,
    victim: str,
) -> None:
    url = schema_url(postgres)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)

    def backend(name: str, slack: FakeSlack) -> BackendProc:
        cert, key, _ = broker.identity(name)
        return BackendProc(broker, tmp_path / name, client_id=name, cert_file=cert,
                           key_file=key, database_url=url, rules_file=rules,
                           slack_webhook_url=slack.webhook_url, alert_budget_per_device=0,
                           alert_budget_per_rule=0, alert_group_window_s=0.2,
                           reconnect_max_s=2)

    async with FakeSlack() as slack:
        procs = {name: backend(name, slack).start() for name in ("backend-1", "backend-2")}
        for be in procs.values():
            await asyncio.to_thread(be.wait_healthy, 60)
        devices = [await Device.connect(mqtt_client, f"dev-{i:02d}") for i in range(DEVICES)]
        load = Load(devices)
        feeding = asyncio.create_task(load.run())
        try:
            await until(lambda: all(received(be) > 500 for be in procs.values()))
            await until(lambda: leader(url) in procs)
            lead = leader(url)
            name = lead if victim == "leader" else next(n for n in procs if n != lead)
            procs[name].stop(signal.SIGKILL)  # a backend dies under load ...
            killed = time.monotonic()
            load.value[SPIKE] = HIGH  # ... while a device's CPU spikes
            await until(lambda: leader(url) not in ("", name))  # the other one leads
            took_over = time.monotonic() - killed
            # its supervisor restarts it: what the broker queued in its session meanwhile
            # (its share, perhaps the spike) reaches it then, and it rejoins
            procs[name] = backend(name, slack).start()
            await until(lambda: any(i.startswith(f"hot|{SPIKE}||firing|")
                                    for i in slack.event_ids()))
            print(f"{victim} killed: leader again after {took_over:.2f} s, spike in Slack "
                  f"{time.monotonic() - killed:.2f} s after the kill")
            await asyncio.to_thread(procs[name].wait_healthy, 60)
            await until(lambda: received(procs[name]) > 300)  # its share again

            pages = [Page(be) for be in procs.values()]
            for page in pages:
                await asyncio.wait_for(page.ready.wait(), 30)
            for device in devices:
                load.value[device.name] = MARK  # every device shows a new value ...
            await until(lambda: all(page.all_at(MARK) for page in pages))  # ... on both pages
            assert all(page.updates > 0 for page in pages)
            for be in procs.values():
                status, body = be.get("/api/devices")
                assert status == 200
                assert len({row["id"] for row in body["devices"]}) == DEVICES
        finally:
            load.stop.set()
            await feeding
        want = {d.name: list(range(load.sent[d.name])) for d in devices}
        await until(lambda: stored(url) == want)  # 0 lost, 0 stored twice
        await until(lambda: any(i.startswith(f"hot|{SPIKE}||resolved|")
                                for i in slack.event_ids()))
        print(f"samples stored {sum(load.sent.values())}, received per backend "
              f"{[received(be) for be in procs.values()]}, page updates "
              f"{[page.updates for page in pages]}")
        for page in pages:
            page.task.cancel()
        await asyncio.gather(*(page.task for page in pages), return_exceptions=True)
        for be in procs.values():
            be.stop()
    ids = slack.event_ids()
    assert len(ids) == len(set(ids)), sorted(i for i in set(ids) if ids.count(i) > 1)
    assert [i.split("|")[3] for i in ids if i.startswith(f"hot|{SPIKE}|")] == [
        "firing", "resolved"]  # the spike: fired once, resolved once
    assert all(i.startswith(f"hot|{SPIKE}|") for i in ids)  # and nothing else fired
