"""The web app against hostile-but-valid clients: foreign Host, other Origins, missing tokens,
and query values a history request can carry (docs/api.md, "Access" and "REST").

The real backend process (tests/backendproc.py) fed through the real broker; plain HTTP via
``http.client`` (which lets a test send any Host) and WebSockets via aiohttp.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from backendproc import BackendProc
from conftest import ClientFactory
from devices import Device
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.web.access import WebAccess, normalise_origin, split_host
from edgefleet.common.settings import load_settings
from edgefleet.dev.broker import Mosquitto
from edgefleet.errors import ConfigError

aiohttp = pytest.importorskip("aiohttp")

TOKEN = "web-access-test-token-0123456789"


def request(be: BackendProc, path: str, *, host: str | None = None,
            token: str | None = None) -> tuple[int, Any]:
    """GET ``path`` with exactly this Host header (default: the backend's own)."""
    port = be.http_port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host if host is not None else f"127.0.0.1:{port}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(body)
    except ValueError:
        return resp.status, body.decode(errors="replace")


async def ws_first_frame(be: BackendProc, *, origin: str | None = None, host: str | None = None,
                         query: str = "") -> dict[str, Any]:
    """Open /ws and return its first frame; raises WSServerHandshakeError when refused."""
    headers = {"Host": host} if host else {}
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"ws://127.0.0.1:{be.http_port}/ws{query}", origin=origin, headers=headers
    ) as ws:
        msg = await asyncio.wait_for(ws.receive(), 10)
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return {"closed": msg.data}
        if msg.type != aiohttp.WSMsgType.TEXT:
            return {"closed": ws.close_code}
        return dict(json.loads(msg.data))


async def refused_status(be: BackendProc, **kw: Any) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await ws_first_frame(be, **kw)
    return int(err.value.status)


@pytest.fixture
async def backend(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[BackendProc]:
    be = BackendProc(broker, tmp_path / "be", allowed_hosts="dash.example, fleet.test",
                     allowed_origins="https://dash.example").start()
    await asyncio.to_thread(be.wait_healthy, 30)
    yield be
    await asyncio.to_thread(be.stop)


# --- Host (DNS rebinding) -----------------------------------------------------------------


async def test_a_foreign_host_gets_421_on_every_path_but_healthz(backend: BackendProc) -> None:
    port = backend.http_port
    for path in ("/", "/static/js/app.js", "/api/devices", "/api/alerts", "/metrics",
                 "/api/auth", "/nowhere"):
        status, body = request(backend, path, host=f"rebind.attacker.example:{port}")
        assert status == 421, path
        assert "rebind.attacker.example" in body["error"]
        assert "EDGE_BACKEND_ALLOWED_HOSTS" in body["error"]
    assert request(backend, "/api/devices", host="")[0] == 421  # an empty Host too
    status, body = request(backend, "/healthz", host="probe.internal:80")
    assert status == 200 and body["status"] == "ok"  # probes may use any name
    # the names a loopback listener serves, on any port (an SSH tunnel's local port too)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost:9000", f"[::1]:{port}",
                 "dash.example", f"FLEET.test:{port}"):
        assert request(backend, "/api/devices", host=host)[0] == 200, host
    # a loopback listener answers no other address
    assert request(backend, "/api/devices", host=f"192.168.1.10:{port}")[0] == 421
    assert await refused_status(backend, host="rebind.attacker.example") == 421


# --- Origin on /ws ------------------------------------------------------------------------


async def test_ws_accepts_its_own_origin_and_refuses_others(backend: BackendProc) -> None:
    port = backend.http_port
    frame = await ws_first_frame(backend, origin=f"http://127.0.0.1:{port}")
    assert frame["type"] == "snapshot" and "feed" in frame["summary"]
    frame = await ws_first_frame(backend, origin=f"http://localhost:{port}",
                                 host=f"localhost:{port}")
    assert frame["type"] == "snapshot"
    assert (await ws_first_frame(backend, origin="https://dash.example"))["type"] == "snapshot"
    for alias in (f"http://localhost:{port}", f"http://[::1]:{port}"):  # the same listener
        assert (await ws_first_frame(backend, origin=alias))["type"] == "snapshot", alias
    for origin in (f"http://127.0.0.1:{port + 1}", f"http://localhost:{port + 1}", "null",
                   "http://evil.example", f"https://127.0.0.1:{port}", "http://dash.example"):
        assert await refused_status(backend, origin=origin) == 403, origin
    # no Origin: not a browser; allowed without a token on a loopback listener
    assert (await ws_first_frame(backend))["type"] == "snapshot"


