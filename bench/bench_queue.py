"""Append and drain rates of the sample queue backends.

Run: ``python bench/bench_queue.py [--samples 50000] [--body 300] [--dir DIR]``.
Prints figures only; it asserts nothing.

- append: one put() per sample into a queue large enough to drop nothing;
- append full: the same into a queue at its byte bound (every put drops the oldest);
- drain: the publisher's loop, peek 500 after the last seq, then ack them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.queue import AnyQueue, MemoryQueue, SqliteQueue
from edgefleet.common.logs import setup_logging

BATCH = 500
Factory = Callable[[Path, int], AnyQueue]


def make_body(size: int) -> bytes:
    prefix = b'{"metrics":{"cpu.percent":12.5,"mem.used_percent":40.1},"failed":[],"pad":"'
    return prefix + b"x" * max(0, size - len(prefix) - 2) + b'"}'


def append(queue: AnyQueue, count: int, payload: bytes) -> float:
    start = time.perf_counter()
    for i in range(count):
        queue.put(1_700_000_000.0 + i, payload)
    return count / (time.perf_counter() - start)


def drain(queue: AnyQueue) -> tuple[float, int]:
    start = time.perf_counter()
    total = 0
    while batch := queue.peek(max_samples=BATCH, max_bytes=1 << 30):
        queue.ack(sample.seq for sample in batch)
        total += len(batch)
    return total / (time.perf_counter() - start), total


def run(name: str, factory: Factory, count: int, payload: bytes, workdir: Path) -> list[float]:
    roomy = factory(workdir / f"{name}-roomy.db", 1 << 40)
    append_rate = append(roomy, count, payload)
    size = sum(f.stat().st_size for f in workdir.glob(f"{name}-roomy.db*"))
    drain_rate, drained = drain(roomy)
    roomy.close()
    full = factory(workdir / f"{name}-full.db", count // 10 * (len(payload) + 64))
    append(full, count // 10, payload)  # fill it to the bound first
    full_rate = append(full, count, payload)
    dropped = full.stats().dropped_total
    full.close()
    print(
        f"{name:<14} append {append_rate:>9,.0f}/s   drain {drain_rate:>9,.0f}/s "
        f"({drained} samples)   append full {full_rate:>9,.0f}/s ({dropped} dropped)"
        + (f"   files when full {size / 1e6:.1f} MB" if name != "memory" else "")
    )
    return [append_rate, drain_rate, full_rate]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--body", type=int, default=300, help="body size in bytes")
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite files go")
    args = parser.parse_args()
    setup_logging("ERROR")  # the drop warnings are expected here
    payload = make_body(args.body)
    print(f"date      {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
    print(f"machine   {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"python    {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
    print(f"workload  {args.samples} samples of {len(payload)} bytes, drain batch {BATCH}")
    factories: dict[str, Factory] = {
        "memory": lambda _p, b: MemoryQueue(max_bytes=b, max_samples=1 << 40),
        "sqlite normal": lambda p, b: SqliteQueue(p, max_bytes=b, max_samples=1 << 40),
        "sqlite full": lambda p, b: SqliteQueue(
            p, max_bytes=b, max_samples=1 << 40, synchronous="full"
        ),
    }
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-queue-", dir=args.dir) as tmp:
        print(f"files in  {tmp}")
        for name, factory in factories.items():
            rates = run(name, factory, args.samples, payload, Path(tmp))
            for what, rate in zip(("append", "drain", "append full"), rates, strict=True):
                # the agent's drain target (10,000 samples/s) needs the default store to keep up
                target = ">= 10,000" if (name, what) == ("sqlite normal", "drain") else None
                met = rate >= 10_000 if target else None
                figures.append({"figure": f"{name} {what}", "value": round(rate),
                                "unit": "samples/s", "target": target, "met": met})
    print("RESULT " + json.dumps({"bench": "queue", "figures": figures}))


if __name__ == "__main__":
    main()
