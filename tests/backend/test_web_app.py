"""The web app in-process (backend/web/app.py) through Quart's test client, around a running
backend built from real parts: a temporary fleet database, the real ``FleetViewModel`` and
``Hub``, fed through the transport test double of tests/backend/test_service.py. What it
proves: every REST endpoint's shape and status, /healthz ok vs 503 with its reason, the token
on /api, /metrics and /ws, the Host (421) and Origin (403) checks, 400 with a one-line
message for bad history queries, the page, and /ws: a snapshot first, then updates when a
device changes; a client too slow is closed with 1013; a client that leaves is forgotten."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from quart import typing as qt
from quart.testing import WebsocketResponseError
from quart.testing.connections import WebsocketDisconnectError
from test_service import FakeTransport
from test_web_fleet_view import RULES, parse_prometheus, payload, status

from edgefleet.backend.alerts.rules import load_rules
from edgefleet.backend.runtime import Backend
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.web.access import WebAccess
from edgefleet.backend.web.app import create_app
from edgefleet.wire.messages import metrics_topic, status_topic

TOKEN = "in-process-test-token-0123456789"
ROW_KEYS = {"id", "online", "status", "last_seen", "last_sample_ts", "interval_s", "cpu",
            "memory", "disk", "temp", "load1", "spark", "firing", "severity", "lost",
            "identity_conflict", "agent", "labels", "groups"}


@dataclass
class Served:
    """A running backend, its transport double and a test client of its web app."""

    backend: Backend
    transport: FakeTransport
    client: qt.TestClientProtocol

    def send(self, device: str, seq: int, ts: float, **metrics: float) -> None:
        body = {k.replace("_", ".", 1): v for k, v in metrics.items()}
        self.transport.deliver(metrics_topic(device), payload(device, seq, ts, body), None)

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        resp = await self.client.get(path, **kw)
        body = await resp.get_data(as_text=True)
        is_json = resp.content_type == "application/json"
        return resp.status_code, json.loads(body) if is_json else body


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    async with contextlib.AsyncExitStack() as stack:

        async def make(token: str | None = None, access: WebAccess | None = None,
                       **settings: Any) -> Served:
            s = BackendSettings(db_path=tmp_path / "fleet.db", ws_interval_s=0.05, **settings)
            backend = Backend(s, load_rules(rules), FakeTransport)
            task = asyncio.create_task(backend.run(serve_nothing))

            async def stop() -> None:
                backend.stop()
                await asyncio.wait_for(task, 15)

            stack.push_async_callback(stop)
            app = create_app(backend.view, token=token, access=access)
            test_app = app.test_app()
            await test_app.startup()  # runs the app's start-up, like a real server
            stack.push_async_callback(test_app.shutdown)
            assert isinstance(backend.transport, FakeTransport)
            return Served(backend, backend.transport, test_app.test_client())

        yield make


async def serve_nothing(stop: asyncio.Event) -> None:
    """The backend's HTTP task: the test client calls the app itself."""
    await stop.wait()


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def with_devices(served: Served) -> float:
    """dev-a (calm, announced online) and dev-b (too hot: a critical alert); returns when both
    are stored and visible."""
    t = time.time()
    served.transport.deliver(status_topic("dev-a"), status("dev-a", "online", t, 5.0), None)
    for seq in range(3):
        served.send("dev-a", seq, t - 2 + seq, cpu_percent=10.0 + seq, memory_used_percent=40.0)
    served.send("dev-b", 0, t, temp_celsius=99.0, cpu_percent=5.0)
    await until(lambda: len(served.backend.view.device_rows()) == 2
                and len(served.backend.alerts.firing) == 1)
    await until(lambda: len(served.transport.acked) == 5)  # acknowledged once committed
    return t


async def frames_until(ws: qt.TestWebsocketConnectionProtocol, want: Callable[[dict[str, Any]], bool],
                       timeout: float = 10.0) -> dict[str, Any]:
    """Read frames until one matches (updates also come every second for the summary)."""
    async with asyncio.timeout(timeout):
        while not want(frame := json.loads(await ws.receive())):
            pass
    assert isinstance(frame, dict)
    return frame


