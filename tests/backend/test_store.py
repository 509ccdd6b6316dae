"""The fleet store: batched writes, restart, SIGKILL safety, compaction and history queries.

Every test taking ``store`` or ``open_store`` runs against SQLite and PostgreSQL
(``store_backends.py``); the file-level ones (schema row, SIGKILL, integrity) are SQLite's.
No test here measures time; the SIGKILL test waits on the child's output, not a clock.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from tests.backend.store_backends import OpenStore, open_store, store  # noqa: F401

from edgefleet.backend.ingest.dedup import LOST_CAP, SeqCursor
from edgefleet.backend.ingest.handler import Ingest
from edgefleet.backend.records import AcceptedSample, DeviceRow
from edgefleet.backend.store.contract import FleetStoreContract
from edgefleet.backend.store.fleet_store import FleetStore
from edgefleet.backend.store.history import BUCKET_S, choose_step
from edgefleet.wire.messages import metrics_topic

T0 = 1_700_000_100.0 - (1_700_000_100.0 % 3600)  # an hour boundary
DEV = "dev-1"


def samples(count: int, *, device: str = DEV, start: float = T0, every: float = 10.0,
            first_seq: int = 0) -> list[AcceptedSample]:
    """``count`` samples whose cpu.percent is their index and mem.used_percent 50 - index."""
    return [
        AcceptedSample(device, first_seq + i, start + i * every,
                       {"cpu.percent": float(i), "mem.used_percent": 50.0 - i})
        for i in range(count)
    ]


def metrics_payload(seqs: list[int], stream: str = "s1") -> bytes:
    return json.dumps({
        "v": 1, "device_id": DEV, "stream": stream, "sent_at": T0,
        "samples": [{"seq": s, "ts": T0 + s, "metrics": {"cpu.percent": 1.0}} for s in seqs],
    }).encode()


# -- writes, reads, restart ----------------------------------------------------------------


def test_samples_come_back_in_ts_order_after_reopen(open_store: OpenStore) -> None:
    first = open_store()
    backlog = samples(5, start=T0 - 100)  # replayed later, taken earlier
    assert first.add_samples(samples(3, start=T0)) == 3
    assert first.add_samples(backlog) == 5
    first.close()
    again = open_store()
    hist = again.history(DEV, T0 - 200, T0 + 100, keys=["cpu.percent"])
    assert hist.step_s == 0.0
    assert hist.source == "raw"
    assert hist.ts == [T0 - 100, T0 - 90, T0 - 80, T0 - 70, T0 - 60, T0, T0 + 10, T0 + 20]
    assert hist.avg["cpu.percent"] == [0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 2.0]
    assert again.latest(DEV) == {"cpu.percent": 2.0, "mem.used_percent": 48.0}
    assert [d.device for d in again.devices()] == [DEV]


def test_device_rows_are_upserted(store: FleetStoreContract) -> None:
    row = DeviceRow(DEV, first_seen=10.0, last_seen=20.0, status="online", status_ts=20.0,
                    health={"dropped_total": 4}, agent_version="0.1.0", interval_s=5.0)
    store.add_samples([], devices=[row])
    later = DeviceRow(DEV, first_seen=15.0, last_seen=30.0, status="offline", status_ts=30.0)
    store.add_samples([], devices=[later])
    (got,) = store.devices()
    assert got.device == DEV
    # a row without health (the writer has not heard it) keeps the stored one
    assert (got.first_seen, got.last_seen, got.status, got.health) == (
        10.0, 30.0, "offline", {"dropped_total": 4})


def test_unknown_devices_of_samples_get_rows(store: FleetStoreContract) -> None:
    store.add_samples(samples(2, device="a") + samples(1, device="b", start=T0 + 5))
    rows = {row.device: row for row in store.devices()}
    assert set(rows) == {"a", "b"}
    assert rows["b"].first_seen == T0 + 5


def test_component_state_survives_reopen(open_store: OpenStore) -> None:
    first = open_store()
    assert first.get_state("alerts") is None
    first.put_state("alerts", '{"v": 1}')
    first.put_state("alerts", '{"v": 2}')
    first.close()
    again = open_store()
    assert again.get_state("alerts") == '{"v": 2}'


def test_a_file_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    FleetStore(tmp_path / "fleet.db").close()
    with sqlite3.connect(tmp_path / "fleet.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema 99"):
        FleetStore(tmp_path / "fleet.db")


def test_sparkline_is_the_newest_values_oldest_first(store: FleetStoreContract) -> None:
    store.add_samples(samples(100))
    spark = store.recent_sparkline(DEV, "cpu.percent", points=5)
    assert spark == [(T0 + i * 10, float(i)) for i in range(95, 100)]
    assert store.recent_sparkline(DEV, "nope") == []
    assert store.recent_sparkline("nobody", "cpu.percent") == []


def test_keys_with_quotes_and_brackets_are_read(store: FleetStoreContract) -> None:
    odd = 'disk.used_percent[/mnt/"x"]'
    store.add_samples([AcceptedSample(DEV, 0, T0, {odd: 7.0, "disk.used_percent[/]": 3.0})])
    hist = store.history(DEV, T0 - 1, T0 + 1)
    assert hist.avg == {"disk.used_percent[/]": [3.0], odd: [7.0]}
    assert store.recent_sparkline(DEV, odd) == [(T0, 7.0)]


# -- crash safety and the dedup state --------------------------------------------------------

CHILD = """
import sys
from edgefleet.backend.ingest.dedup import SeqCursor
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.store.fleet_store import FleetStore