async def test_with_a_token_ws_and_metrics_need_it(broker: Mosquitto, tmp_path: Path) -> None:
    be = BackendProc(broker, tmp_path / "tok", auth_token=TOKEN).start()
    try:
        await asyncio.to_thread(be.wait_healthy, 30)
        status, body = request(be, "/metrics")
        assert (status, body) == (401, {"error": "unauthorized"})
        assert request(be, "/metrics", token="wrong-token-wrong-token")[0] == 401
        status, text = request(be, "/metrics", token=TOKEN)
        assert status == 200 and "edgefleet_ingest_samples_total" in text
        assert (await ws_first_frame(be))["closed"] == 4401  # no Origin, no token
        frame = await ws_first_frame(be, query=f"?token={TOKEN}")  # no Origin, the token
        assert frame["type"] == "snapshot"
        with_origin = {"origin": "http://evil.example", "query": f"?token={TOKEN}"}
        assert await refused_status(be, **with_origin) == 403  # the token is not enough
    finally:
        await asyncio.to_thread(be.stop)


async def test_update_frames_are_counted_in_metrics(
    backend: BackendProc, mqtt_client: ClientFactory
) -> None:
    """Every update frame the hub broadcasts shows in ``edgefleet_websocket_frames_total``."""
    def frames_total() -> float:
        text = request(backend, "/metrics")[1]
        line = next(ln for ln in text.splitlines()
                    if ln.startswith("edgefleet_websocket_frames_total "))
        return float(line.rsplit(" ", 1)[1])

    dev = await Device.connect(mqtt_client, "dev-f")
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"ws://127.0.0.1:{backend.http_port}/ws"
    ) as ws:
        first = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
        before = frames_total()
        await dev.sample(time.time(), cpu_percent=5.0)
        async with asyncio.timeout(20):  # the sample's update frame reaches this client
            while "dev-f" not in [r["id"] for r in first.get("devices", [])]:
                first = json.loads((await ws.receive()).data)
    assert first["type"] == "update"
    assert frames_total() >= before + 1


# --- history query values -------------------------------------------------------------------


BAD_QUERIES = [
    "start=nan", "end=nan", "start=inf", "end=inf", "start=-inf", "end=-inf", "start=-1",
    "end=1e308", "start=1e400", "start=99999999999999999999999", "start=0x10",
    "start=10&end=5", "start=5&end=5", "points=nan", "points=1.5", "points=1e3", "points=1",
    "points=5001", "points=-3", "points=99999999999999999999", "points=%C2%B2",
    "keys=" + ",".join(f"k.n{i}" for i in range(257)),
    "keys=" + "a" * 5000, "keys=cpu.percent%0A", "keys=" + quote("disk.used_percent[" + "x" * 201 + "]"),
    "keys=" + quote("Bad Key"),
]


async def test_bad_query_values_get_400_with_one_line(
    backend: BackendProc, mqtt_client: ClientFactory
) -> None:
    dev = await Device.connect(mqtt_client, "dev-q")
    await dev.sample(time.time(), cpu_percent=12.0)
    await dev.sample(time.time(), cpu_percent=13.0)
    deadline = time.monotonic() + 20
    while request(backend, "/api/devices/dev-q")[0] != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for query in BAD_QUERIES:
        status, body = request(backend, f"/api/devices/dev-q?{query}")
        assert status == 400, (query[:60], status, body)
        assert isinstance(body["error"], str) and "\n" not in body["error"]
        assert len(body["error"]) < 200
    assert request(backend, "/api/devices/nobody?start=nan")[0] == 400  # checked first


