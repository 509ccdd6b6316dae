"""Silences through the REST API and the CLI, around a real backend (Quart's test client and
a real Hypercorn, see test_web_app.py) that sends to the Slack stand-in (tests/fakeslack.py).

What it proves: a preview shows what a silence would hide now; one covering more than the
confirm share of the fleet is refused (409) until confirmed; a firing alert under a silence
sends nothing to Slack but is listed as silenced; expiring the silence brings it back ONCE;
bad silences get one-line 400s; silences survive a restart; the CLI adds, lists and
expires them through the running backend. Each "nothing was sent" is proved by a later
alert that WAS sent (the outbox sends in order), never by waiting."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from test_labels import _listening
from test_web_app import Serve, Served, serve, until  # noqa: F401 - fixture
from test_web_fleet_view import status
from tests.backend.store_backends import fleet_store

from edgefleet.backend.alerts.silences import Silences, parse_silence
from edgefleet.backend.web.app import create_app
from edgefleet.backend.web.silence_api import SilenceDesk
from edgefleet.cli import main as cli_main
from edgefleet.dev.broker import free_port
from edgefleet.wire.messages import status_topic
from fakeslack import FakeSlack, _no_proxy  # noqa: F401 - fixture


async def call(served: Served, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    resp = await getattr(served.client, method)(path, data=data)
    return resp.status_code, json.loads(await resp.get_data(as_text=True))


async def start(serve: Serve, slack: FakeSlack) -> tuple[Served, SilenceDesk, float]:
    served = await serve(slack_webhook_url=slack.webhook_url, alert_group_window_s=0)
    desk = served.backend.view.silences
    t = time.time()
    for device in ("dev-a", "dev-b"):  # two calm devices: dev-b is half the fleet
        served.transport.deliver(status_topic(device), status(device, "online", t, 5.0), None)
        served.send(device, 0, t, cpu_percent=5.0, disk_used_percent=10.0)
    await until(lambda: len(served.backend.view.device_rows()) == 2)
    return served, desk, t


def fired(slack: FakeSlack, prefix: str) -> int:
    return sum(1 for i in slack.event_ids() if i.startswith(prefix))


async def sent(slack: FakeSlack, prefix: str) -> None:
    async with asyncio.timeout(15):
        while not fired(slack, prefix):
            await slack.wait_for_messages(len(slack.messages) + 1)


async def test_a_silenced_alert_sends_nothing_and_comes_back_once_when_it_expires(
    serve: Serve,
) -> None:
    async with FakeSlack() as slack:
        served, _, t = await start(serve, slack)
        silence = {"matchers": {"device": "dev-b"}, "duration": "1h", "author": "ann",
                   "comment": "replacing the fan"}
        code, preview = await call(served, "post", "/api/silences/preview", silence)
        assert code == 200 and (preview["firing"], preview["pending"]) == ([], [])
        assert (preview["devices"], preview["fleet"], preview["needs_confirm"]) == (1, 2, True)

        code, body = await call(served, "post", "/api/silences", silence)
        assert code == 409 and "covers 1 of 2 devices" in body["error"]
        assert (await call(served, "get", "/api/silences"))[1]["silences"] == []
        code, body = await call(served, "post", "/api/silences", {**silence, "confirm": True})
        assert code == 201 and body["silence"]["state"] == "active"
        ident = body["silence"]["id"]

        served.send("dev-b", 1, t + 1, temp_celsius=99.0)  # too_hot fires under the silence
        await until(lambda: "too_hot|dev-b|" in served.backend.alerts.firing)
        code, alerts = await call(served, "get", "/api/alerts")
        [hot] = alerts["firing"]
        assert hot["muted"] == {"kind": "silenced", "by": ident}
        code, preview = await call(served, "post", "/api/silences/preview",
                                   {"matchers": {"rule": "too_*"}, "duration": 60, "author": "b"})
        assert [a["key"] for a in preview["firing"]] == ["too_hot|dev-b|"]

        served.send("dev-a", 1, t + 1, disk_used_percent=97.0)  # not silenced: sent
        await sent(slack, "disk_full|dev-a|")
        assert fired(slack, "too_hot|dev-b|") == 0

        code, body = await call(served, "delete", f"/api/silences/{ident}")
        assert code == 200 and body["silence"]["state"] == "expired"
        await sent(slack, "too_hot|dev-b||firing|")  # back, once the silence ended
        served.send("dev-a", 2, t + 2, disk_used_percent=10.0)
        await sent(slack, "disk_full|dev-a||resolved|")
        assert fired(slack, "too_hot|dev-b||firing|") == 1
        code, alerts = await call(served, "get", "/api/alerts")
        assert "muted" not in alerts["firing"][0]


async def test_bad_silences_get_one_line_and_nothing_is_stored(serve: Serve) -> None:
    async with FakeSlack() as slack:
        served, _, _ = await start(serve, slack)
        bad = {
            "no matchers": ({"matchers": {}, "duration": "1h", "author": "a"},
                            "a silence needs at least one matcher"),
            "no end": ({"matchers": {"rule": "x"}, "author": "a"}, "give ends_at"),
            "past": ({"matchers": {"rule": "x"}, "ends_at": 1000, "author": "a"},
                     "must end after it starts and after now"),
            "severity": ({"matchers": {"severity": "bad"}, "duration": 60, "author": "a"},
                         "severity must be one of"),
            "author": ({"matchers": {"rule": "x"}, "duration": 60}, "author is required"),
            "extra": ({"matchers": {"rule": "x"}, "duration": 60, "author": "a", "x": 1},
                      "unknown field 'x'"),
            "matcher": ({"matchers": {"host": "x"}, "duration": 60, "author": "a"},
                        "unknown matcher 'host'"),
            "duration": ({"matchers": {"rule": "x"}, "duration": "soon", "author": "a"},
                         "duration: must be a duration"),
        }
        for name, (doc, message) in bad.items():
            code, body = await call(served, "post", "/api/silences", doc)
            assert code == 400 and message in body["error"], name
            assert "\n" not in body["error"]
        resp = await served.client.post("/api/silences", data="{nope")
        assert resp.status_code == 400
        code, body = await call(served, "delete", "/api/silences/nothing-here")
        assert code == 404 and body["error"] == "unknown silence 'nothing-here'"
        assert (await call(served, "get", "/api/silences"))[1]["silences"] == []


def test_silences_are_stored_in_the_fleet_database(tmp_path: Path) -> None:
    now = time.time()
    store = fleet_store(tmp_path / "fleet.db")
    book = Silences(store.open_db(), groups_of=lambda _d: ("north",))
    made = book.add(parse_silence({"matchers": {"group": "north", "labels": {"site": "x"}},
                                   "duration": "2h", "author": "ann", "comment": "work"}, now),
                    now)
    device = book.silence_device("pi-7", author="bob", duration_s=600, comment="fan")
    book.expire(device.id, now + 1)
    book.close()
    again = Silences(store.open_db(), groups_of=lambda _d: ("north",))
    assert again.get(made.id) == made
    assert again.get(device.id).state(now + 2) == "expired"  # type: ignore[union-attr]
    target = again.target("cpu", "pi-1", "warning", {"site": "x"})
    assert again.silencing(target, now + 5) == made
    assert again.silencing(again.target("cpu", "pi-1", "warning"), now + 5) is None
    again.close()
    store.close()


async def test_cli_adds_lists_and_expires_through_a_running_backend(
    serve: Serve, capsys: Any
) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    async with FakeSlack() as slack:
        served, desk, t = await start(serve, slack)
        served.send("dev-b", 1, t + 1, temp_celsius=99.0)
        await until(lambda: "too_hot|dev-b|" in served.backend.alerts.firing)
        port, stop = free_port(), asyncio.Event()
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        app = create_app(served.backend.view)
        task = asyncio.create_task(hypercorn_serve(app, config, shutdown_trigger=stop.wait))
        cli = ["silence", "--url", f"http://127.0.0.1:{port}"]
        add = [*cli, "add", "--device", "dev-b", "--duration", "2h", "--author", "cli-user",
               "--comment", "fan swap"]
        try:
            await until(lambda: _listening(port))
            assert await asyncio.to_thread(cli_main, add) == 1  # half the fleet: confirm
            out = capsys.readouterr()
            assert "would hide 1 firing and 0 pending alerts now; covers 1 of 2 devices" in out.out
            assert "too_hot on dev-b" in out.out and "add --yes" in out.err
            assert desk.centre.silences.all() == []
            assert await asyncio.to_thread(cli_main, [*add, "--yes"]) == 0
            [made] = desk.centre.silences.all()
            assert f"silence {made.id} until" in capsys.readouterr().out
            assert await asyncio.to_thread(cli_main, [*cli, "list"]) == 0
            listed = capsys.readouterr().out
            assert made.id in listed and "device=dev-b" in listed and "cli-user: fan swap" in listed
            assert await asyncio.to_thread(cli_main, [*cli, "expire", made.id]) == 0
            assert capsys.readouterr().out == f"silence {made.id}: expired\n"
            assert await asyncio.to_thread(cli_main, [*cli, "list"]) == 0
            assert capsys.readouterr().out == ""
            assert await asyncio.to_thread(cli_main, [*cli, "expire", "nope"]) == 2
            assert capsys.readouterr().err.strip() == (
                "edgefleet silence: error: 404: unknown silence 'nope'")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        served.send("dev-a", 1, t + 1, disk_used_percent=97.0)
        await sent(slack, "disk_full|dev-a||firing|")
        assert fired(slack, "too_hot|dev-b||firing|") == 1  # sent before the silence, not again


def test_an_unreadable_stored_silence_is_skipped_not_fatal(tmp_path: Path) -> None:
    now = time.time()
    book = Silences(tmp_path / "fleet.db", groups_of=lambda _d: ())
    kept = book.silence_device("pi-1", author="ann", duration_s=600)
    book.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "fleet.db") as conn:
        conn.execute("INSERT INTO silences VALUES ('bad', '{\"id\": \"bad\"}', ?)", (now + 60,))
    again = Silences(tmp_path / "fleet.db", groups_of=lambda _d: ())
    assert [s.id for s in again.all()] == [kept.id]
    again.close()