async def test_rest_endpoints_answer_with_their_documented_shapes(serve: Serve) -> None:
    served = await serve()
    t = await with_devices(served)
    assert await served.get("/api/auth") == (200, {"required": False})

    code, body = await served.get("/api/devices")
    assert code == 200 and set(body) == {"devices", "summary"}
    assert [r["id"] for r in body["devices"]] == ["dev-b", "dev-a"]  # the critical one first
    assert all(set(r) == ROW_KEYS for r in body["devices"])
    assert (body["devices"][0]["severity"], body["devices"][1]["cpu"]) == ("critical", 12.0)
    assert (body["summary"]["devices"], body["summary"]["firing"]) == (2, 1)

    code, body = await served.get(f"/api/devices/dev-a?start={t - 60}&end={t + 60}"
                                  "&keys=cpu.percent,memory.used_percent&points=10")
    assert code == 200
    assert set(body) == {"device", "keys", "history", "sequence", "first_seen", "marks",
                         "latest"}
    assert body["device"]["id"] == "dev-a"
    assert [(m["rule"], m["threshold"], m["keys"]) for m in body["marks"]["thresholds"]] == [
        ("high_cpu", 90.0, ["cpu.percent"])]
    assert body["marks"]["periods"] == [] and t - 60 < body["first_seen"] < t + 60
    assert body["keys"] == ["cpu.percent", "memory.used_percent"]
    assert body["latest"] == {"cpu.percent": 12.0, "memory.used_percent": 40.0}
    assert body["history"]["series"] == {"cpu.percent": [10.0, 11.0, 12.0],
                                         "memory.used_percent": [40.0, 40.0, 40.0]}
    assert body["history"]["t"] == [t - 2, t - 1, t] and body["history"]["resolution"] == "raw"
    assert body["sequence"] == {"stream": "s1", "first_seq": 0, "last_seq": 2, "received": 3,
                                "lost": 0}

    assert await served.get("/api/devices/dev-zzz") == (404, {"error": "unknown device 'dev-zzz'"})
    code, body = await served.get("/api/sequences")
    assert code == 200 and sorted(body) == ["dev-a", "dev-b"]
    assert body["dev-b"]["last_seq"] == 0

    code, body = await served.get("/api/alerts")
    assert code == 200 and set(body) == {"firing", "pending", "pending_total", "recent"}
    assert [(a["rule"], a["device"], a["kind"]) for a in body["firing"]] == [
        ("too_hot", "dev-b", "firing")]
    assert body["recent"] == body["firing"] and body["pending_total"] == 0


async def test_every_answer_carries_the_security_headers(serve: Serve) -> None:
    served = await serve()
    for path in ("/", "/static/js/rank.js", "/api/devices", "/healthz", "/metrics",
                 "/api/devices/none"):
        resp = await served.client.get(path)
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'"), path
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        if not path.startswith(("/static/", "/api/auth")) and path != "/":
            assert resp.headers["Cache-Control"] == "no-store", path  # live data


async def test_healthz_is_ok_then_503_degraded_with_the_reason(serve: Serve) -> None:
    served = await serve()
    await with_devices(served)
    code, body = await served.get("/healthz")
    assert code == 200
    assert (body["status"], body["reason"], body["mqtt_connected"], body["devices"]) == (
        "ok", None, True, 2)
    assert body["store"]["ok"] and isinstance(body["version"], str)

    served.transport.connected.clear()  # the backend's link to the broker drops
    code, body = await served.get("/healthz", headers={"Host": "probe.internal:8080"})
    assert code == 503  # answered for any Host: container probes need no setting
    assert body["status"] == "degraded" and body["mqtt_connected"] is False
    assert body["reason"].startswith("no link to the broker")

    served.transport.connected.set()
    await until(lambda: served.backend.feed.ok)
    code, body = await served.get("/healthz")
    assert (code, body["status"], body["reason"]) == (200, "ok", None)


async def test_metrics_and_the_api_need_the_token_when_one_is_set(serve: Serve) -> None:
    served = await serve(token=TOKEN)
    await with_devices(served)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/metrics", "/api/devices", "/api/alerts", "/api/sequences",
                 "/api/devices/dev-a"):
        assert await served.get(path) == (401, {"error": "unauthorized"}), path
        wrong = {"Authorization": f"Bearer {TOKEN[:-1]}x"}
        assert await served.get(path, headers=wrong) == (401, {"error": "unauthorized"}), path
        assert (await served.get(path, headers=bearer))[0] == 200, path
    assert await served.get("/api/auth") == (200, {"required": True})
    assert (await served.get("/healthz"))[0] == 200
    assert (await served.get("/"))[0] == 200  # the page asks for the token itself

    resp = await served.client.get("/metrics", headers=bearer)
    assert resp.mimetype == "text/plain" and "version=0.0.4" in resp.content_type
    got = parse_prometheus(await resp.get_data(as_text=True))
    assert got['edgefleet_devices{state="online"}'] == 2
    assert got["edgefleet_alerts_firing"] == 1