store = FleetStore(sys.argv[1])
for batch in range(1_000_000):
    rows = [AcceptedSample(f"dev-{i % 7}", batch * 100 + i, batch * 100.0 + i,
                           {"cpu.percent": float(i), "pad.x": 1.0 * batch})
            for i in range(100)]
    cursor = SeqCursor("s", 0, batch * 100 + 99, batch * 100 + 100, 0)
    store.add_samples(rows, cursors={"dev-0": cursor})
    print(batch, flush=True)
"""


@pytest.mark.fault
def test_sigkill_keeps_every_batch_add_samples_returned_for(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    printed: list[int] = []
    while len(printed) < 300:
        line = child.stdout.readline()
        assert line, f"child stopped early with {child.wait()}"
        printed.append(int(line))
    child.send_signal(signal.SIGKILL)
    printed += [int(word) for word in child.stdout.read().split()]
    assert child.wait() == -signal.SIGKILL

    store = FleetStore(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = conn.execute("SELECT count(*), max(seq) FROM raw").fetchone()
    conn.close()
    assert printed == list(range(len(printed)))
    batches = stored[0] // 100
    assert stored[0] % 100 == 0  # never half a batch
    assert batches - len(printed) in (0, 1)  # one may have committed but not printed
    assert stored[1] == batches * 100 - 1
    cursor = store.cursors()["dev-0"]
    assert cursor.high == stored[1]  # the cursor matches the samples exactly
    store.add_samples(samples(1))
    store.close()


def test_a_duplicate_after_restart_is_still_a_duplicate(open_store: OpenStore) -> None:
    store, ingest = open_store(), Ingest()
    pending: list[AcceptedSample] = []
    for seqs in ([0, 1, 2], [3, 4], [6, 7]):
        pending += ingest.handle(metrics_topic(DEV), metrics_payload(seqs), now=T0).samples
    store.add_samples(pending, cursors=ingest.take_cursors())
    # accepted but never stored: the backend dies before its next flush
    assert ingest.handle(metrics_topic(DEV), metrics_payload([8]), now=T0).samples
    store.close()

    store, ingest = open_store(), Ingest()
    ingest.restore(store.cursors())
    (row,) = store.devices()
    assert row.device == DEV and row.lost_samples == ingest.lost(DEV) == 1
    replay = ingest.handle(metrics_topic(DEV), metrics_payload([2, 3, 4, 5, 6, 7, 8]), now=T0)
    assert [s.seq for s in replay.samples] == [5, 8]  # 8 was never stored, so it is new
    assert replay.duplicates == 5
    assert ingest.lost(DEV) == 0
    old = ingest.handle(metrics_topic(DEV), metrics_payload([0], stream="s0"), now=T0)
    assert old.stream_reset  # an unknown stream, not a duplicate


# -- compaction ------------------------------------------------------------------------------


def test_compaction_rolls_old_samples_into_buckets(store: FleetStoreContract) -> None:
    store.add_samples(samples(360, start=T0))  # one hour, 10 s apart: 12 buckets of 30
    now = T0 + 3600 + 1800  # raw retention is 1 h: the first half hour rolls up
    assert store.compact(now) == 180
    hist = store.history(DEV, T0, T0 + 1800, keys=["cpu.percent", "mem.used_percent"],
                         max_points=100)
    assert hist.source == "buckets"
    assert hist.step_s == BUCKET_S
    assert hist.ts == [T0 + i * BUCKET_S for i in range(6)]
    assert hist.avg["cpu.percent"] == [i * 30 + 14.5 for i in range(6)]
    assert hist.min["cpu.percent"] == [float(i * 30) for i in range(6)]
    assert hist.max["cpu.percent"] == [float(i * 30 + 29) for i in range(6)]
    assert hist.avg["mem.used_percent"] == [50 - (i * 30 + 14.5) for i in range(6)]
    assert store.compact(now) == 0  # nothing left to roll


def test_history_across_the_watermark_reads_both_tables(store: FleetStoreContract) -> None:
    store.add_samples(samples(360, start=T0))
    store.compact(T0 + 3600 + 1800)
    hist = store.history(DEV, T0, T0 + 3600, keys=["cpu.percent"], max_points=100)
    assert hist.source == "mixed"
    assert hist.avg["cpu.percent"] == [i * 30 + 14.5 for i in range(12)]
    assert store.latest(DEV)["cpu.percent"] == 359.0


def test_late_backlog_merges_into_existing_buckets(store: FleetStoreContract) -> None:
    store.add_samples(samples(30, start=T0, every=10.0))  # one bucket: 0..29
    store.compact(T0 + 7200)
    late = [AcceptedSample(DEV, 99, T0 + 5.0, {"cpu.percent": 100.0, "new.key": 1.0})]
    store.add_samples(late)
    store.compact(T0 + 7200)
    hist = store.history(DEV, T0, T0 + 300, keys=["cpu.percent", "new.key"])
    assert hist.avg["cpu.percent"] == [(sum(range(30)) + 100.0) / 31]
    assert (hist.min["cpu.percent"], hist.max["cpu.percent"]) == ([0.0], [100.0])
    assert hist.avg["new.key"] == [1.0]


def test_quiet_device_latest_falls_back_to_buckets(store: FleetStoreContract) -> None:
    store.add_samples(samples(30, start=T0))
    store.compact(T0 + 86400 / 2)
    assert store.latest(DEV) == {"cpu.percent": 14.5, "mem.used_percent": 35.5}


def test_expired_buckets_are_deleted(store: FleetStoreContract) -> None:
    store.add_samples(samples(30, start=T0))
    store.compact(T0 + 86400 + 3600)  # bucket retention is one day in this fixture
    hist = store.history(DEV, T0 - 3600, T0 + 3600, keys=["cpu.percent"])
    assert (hist.ts, hist.source) == ([], "none")


# -- history resolution ----------------------------------------------------------------------


def test_short_range_is_raw_and_long_range_is_thinned(store: FleetStoreContract) -> None:
    store.add_samples(samples(360))  # an hour at 10 s
    raw = store.history(DEV, T0, T0 + 600, keys=["cpu.percent"], max_points=500)
    assert (raw.step_s, len(raw.ts)) == (0.0, 60)
    thin = store.history(DEV, T0, T0 + 3600, keys=["cpu.percent"], max_points=50)
    assert thin.step_s == 120.0  # 3600 / 49 = 73.5 -> the next round step
    assert len(thin.ts) == 30
    assert thin.avg["cpu.percent"][:2] == [5.5, 17.5]
    assert thin.min["cpu.percent"][:2] == [0.0, 12.0]
    assert thin.max["cpu.percent"][:2] == [11.0, 23.0]


def test_day_of_ten_second_samples_thins_to_max_points(store: FleetStoreContract) -> None:
    day = samples(8640)
    store.add_samples(day)
    hist = store.history(DEV, T0, T0 + 86400, max_points=500)
    assert set(hist.avg) == {"cpu.percent", "mem.used_percent"}
    assert hist.step_s == 300.0
    assert len(hist.ts) == 288  # <= max_points
    assert hist.avg["cpu.percent"] == [i * 30 + 14.5 for i in range(288)]
    assert hist.max["mem.used_percent"][-1] == 50.0 - 8610
    hour = store.history(DEV, T0 + 3600, T0 + 7200, keys=["cpu.percent"])
    assert (hour.step_s, len(hour.ts)) == (0.0, 360)
    assert hour.avg["cpu.percent"][0] == 360.0


def test_history_without_keys_uses_the_newest_sample_keys(store: FleetStoreContract) -> None:
    store.add_samples([AcceptedSample(DEV, 0, T0, {"old.key": 1.0}),
                       AcceptedSample(DEV, 1, T0 + 10, {"cpu.percent": 2.0, "load.1": 3.0})])
    hist = store.history(DEV, T0, T0 + 60)
    assert hist.avg == {"cpu.percent": [None, 2.0], "load.1": [None, 3.0]}
    assert store.history(DEV, T0, T0 + 5).avg == {"old.key": [1.0]}


def test_history_of_unknown_device_or_keys_is_empty(store: FleetStoreContract) -> None:
    store.add_samples(samples(3))
    assert store.history("nobody", T0, T0 + 60).ts == []
    hist = store.history(DEV, T0, T0 + 60, keys=["nope"])
    assert hist.avg == {"nope": [None, None, None]}
    with pytest.raises(ValueError, match="max_points"):
        store.history(DEV, T0, T0 + 60, max_points=1)


@pytest.mark.parametrize(
    ("span", "points", "buckets", "step"),
    [(600, 500, False, 2.0), (3600, 500, False, 10.0), (86400, 500, False, 300.0),
     (600, 500, True, 300.0), (30 * 86400, 500, True, 7200.0), (400 * 86400, 100, True,
                                                                 86400.0 * 5)],
)
def test_choose_step(span: float, points: int, buckets: bool, step: float) -> None:
    assert choose_step(span, points, buckets=buckets) == step


# -- edges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "high", "received", "lost_prior"), [
    (0, 2**63 - 1, 2, 0),  # the span alone leaves SQLite's integers
    (5, 5, 1, 2**64),  # a loss carried over from earlier streams that does too
    (0, 10, 11, 0),
])
def test_extreme_cursors_store_and_the_loss_reads_capped(
    store: FleetStoreContract, base: int, high: int, received: int, lost_prior: int
) -> None:
    cursor = SeqCursor("s", base, high, received, holes=0, lost_prior=lost_prior)
    store.add_samples([AcceptedSample(DEV, high, T0, {"cpu.percent": 1.0})],
                      cursors={DEV: cursor})
    store.add_samples(samples(2, device="dev-2"))  # later batches still go through
    row = {r.device: r for r in store.devices()}.get(DEV)
    assert row is not None
    assert row.lost_samples == cursor.lost == min(LOST_CAP, lost_prior + high - base + 1 - received)
    assert store.cursors()[DEV].lost == cursor.lost
