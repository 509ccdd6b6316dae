"""The WebSocket's delta frames (backend/web/rows.py and the fleet view's use of it): a frame
carries, per changed device, only the fields that changed and the trend's new points; a page
that applies every frame to its snapshot holds exactly the server's rows, whether it joined
at the start, mid-stream, or reconnected after changes nobody watched; only the rows of
devices that changed are rebuilt.

``apply_change`` is the page's ``applyChange`` (dashboard/js/table.js) in Python;
tests/browser/test_fleet_view.py checks the page itself against the server's trends."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from test_web_app import Serve, Served, serve, until, with_devices  # noqa: F401
from test_web_fleet_view import MakeRig, make_rig  # noqa: F401

from edgefleet.backend.web.rows import RowBook, row_delta, spark_tail

KEEP = 5


def apply_change(row: dict[str, Any] | None, change: dict[str, Any], keep: int) -> dict[str, Any]:
    """What the page does with one entry of an update frame's ``devices``."""
    if row is None:
        assert "status" in change and "spark" in change, f"a change to a row never sent: {change}"
        return dict(change)
    out = {**row, **change}
    if "spark_add" in change:
        out["spark"] = (row["spark"] + change["spark_add"])[-keep:]
        del out["spark_add"]
    return out


def test_a_change_carries_only_the_fields_that_differ_and_the_new_trend_points() -> None:
    old = {"id": "d", "status": "online", "cpu": 10.0, "labels": {"a": "1"}, "spark": [1.0, 2.0]}
    new = {**old, "cpu": 11.5, "labels": {"a": "2"}, "spark": [1.0, 2.0, 3.0]}
    assert row_delta(old, new, KEEP) == {"id": "d", "cpu": 11.5, "labels": {"a": "2"},
                                         "spark_add": [3.0]}
    assert row_delta(old, dict(old), KEEP) is None  # nothing changed: nothing to send
    # a full trend shifts: the points appended, the page drops as many from the front
    assert spark_tail([1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0, 7.0], KEEP) == [6.0, 7.0]
    assert spark_tail([5.0] * KEEP, [5.0] * KEEP, KEEP) == []  # same series, nothing to add
    # not a continuation (the device was forgotten and came back): the whole trend
    assert row_delta({**old, "spark": [7.0, 8.0, 9.0]}, new, KEEP) == {
        "id": "d", "cpu": 11.5, "labels": {"a": "2"}, "spark": [1.0, 2.0, 3.0]}


def test_a_page_applying_every_frame_holds_the_server_rows_through_random_changes() -> None:
    rng = random.Random(19)
    book = RowBook(KEEP)
    server: dict[str, dict[str, Any]] = {}
    page: dict[str, dict[str, Any]] = {}
    for frame in range(300):
        for name in rng.sample([f"d{i}" for i in range(12)], 4):  # this frame's changes
            row = server.get(name) or {"id": name, "status": "online", "cpu": 0.0, "spark": []}
            spark = [] if rng.random() < 0.05 else list(row["spark"])  # a reset now and then
            spark = (spark + [float(rng.randint(0, 3)) for _ in range(rng.randint(0, 7))])[-KEEP:]
            server[name] = {**row, "cpu": float(rng.randint(0, 2)), "spark": spark,
                            "status": rng.choice(["online", "online", "offline"])}
            change = book.update(dict(server[name]))
            if change is not None:
                page[name] = apply_change(page.get(name), json.loads(json.dumps(change)), KEEP)
        assert page == server, f"frame {frame}"


