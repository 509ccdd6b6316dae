"""History queries for unknown or odd keys cost one scan of the range, not one per key.

A key with a ``"`` cannot go through ``json_extract`` and is read with a ``json_each`` scan of
every row; a request for 256 of them (the API's limit) used to scan the range 256 times.
Work is measured in SQLite virtual-machine steps (a progress handler), not in time. The
last test reads odd and absent keys through both stores (``store_backends.py``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from tests.backend.store_backends import open_store, store  # noqa: F401

from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.store.contract import FleetStoreContract
from edgefleet.backend.store.fleet_store import FleetStore
from edgefleet.backend.store.history import read_history

T0 = 1_700_000_000.0
ODD = 'disk.used_percent[/mnt/a"b]'
ROWS = 1200


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, int]]:
    store = FleetStore(tmp_path / "fleet.db", raw_retention_s=86400 * 30)
    metrics = {f"disk.used_percent[/m{i}]": float(i) for i in range(40)}
    metrics |= {"cpu.percent": 5.0, ODD: 61.0}
    store.add_samples([AcceptedSample("dev", i, T0 + i, metrics) for i in range(ROWS)])
    store.close()
    conn = sqlite3.connect(tmp_path / "fleet.db")
    (dev,) = conn.execute("SELECT id FROM devices WHERE name = 'dev'").fetchone()
    yield conn, int(dev)
    conn.close()


def steps(conn: sqlite3.Connection, dev: int, keys: Sequence[str], points: int) -> int:
    """SQLite VM steps (in thousands) spent answering a history query for ``keys``."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    conn.set_progress_handler(tick, 1000)
    try:
        read_history(conn, dev, "dev", span=(T0, T0 + ROWS), keys=keys, max_points=points,
                     watermark=0.0)
    finally:
        conn.set_progress_handler(None, 0)
    return count[0]


@pytest.mark.parametrize("points", [500, 5000])  # averaged buckets, then raw points
def test_256_unknown_odd_keys_cost_one_scan(
    db: tuple[sqlite3.Connection, int], points: int
) -> None:
    conn, dev = db
    unknown = [f'temp.celsius[zone"{i}]' for i in range(256)]
    one_real = steps(conn, dev, [ODD], points)
    few_unknown = steps(conn, dev, unknown[:8], points)
    many_unknown = steps(conn, dev, unknown, points)
    assert one_real > 0
    # one checking scan, whatever the number of keys (it was one scan per key: ~250 x)
    assert many_unknown <= 1.5 * few_unknown, (many_unknown, few_unknown)
    assert many_unknown <= 3 * one_real, (many_unknown, one_real)


def test_present_absent_and_odd_keys_keep_their_values(
    db: tuple[sqlite3.Connection, int]
) -> None:
    conn, dev = db
    keys = ["cpu.percent", ODD, 'temp.celsius[nope"]', "never.seen"]
    for points in (500, 5000):
        hist = read_history(conn, dev, "dev", span=(T0, T0 + ROWS), keys=keys,
                            max_points=points, watermark=0.0)
        n = len(hist.ts)
        assert n == (ROWS if points == 5000 else len(hist.avg["cpu.percent"])) and n > 0
        assert set(hist.avg["cpu.percent"]) == {5.0}
        assert set(hist.avg[ODD]) == {61.0}
        assert hist.avg['temp.celsius[nope"]'] == [None] * n
        assert hist.avg["never.seen"] == [None] * n


def test_present_absent_and_odd_keys_through_either_store(store: FleetStoreContract) -> None:
    metrics = {"cpu.percent": 5.0, ODD: 61.0, 'a"b\\c[x]': 7.0}
    store.add_samples([AcceptedSample("dev", i, T0 + i, metrics) for i in range(600)])
    keys = ["cpu.percent", ODD, 'a"b\\c[x]', 'temp.celsius[nope"]', "never.seen"]
    for points in (100, 1000):  # averaged buckets, then raw points
        hist = store.history("dev", T0, T0 + 600, keys=keys, max_points=points)
        n = len(hist.ts)
        assert n == (600 if points == 1000 else 60)
        assert set(hist.avg["cpu.percent"]) == {5.0} and set(hist.avg[ODD]) == {61.0}
        assert set(hist.max['a"b\\c[x]']) == {7.0}
        assert hist.avg['temp.celsius[nope"]'] == hist.avg["never.seen"] == [None] * n
