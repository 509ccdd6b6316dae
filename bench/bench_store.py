"""Insert rate of the fleet store, ingest rate, and history query latency.

Run: ``python bench/bench_store.py [--samples 200000] [--devices 1000] [--keys 30] [--dir DIR]``.
Prints figures only; it asserts nothing.

- ingest: ``Ingest.handle`` on encoded messages of 1-5 samples (decode + dedup);
- insert: ``add_samples`` in batches of ``--batch`` samples with their dedup cursors, the way
  the backend flushes every 100-250 ms; samples spread over ``--devices`` devices;
- queries: one device with 24 h of 10 s samples (plus the fleet above in the same file):
  history of 1 h (raw points) and 24 h (thinned to 500 points), with 2 keys and all keys;
  ``latest`` and ``recent_sparkline``; then ``compact`` of that day into 5-minute buckets
  and a 24 h query from the buckets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.backend.ingest.handler import Ingest
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.store.fleet_store import FleetStore
from edgefleet.common.logs import setup_logging
from edgefleet.wire.messages import metrics_topic

T0 = 1_700_000_000.0


def make_metrics(keys: int, rng: random.Random) -> dict[str, float]:
    names = ["cpu.percent", "mem.used_percent", "load.1", "load.5", "load.15"]
    names += [f"disk.used_percent[/mnt/d{i}]" for i in range(keys)]
    return {name: round(rng.uniform(0, 100), 2) for name in names[:keys]}


def bench_ingest(messages: int, keys: int, rng: random.Random) -> float:
    metrics = make_metrics(keys, rng)
    payloads: list[tuple[str, bytes]] = []
    seqs = [0] * 500
    for i in range(messages):
        device = i % 500
        n = rng.randint(1, 5)
        doc = {"v": 1, "device_id": f"dev-{device}", "stream": "s", "sent_at": T0 + i,
               "samples": [{"seq": seqs[device] + k, "ts": T0 + i, "metrics": metrics}
                           for k in range(n)]}
        seqs[device] += n
        payloads.append((metrics_topic(f"dev-{device}"), json.dumps(doc).encode()))
    ingest = Ingest()
    start = time.perf_counter()
    for topic, payload in payloads:
        ingest.handle(topic, payload, T0)
    return messages / (time.perf_counter() - start)


def bench_insert(store: FleetStore, total: int, *, devices: int, batch: int, keys: int,
                 rng: random.Random) -> tuple[float, float]:
    metrics = [make_metrics(keys, rng) for _ in range(64)]
    ingest = Ingest()
    seqs = [0] * devices
    durations: list[float] = []
    for first in range(0, total, batch):
        rows: list[AcceptedSample] = []
        for i in range(first, min(total, first + batch)):
            device = rng.randrange(devices)
            ts = T0 + i * 10.0 / devices  # the fleet reports every 10 s
            rows.append(AcceptedSample(f"dev-{device}", seqs[device], ts, metrics[i % 64]))
            seqs[device] += 1
        for device in {row.device for row in rows}:  # cursors as Ingest would hand them over
            ingest.handle(metrics_topic(device), _one(device, seqs), T0)
        start = time.perf_counter()
        store.add_samples(rows, cursors=ingest.take_cursors())
        durations.append(time.perf_counter() - start)
    return total / sum(durations), max(durations)


def _one(device: str, seqs: list[int]) -> bytes:
    seq = seqs[int(device.split("-")[1])]
    return json.dumps({"v": 1, "device_id": device, "stream": "s", "sent_at": T0,
                       "samples": [{"seq": seq, "ts": T0, "metrics": {}}]}).encode()


def timed(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median milliseconds of ``repeat`` calls."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1000


def bench_queries(store: FleetStore, keys: int, rng: random.Random) -> None:
    day = [AcceptedSample("one", i, T0 + i * 10.0, make_metrics(keys, rng)) for i in range(8640)]
    for first in range(0, len(day), 2000):
        store.add_samples(day[first : first + 2000])
    two = ["cpu.percent", "mem.used_percent"]
    end = T0 + 86400
    figures = {
        "1h  raw, 2 keys": lambda: store.history("one", end - 3600, end, two),
        "1h  raw, all keys": lambda: store.history("one", end - 3600, end),
        "24h raw->500 pts, 2 keys": lambda: store.history("one", T0, end, two),
        "24h raw->500 pts, all keys": lambda: store.history("one", T0, end),
        "latest": lambda: store.latest("one"),
        "sparkline 30": lambda: store.recent_sparkline("one", "cpu.percent"),
    }
    for name, fn in figures.items():
        print(f"query     {name:<28} {timed(fn):8.2f} ms")
    start = time.perf_counter()
    rolled = store.compact(end + 86400)
    print(f"compact   {rolled} raw samples into buckets in {time.perf_counter() - start:.2f} s")
    print(f"query     {'24h buckets, 2 keys':<28} "
          f"{timed(lambda: store.history('one', T0, end, two)):8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=2500, help="samples per add_samples")
    parser.add_argument("--keys", type=int, default=30, help="metric keys per sample")
    parser.add_argument("--messages", type=int, default=20_000, help="for the ingest figure")
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite file goes")
    args = parser.parse_args()
    setup_logging("ERROR")
    rng = random.Random(1)
    body = len(json.dumps(make_metrics(args.keys, rng), separators=(",", ":")))
    print(f"date      {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
    print(f"machine   {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"python    {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
    print(f"workload  {args.samples} samples, {args.devices} devices, {args.keys} keys "
          f"({body} bytes of JSON), batches of {args.batch}")
    print(f"ingest    {bench_ingest(args.messages, args.keys, rng):>10,.0f} messages/s "
          f"(1-5 samples each, decode + dedup)")
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.dir) as tmp:
        store = FleetStore(Path(tmp) / "fleet.db", raw_retention_s=86400)
        rate, worst = bench_insert(store, args.samples, devices=args.devices, batch=args.batch,
                                   keys=args.keys, rng=rng)
        size = sum(f.stat().st_size for f in Path(tmp).glob("fleet.db*"))
        print(f"insert    {rate:>10,.0f} samples/s   slowest batch {worst * 1000:.0f} ms   "
              f"files {size / 1e6:.0f} MB")
        bench_queries(store, args.keys, rng)
        store.close()


if __name__ == "__main__":
    main()
