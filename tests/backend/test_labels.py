"""Device labels, rules-file groups and forgetting a device, through the REST API (Quart's
test client around a real backend, see test_web_app.py), the WebSocket and the CLI (a real
Hypercorn on a loopback port). What it proves: labels are validated with one-line 400s,
stored in the fleet database (a restarted backend shows them) and appear in rows and frames;
a forgotten device leaves /api/devices, the page's frames (``removed``), the counts and the
alert list; its history is kept or purged on request; when it sends again it is back with
no labels."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from test_web_app import Serve, Served, frames_until, serve, until, with_devices  # noqa: F401
from test_web_fleet_view import RULES

from edgefleet.backend.store.metadata import MAX_LABELS
from edgefleet.backend.web.app import create_app
from edgefleet.backend.web.fleet_meta import RateMeter, backend_figures
from edgefleet.cli import main as cli_main
from edgefleet.dev.broker import free_port

GROUPS = RULES + 'groups:\n  north: ["dev-a"]\n  all_devs: ["dev-*"]\n'


async def put(served: Served, device: str, body: Any) -> tuple[int, Any]:
    resp = await served.client.put(f"/api/devices/{device}/labels", data=json.dumps(body))
    return resp.status_code, json.loads(await resp.get_data(as_text=True))


async def delete(served: Served, path: str) -> tuple[int, Any]:
    resp = await served.client.delete(path)
    return resp.status_code, json.loads(await resp.get_data(as_text=True))


def row(body: dict[str, Any], device: str) -> dict[str, Any]:
    return next(r for r in body["devices"] if r["id"] == device)


async def test_labels_are_set_shown_removed_and_survive_a_restart(
    serve: Serve, tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(GROUPS)
    served = await serve()
    await with_devices(served)
    assert await put(served, "dev-a", {"labels": {"site": "north-3", "rack": "r7"}}) == (
        200, {"device": "dev-a", "labels": {"site": "north-3", "rack": "r7"}})
    _, body = await served.get("/api/devices")
    assert row(body, "dev-a")["labels"] == {"site": "north-3", "rack": "r7"}
    assert row(body, "dev-a")["groups"] == ["north", "all_devs"]
    assert (row(body, "dev-b")["labels"], row(body, "dev-b")["groups"]) == ({}, ["all_devs"])

    async with served.client.websocket("/ws") as ws:
        await frames_until(ws, lambda f: f["type"] == "snapshot")
        await put(served, "dev-a", {"labels": {"rack": None, "owner": "ops"}})
        frame = await frames_until(ws, lambda f: any(r["id"] == "dev-a" for r in f["devices"]))
    assert row(frame, "dev-a")["labels"] == {"site": "north-3", "owner": "ops"}
    assert await delete(served, "/api/devices/dev-a/labels?keys=owner") == (
        200, {"device": "dev-a", "labels": {"site": "north-3"}})

    served.backend.stop()
    again = await serve()
    await until(lambda: again.backend.view.device_rows() != [])
    _, body = await again.get("/api/devices")
    assert row(body, "dev-a")["labels"] == {"site": "north-3"}


async def test_bad_labels_are_refused_with_one_line_and_nothing_changes(serve: Serve) -> None:
    served = await serve()
    await with_devices(served)
    cases = [
        ({"labels": {"Site": "x"}}, "label key 'Site' must match"),
        ({"labels": {"group": "x"}}, "label key 'group' is reserved"),
        ({"labels": {"site": "x" * 65}}, "value must be 1 to 64 characters on one line"),
        ({"labels": {"site": "a\nb"}}, "value must be 1 to 64 characters on one line"),
        ({"labels": {"site": 3}}, "label 'site': value must be a string"),
        ({"labels": {}}, "with at least one"),
        (["site"], "body must be"),
    ]
    for body, message in cases:
        code, answer = await put(served, "dev-a", body)
        assert code == 400 and message in answer["error"], (body, answer)
        assert "\n" not in answer["error"]
    resp = await served.client.put("/api/devices/dev-a/labels", data="{not json")
    assert resp.status_code == 400
    many = {f"k{i}": "v" for i in range(MAX_LABELS + 1)}
    code, answer = await put(served, "dev-a", {"labels": many})
    assert code == 400 and f"at most {MAX_LABELS}" in answer["error"]
    assert await put(served, "nobody", {"labels": {"a": "b"}}) == (
        404, {"error": "unknown device 'nobody'"})
    _, body = await served.get("/api/devices")
    assert row(body, "dev-a")["labels"] == {}


async def test_forget_keeps_history_hides_the_device_and_a_return_is_new(serve: Serve) -> None:
    served = await serve()
    t = await with_devices(served)
    await put(served, "dev-b", {"labels": {"site": "x"}})
    assert await delete(served, "/api/devices/dev-b?purge=sometimes") == (
        400, {"error": "purge must be 'history' or 'keep', not 'sometimes'"})
    async with served.client.websocket("/ws") as ws:
        await frames_until(ws, lambda f: f["type"] == "snapshot")
        code, body = await delete(served, "/api/devices/dev-b?purge=keep")
        assert (code, body["history"], body["purged_rows"]) == (200, "kept", 0)
        frame = await frames_until(ws, lambda f: f.get("removed") == ["dev-b"])
    assert (frame["summary"]["devices"], frame["summary"]["firing"]) == (1, 0)
    _, body = await served.get("/api/devices")
    assert [r["id"] for r in body["devices"]] == ["dev-a"]
    assert (await served.get("/api/devices/dev-b"))[0] == 404
    assert (await served.get("/api/alerts"))[1]["firing"] == []  # its alert is not listed
    assert served.backend.alerts.firing == {}  # resolved, not just hidden: no more reminders
    last = next(a for a in served.backend.alerts.recent if a.device == "dev-b")
    assert last.kind == "resolved" and last.summary.endswith("(device forgotten)")
    assert not served.backend.alerts.state.active("dev-b")
    assert served.backend.store.history("dev-b", t - 60, t + 60).ts == [t]  # kept
    assert await delete(served, "/api/devices/dev-b") == (404, {"error": "unknown device 'dev-b'"})

    served.send("dev-b", 1, time.time(), cpu_percent=3.0)  # it comes back
    await until(lambda: any(r["id"] == "dev-b" for r in served.backend.view.device_rows()))
    _, body = await served.get("/api/devices")
    assert row(body, "dev-b")["labels"] == {}  # a new appearance


async def test_forget_with_purge_deletes_the_history(serve: Serve) -> None:
    served = await serve()
    t = await with_devices(served)
    code, body = await delete(served, "/api/devices/dev-a?purge=history")
    assert (code, body["history"], body["purged_rows"]) == (200, "purged", 3)
    assert served.backend.store.history("dev-a", t - 60, t + 60).ts == []
    assert served.backend.store.history("dev-b", t - 60, t + 60).ts == [t]  # others untouched


async def test_cli_labels_and_forgets_through_a_running_backend(
    serve: Serve, capsys: Any
) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    served = await serve()
    await with_devices(served)
    port, stop = free_port(), asyncio.Event()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    app = create_app(served.backend.view)
    task = asyncio.create_task(hypercorn_serve(app, config, shutdown_trigger=stop.wait))
    url = f"http://127.0.0.1:{port}"
    try:
        await until(lambda: _listening(port))
        cli = ["device", "--url", url]
        assert await asyncio.to_thread(cli_main, [*cli, "label", "dev-a", "site=n1", "x=y"]) == 0
        assert capsys.readouterr().out == "dev-a: site=n1 x=y\n"
        assert await asyncio.to_thread(cli_main, [*cli, "label", "dev-a", "x-"]) == 0
        assert capsys.readouterr().out == "dev-a: site=n1\n"
        assert await asyncio.to_thread(cli_main, [*cli, "label", "dev-a", "Bad=1"]) == 2
        assert "label key 'Bad' must match" in capsys.readouterr().err
        assert await asyncio.to_thread(cli_main, [*cli, "forget", "dev-a", "--purge"]) == 0
        assert "dev-a: forgotten, history purged (3 stored rows deleted)" in capsys.readouterr().out
        assert await asyncio.to_thread(cli_main, [*cli, "forget", "dev-a"]) == 2
        assert capsys.readouterr().err.strip() == (
            "edgefleet device: error: 404: unknown device 'dev-a'")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert [r["id"] for r in served.backend.view.device_rows()] == ["dev-b"]


def _listening(port: int) -> bool:
    import socket

    with contextlib.closing(socket.socket()) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_refusals_per_second_follow_the_last_ten_seconds() -> None:
    meter = RateMeter()
    assert meter.rate(0, 100.0) == 0.0
    assert meter.rate(10, 101.0) == 10.0
    assert meter.rate(30, 103.0) == 10.0
    assert meter.rate(30, 120.0) == 0.0  # nothing refused in the last ten seconds


def test_uncommitted_samples_are_shown_only_when_the_backend_knows_them() -> None:
    common: dict[str, Any] = {"connected": True, "last_heard": 99.0, "now": 100.0, "inbox": 4,
                              "rejected_per_s": 1.5, "outbox": 0}
    assert backend_figures(**common) == {
        "feed_connected": True, "ingest_lag_s": 1.0, "inbox": 4, "rejected_per_s": 1.5,
        "outbox": 0}
    assert backend_figures(**common, uncommitted=7)["uncommitted"] == 7
    assert "uncommitted" not in backend_figures(**common, uncommitted=True)
    assert backend_figures(**{**common, "last_heard": None})["ingest_lag_s"] is None