async def test_only_changed_devices_are_rebuilt_and_a_new_client_gets_full_rows(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    t = time.time()
    await rig.sample("dev-a", 0, t, metrics={"cpu_percent": 10.0})
    await rig.sample("dev-b", 0, t, metrics={"cpu_percent": 20.0})
    view = rig.view
    view.hub.register("first")  # the only client: its snapshot fills the book
    first = json.loads(view.snapshot())
    assert [r["id"] for r in first["devices"]] == ["dev-a", "dev-b"]
    held_b, held_a = view.rows.row("dev-b"), view.rows.row("dev-a")
    assert first["devices"][1] == held_b == rig.row("dev-b")

    await rig.sample("dev-a", 1, t + 1, metrics={"cpu_percent": 30.0})
    frame = view.update_frame({"dev-a"}, [])
    assert frame["devices"] == [{"id": "dev-a", "last_seen": t + 1, "last_sample_ts": t + 1,
                                 "cpu": 30.0, "spark_add": [30.0]}]
    assert view.rows.row("dev-b") is held_b  # unchanged: not rebuilt
    assert view.rows.row("dev-a") is not held_a and view.rows.row("dev-a") == rig.row("dev-a")
    assert view.update_frame({"dev-b"}, [])["devices"] == []  # touched, but nothing changed

    view.hub.register("second")  # joins later: full rows, the state every client holds
    second = json.loads(view.snapshot())
    assert second["devices"] == [rig.row("dev-a"), rig.row("dev-b")]
    assert second["devices"][0]["spark"] == [10.0, 30.0]


class Mirror:
    """A /ws client that keeps the rows as the page does (snapshot, then every change),
    reading every frame as it comes (its own task)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.rows: dict[str, dict[str, Any]] = {}
        self.keep = 0
        self.updates = 0  # update frames applied
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            frame = json.loads(await self.ws.receive())
            if frame["type"] == "snapshot":
                self.keep = frame["spark_points"]
                self.rows = {r["id"]: r for r in frame["devices"]}
                continue
            self.updates += 1
            for change in frame["devices"]:
                self.rows[change["id"]] = apply_change(self.rows.get(change["id"]), change,
                                                       self.keep)
            for gone in frame["removed"]:
                self.rows.pop(gone, None)

    async def holds(self, served: Served) -> None:
        """Until this client's rows equal the server's (what /api/devices answers)."""
        def same() -> bool:
            assert not self.task.done(), self.task
            return self.rows == {r["id"]: r for r in served.backend.view.device_rows()}
        await until(same, timeout=15)


async def test_clients_joining_mid_stream_or_after_unwatched_changes_see_the_server_rows(
    serve: Serve,
) -> None:
    served = await serve()
    t = await with_devices(served)
    hub = served.backend.hub

    async def stream(seqs: range, devices: int = 4) -> None:
        """Per round, each device one sample, then the hub's next cycle: many frames."""
        for seq in seqs:
            cycle = hub.generation
            for i in range(devices):
                served.send(f"dev-{i}", 10 + seq, t + seq, cpu_percent=float(seq % 7 + i))
            await until(lambda c=cycle: not served.backend.inbox and hub.generation > c)

    async with served.client.websocket("/ws") as ws_one:
        one = Mirror(ws_one)
        await stream(range(0, 12))
        async with served.client.websocket("/ws") as ws_two:  # joins mid-stream
            two = Mirror(ws_two)
            await stream(range(12, 45))
            await one.holds(served)
            await two.holds(served)
            two.task.cancel()
        one.task.cancel()
    assert len(one.rows["dev-1"]["spark"]) == 30  # a full trend, shifted many times
    assert one.updates >= 40 and two.updates >= 30
    await until(lambda: not hub.clients)
    await stream(range(45, 60))  # nobody watches: these changes reach no client
    async with served.client.websocket("/ws") as ws_three:  # reconnects
        three = Mirror(ws_three)
        await three.holds(served)
        await stream(range(60, 70))
        await three.holds(served)
        three.task.cancel()
    assert three.rows["dev-2"]["spark"][-1] == float(69 % 7 + 2)


async def test_rows_made_when_touched_are_current_when_the_frame_is_cut(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    t = time.time()
    await rig.sample("dev-a", 0, t, metrics={"cpu_percent": 10.0})
    view = rig.view
    view.hub.register("page")
    view.snapshot()
    await rig.sample("dev-a", 1, t + 1, metrics={"cpu_percent": 20.0})  # touched: made now
    assert view.update_frame({"dev-a"}, [])["devices"] == [
        {"id": "dev-a", "last_seen": t + 1, "last_sample_ts": t + 1, "cpu": 20.0,
         "spark_add": [20.0]}]

    await rig.sample("dev-a", 2, t + 2, metrics={"cpu_percent": 30.0})
    await view.set_labels("dev-a", {"site": "north"}, [])  # touched again before the frame
    [change] = view.update_frame({"dev-a"}, [])["devices"]
    assert (change["cpu"], change["labels"], change["spark_add"]) == (30.0, {"site": "north"},
                                                                      [30.0])
    assert view.rows.row("dev-a") == rig.row("dev-a")
    await rig.sample("dev-a", 3, t + 3, metrics={"cpu_percent": 99.0, "temp_celsius": 99.0})
    frame = view.update_frame({"dev-a"}, rig.events[-1:])  # too hot: critical, fired now
    assert frame["devices"][0]["severity"] == "critical" == rig.row("dev-a")["severity"]
