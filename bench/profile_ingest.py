"""Where a message's CPU goes in the backend: an in-process profile of the ingest path.

Run: ``python bench/profile_ingest.py [--devices 200] [--messages 60000] [--batch 200]
[--rounds 3] [--top 20] [--no-profile] [--database-url postgresql://...]``.

Builds a real :class:`~edgefleet.backend.runtime.Backend` (temp SQLite file, or the
PostgreSQL database of ``--database-url``, which should be empty: the feed's device names
and seqs start from 0; the shipped default alert rules, acks on) on a transport that does
nothing, and feeds it the messages ``bench_ingest.py`` sends (``_loadgen.Payloads``: one
sample of 30 metric keys plus the agent's health, ~1.2 KB, gap-free seq per device, devices
taking turns) in batches of ``--batch`` through ``Backend._process``: decode, de-duplicate,
fleet state, dashboard view, alert engine, one store transaction per batch (in a worker
thread, as in the backend), manual acks. No broker, no MQTT: what is left is the backend's
own work per message.

Prints "msgs per CPU-second" (messages divided by the process's CPU time, all threads,
``time.process_time``) for each of ``--rounds`` rounds, so noise from other jobs on the
machine shows as the spread between rounds, then the cProfile top entries (by own time) of
one more round. The garbage collector is set up as ``edgefleet backend`` sets it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _loadgen import Payloads
from edgefleet.backend.alerts.rules import default_rules_path, load_rules
from edgefleet.backend.ingest.inbox import Inbound
from edgefleet.backend.runtime import Backend
from edgefleet.backend.settings import BackendSettings
from edgefleet.transport.base import AckHandle, OnMessage
from edgefleet.wire.messages import metrics_topic


class _NullTransport:
    """A transport that is connected, acknowledges by hand and sends nowhere."""

    manual_ack = True

    def __init__(self, on_message: OnMessage, on_connect: Callable[[], None]) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.acks = 0

    def start(self) -> None:
        """Nothing to connect."""

    async def stop(self, wait_s: float = 0.0) -> None:
        self.connected.clear()

    async def publish(self, topic: str, payload: bytes) -> int:
        return 0

    async def subscribe(self, filters: list[str]) -> list[int]:
        return [1 for _ in filters]

    def ack(self, handle: AckHandle | None) -> None:
        self.acks += 1


class Feed:
    """The load generator's messages, made ahead of time (their cost is not the backend's)."""

    def __init__(self, devices: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        names = [f"dev-{i:05d}" for i in range(devices)]
        self.payloads = [Payloads(name, rng) for name in names]
        self.topics = [metrics_topic(name) for name in names]
        self.seqs = [0] * devices
        self.turn = 0

    def batches(self, messages: int, batch: int) -> list[list[Inbound]]:
        out: list[list[Inbound]] = []
        now = time.time()
        for start in range(0, messages, batch):
            one: list[Inbound] = []
            for _ in range(min(batch, messages - start)):
                i = self.turn
                self.turn = (i + 1) % len(self.topics)
                seq = self.seqs[i]
                self.seqs[i] = seq + 1
                one.append((self.topics[i], self.payloads[i].make(seq, now), None))
            out.append(one)
        return out


async def _round(backend: Backend, batches: list[list[Inbound]]) -> float:
    """Process the batches; return msgs per CPU-second (all threads of this process)."""
    count = sum(len(b) for b in batches)
    cpu0 = time.process_time()
    for batch in batches:
        await backend._process(batch)  # the ingest step itself is measured
    return count / (time.process_time() - cpu0)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="profile-ingest-") as tmp:
        settings = BackendSettings(db_path=Path(tmp) / "fleet.db",
                                   database_url=args.database_url)
        backend = Backend(settings, load_rules(default_rules_path()), _NullTransport)
        feed = Feed(args.devices)
        await _round(backend, feed.batches(args.batch * 5, args.batch))  # warm-up
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)  # as ``edgefleet backend`` runs
        rates = []
        for n in range(args.rounds):
            rate = await _round(backend, feed.batches(args.messages, args.batch))
            rates.append(rate)
            print(f"round {n + 1}: {rate:,.0f} msgs per CPU-second")
        spread = (max(rates) - min(rates)) / statistics.median(rates) * 100
        print(f"median {statistics.median(rates):,.0f} msgs per CPU-second "
              f"(min {min(rates):,.0f}, max {max(rates):,.0f}, spread {spread:.0f} %), "
              f"{args.devices} devices, batches of {args.batch}, {backend.store.kind} store "
              "(this process only: a PostgreSQL server's own CPU is not in it)")
        if not args.no_profile:
            batches = feed.batches(args.messages, args.batch)
            prof = cProfile.Profile()
            prof.enable()
            await _round(backend, batches)
            prof.disable()
            _print_top(prof, args.top)
        backend.store.close()
        backend.outbox.close()
        backend.quarantine.close()


def _print_top(prof: cProfile.Profile, top: int) -> None:
    """The top entries by own time (the event loop's thread only: cProfile does not see
    the store's worker thread, whose time shows as the wait in ``to_thread``)."""
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    start = text.find("   ncalls")
    print(text[start:] if start >= 0 else text)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--messages", type=int, default=60_000)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--database-url", default=None,
                   help="profile the PostgreSQL store of this (empty) database instead of SQLite")
    return p.parse_args(argv)


def run(argv: list[str] | None = None) -> Any:
    return asyncio.run(main(parse(argv)))


if __name__ == "__main__":
    sys.exit(run())