async def test_odd_and_unknown_keys_are_answered(
    backend: BackendProc, mqtt_client: ClientFactory
) -> None:
    dev = await Device.connect(mqtt_client, "dev-k")
    now = time.time()
    odd = 'disk.used_percent[/mnt/a"b,c]'
    await dev.client.publish("dt/edgefleet/dev-k/metrics", json.dumps({
        "v": 1, "device_id": "dev-k", "stream": "s", "sent_at": now,
        "samples": [{"seq": 0, "ts": now - 1, "metrics": {"cpu.percent": 5.0, odd: 61.0}}],
    }).encode())
    unknown = [f'temp.celsius[z"{i}]' for i in range(254)]
    keys = ",".join(quote(k) for k in [odd, "cpu.percent", *unknown])  # 256 keys: allowed
    path = f"/api/devices/dev-k?start={now - 60}&keys={keys}"
    deadline = time.monotonic() + 20
    # the device is listed once ingested; its sample is in the history once committed
    while ((got := request(backend, path))[0] != 200
           or got[1]["history"]["series"].get("cpu.percent") != [5.0]):
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.1)
    status, body = got
    assert status == 200, body
    series = body["history"]["series"]
    assert series[odd] == [61.0]  # the comma inside [...] belongs to the key
    assert series["cpu.percent"] == [5.0]
    assert series[unknown[0]] == [None] and len(series) == 256


# --- pure parts -----------------------------------------------------------------------------


def test_host_and_origin_parsing() -> None:
    assert split_host("LocalHost.:8080") == ("localhost", 8080)
    assert split_host("[::1]") == ("::1", None)
    for bad in ("", "[::1", "::1", "a b", "x:0", "x:70000", "[evil]:1", "a/b", "u@h"):
        assert split_host(bad) is None, bad
    assert normalise_origin("HTTP://Example.COM:80/") == "http://example.com"
    assert normalise_origin("https://[::1]:8443") == "https://[::1]:8443"
    for bad in ("null", "file:///x", "http://", "http://h/path", "http://u@h", "ws://h"):
        assert normalise_origin(bad) is None, bad


def test_what_each_listener_serves() -> None:
    wildcard = WebAccess.build("0.0.0.0", allowed_hosts=["dash.example"])
    assert wildcard.host_ok("10.1.2.3:8080") and wildcard.host_ok("localhost")
    assert wildcard.host_ok("dash.example") and not wildcard.host_ok("other.example")
    named = WebAccess.build("192.168.1.10")
    assert named.host_ok("192.168.1.10:8080")
    assert not named.host_ok("localhost") and not named.host_ok("10.1.2.3")
    with pytest.raises(ValueError, match="without port"):
        WebAccess.build(allowed_hosts=["dash.example:8080"])
    with pytest.raises(ValueError, match="scheme://host"):
        WebAccess.build(allowed_origins=["dash.example"])


def test_settings_take_comma_lists_or_toml_lists_and_name_a_bad_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in [k for k in os.environ if k.startswith("EDGE_BACKEND_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("EDGE_BACKEND_ALLOWED_HOSTS", "fleet.lan, Fleet.Example.com")
    monkeypatch.setenv("EDGE_BACKEND_ALLOWED_ORIGINS", "https://fleet.example.com")
    s = load_settings(BackendSettings)
    assert s.allowed_hosts == ["fleet.lan", "Fleet.Example.com"]
    assert s.allowed_origins == ["https://fleet.example.com"]
    monkeypatch.delenv("EDGE_BACKEND_ALLOWED_HOSTS")
    monkeypatch.delenv("EDGE_BACKEND_ALLOWED_ORIGINS")
    toml = tmp_path / "backend.toml"
    toml.write_text('allowed_hosts = ["a.example", "b.example"]\n')
    assert load_settings(BackendSettings, toml).allowed_hosts == ["a.example", "b.example"]
    monkeypatch.setenv("EDGE_BACKEND_ALLOWED_HOSTS", "fleet.lan:8080")
    with pytest.raises(ConfigError, match=r"^bad setting EDGE_BACKEND_ALLOWED_HOSTS: .*"
                                          r"'fleet.lan:8080'.*without port"):
        load_settings(BackendSettings)
    monkeypatch.setenv("EDGE_BACKEND_ALLOWED_HOSTS", "")
    monkeypatch.setenv("EDGE_BACKEND_ALLOWED_ORIGINS", "fleet.example.com")
    with pytest.raises(ConfigError, match=r"^bad setting EDGE_BACKEND_ALLOWED_ORIGINS: .*"
                                          r"scheme://host"):
        load_settings(BackendSettings)