async def test_metrics_are_open_without_a_token(serve: Serve) -> None:
    served = await serve()
    await with_devices(served)
    code, text = await served.get("/metrics")
    assert code == 200
    assert parse_prometheus(text)["edgefleet_ingest_samples_total"] == 4


async def test_a_foreign_host_gets_421_on_every_route_but_healthz(serve: Serve) -> None:
    served = await serve(access=WebAccess.build(allowed_hosts=["fleet.lan"]))
    evil = {"Host": "evil.example:8080"}
    for path in ("/", "/api/devices", "/api/auth", "/metrics", "/static/js/rank.js"):
        code, body = await served.get(path, headers=evil)
        assert code == 421, path
        assert body == {"error": "host 'evil.example:8080' is not served here; "
                                 "see EDGE_BACKEND_ALLOWED_HOSTS"}
    with pytest.raises(WebsocketResponseError) as refused:
        async with served.client.websocket("/ws", headers=evil) as ws:
            await ws.receive()
    assert refused.value.response.status_code == 421
    for host in ("fleet.lan:8080", "localhost:9000", "127.0.0.1", "[::1]:8080"):
        assert (await served.get("/api/auth", headers={"Host": host}))[0] == 200, host


async def test_ws_from_another_origin_gets_403_and_no_data(serve: Serve) -> None:
    served = await serve(access=WebAccess.build(allowed_origins=["https://fleet.example.com"]))
    for origin in ("http://evil.example", "null", "http://localhost.evil.example",
                   "https://localhost"):  # another scheme is another origin
        with pytest.raises(WebsocketResponseError) as refused:
            async with served.client.websocket("/ws", headers={"Origin": origin}) as ws:
                await ws.receive()
        response = refused.value.response
        assert response.status_code == 403, origin
        assert json.loads(await response.get_data(as_text=True)) == {
            "error": "origin not allowed; see EDGE_BACKEND_ALLOWED_ORIGINS"}
    for allowed in (None, "http://localhost", "http://127.0.0.1", "https://fleet.example.com"):
        headers = {} if allowed is None else {"Origin": allowed}
        async with served.client.websocket("/ws", headers=headers) as ws:
            assert json.loads(await ws.receive())["type"] == "snapshot", allowed


async def test_ws_without_the_token_is_closed_4401(serve: Serve) -> None:
    served = await serve(token=TOKEN)
    for query in ("", "?token=wrong-token-0123456789"):
        async with served.client.websocket(f"/ws{query}") as ws:
            with pytest.raises(WebsocketDisconnectError) as closed:
                await ws.receive()
        assert closed.value.args == (4401,)
    async with served.client.websocket(f"/ws?token={TOKEN}") as ws:
        assert json.loads(await ws.receive())["type"] == "snapshot"
    assert served.backend.hub.clients == set()


BAD_QUERIES = {
    "start=nan": "start must be unix seconds between 0 and 32503680000",
    "end=inf": "end must be unix seconds between 0 and 32503680000",
    "start=-1": "start must be unix seconds between 0 and 32503680000",
    "start=1e400": "start must be unix seconds between 0 and 32503680000",
    "start=0x10": "start must be a number of unix seconds, not '0x10'",
    "start=20&end=10": "need start < end",
    "points=1.5": "points must be an integer from 2 to 5000, not '1.5'",
    "points=1": "points must be an integer from 2 to 5000, not '1'",
    "points=5001": "points must be an integer from 2 to 5000, not '5001'",
    "points=": "points must be an integer from 2 to 5000, not ''",
    "keys=CPU": "not a metric key: 'CPU'",
    "keys=cpu.percent,disk.used_percent[": "not a metric key: 'disk.used_percent['",
    "keys=" + ",".join(f"k{i}" for i in range(257)): "at most 256 keys per request, not 257",
}


async def test_bad_history_queries_get_400_with_a_one_line_message(serve: Serve) -> None:
    served = await serve()
    await with_devices(served)
    for query, message in BAD_QUERIES.items():
        assert await served.get(f"/api/devices/dev-a?{query}") == (400, {"error": message}), query
    for query in ("start=&end=", "points=2&keys=disk.used_percent[/mnt/a,b]",
                  "keys=" + ",".join(f"k{i}" for i in range(256))):
        assert (await served.get(f"/api/devices/dev-a?{query}"))[0] == 200, query


async def test_the_dashboard_page_and_its_files_are_served(serve: Serve) -> None:
    served = await serve()
    resp = await served.client.get("/")
    page = await resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert "<title>edgefleet</title>" in page and 'src="static/js/app.js"' in page
    resp = await served.client.get("/static/js/rank.js")
    assert resp.status_code == 200 and "export function rank" in await resp.get_data(as_text=True)
    assert (await served.client.get("/static/js/nothing.js")).status_code == 404
    assert (await served.client.get("/static/../../settings.py")).status_code == 404


async def test_ws_sends_a_snapshot_then_an_update_when_a_device_changes(serve: Serve) -> None:
    served = await serve()
    t = await with_devices(served)
    async with served.client.websocket("/ws") as ws:
        snapshot = json.loads(await ws.receive())
        assert set(snapshot) == {"type", "devices", "summary", "alerts", "spark_points"}
        assert snapshot["spark_points"] == 30 and all(set(r) == ROW_KEYS for r in snapshot["devices"])
        assert snapshot["type"] == "snapshot"
        assert [r["id"] for r in snapshot["devices"]] == ["dev-b", "dev-a"]
        assert [a["device"] for a in snapshot["alerts"]["firing"]] == ["dev-b"]
        assert snapshot["summary"]["ws_clients"] == 1

        served.send("dev-a", 3, t + 1, cpu_percent=77.0)
        served.send("dev-c", 0, t + 1, disk_used_percent=95.0)  # a new device, alert fires
        rows: dict[str, dict[str, Any]] = {}
        events: list[tuple[str, str]] = []

        def seen(frame: dict[str, Any]) -> bool:
            assert frame["type"] == "update" and frame["removed"] == []
            assert set(frame) == {"type", "devices", "removed", "summary", "alerts", "pending"}
            rows.update((r["id"], r) for r in frame["devices"])
            events.extend((a["rule"], a["device"]) for a in frame["alerts"])
            return ("dev-c" in rows and rows.get("dev-a", {}).get("cpu") == 77.0
                    and frame["summary"]["devices"] == 3)

        # both changes, in one frame or two; an earlier frame may carry dev-a as it was
        # (seen once on PostgreSQL, where the commit takes longer): wait for its new value
        await frames_until(ws, seen)
        assert (rows["dev-c"]["disk"], rows["dev-c"]["severity"]) == (95.0, "warning")
        assert rows["dev-a"]["cpu"] == 77.0
        # dev-a is in the snapshot: only what changed (its trend as the point appended);
        # dev-c is new to the client: its full row
        assert "status" not in rows["dev-a"] and rows["dev-a"]["spark_add"] == [77.0]
        assert set(rows["dev-c"]) == ROW_KEYS
        assert events == [("disk_full", "dev-c")]  # dev-b's alert was in the snapshot
    await until(lambda: not served.backend.hub.clients)  # the client left: forgotten
    assert served.backend.view.summary()["ws_clients"] == 0


async def test_clients_connecting_between_two_frames_share_one_snapshot(serve: Serve) -> None:
    served = await serve()
    t = await with_devices(served)
    hub = served.backend.hub
    async with served.client.websocket("/ws") as one, served.client.websocket("/ws") as two:
        first = await one.receive()
        # made once: a snapshot made for the second client would count 2 ws_clients
        assert await two.receive() == first
        assert json.loads(first)["summary"]["ws_clients"] == 1
        served.send("dev-new", 0, t, cpu_percent=1.0)
        await until(lambda: served.backend.fleet.device("dev-new") is not None)
        generation = hub.generation
        await until(lambda: hub.generation > generation)  # the hub consumed the change
        async with served.client.websocket("/ws") as three:
            fresh = json.loads(await three.receive())
        assert "dev-new" in {r["id"] for r in fresh["devices"]}  # not the old snapshot


async def test_a_client_too_slow_is_closed_1013_and_may_come_back(serve: Serve) -> None:
    served = await serve(ws_queue_frames=2)
    await with_devices(served)
    hub = served.backend.hub
    async with served.client.websocket("/ws") as ws:
        assert json.loads(await ws.receive())["type"] == "snapshot"
        for i in range(3):  # three frames before its handler can send one: queue full
            hub.broadcast(json.dumps({"type": "update", "n": i}))
        with pytest.raises(WebsocketDisconnectError) as closed:
            while True:
                await ws.receive()
        assert closed.value.args == (1013,)
    assert hub.slow_disconnects == 1 and hub.clients == set()
    assert parse_prometheus(served.backend.view.metrics_text())[
        "edgefleet_websocket_slow_disconnects_total"] == 1
    async with served.client.websocket("/ws") as again:  # reconnects for a new snapshot
        assert json.loads(await again.receive())["type"] == "snapshot"
