"""Ingest on SQLite, on PostgreSQL with one backend and on PostgreSQL with two, same run.

Run: ``python bench/bench_stores.py [--configs sqlite,pg,pg2] [--devices 200] [--rate 3000]
[--hold-s 30] [--connections 2] [--profile-messages 20000] [--top 12] [--baseline REV]``
(about 5 minutes).

Each configuration gets a fresh harness of ``bench_ingest.py`` (Mosquitto with mTLS and the
fleet ACL, a bare subscriber, one load generator process with ``--devices`` identities,
single-sample ~1.2 KB messages at QoS 1) and fresh backend processes
(``python -m edgefleet backend``):

- ``sqlite``: one backend on its SQLite file;
- ``pg``: one backend on a PostgreSQL of its own (``edgefleet.dev.postgres``: ``initdb``
  into a temp folder, loopback, ``EDGE_BACKEND_DATABASE_URL``);
- ``pg2``: two backend processes on one such PostgreSQL, sharing the fleet through the
  shared subscription ``$share/edgefleet/...``. Every backend process opens ``--connections``
  K connections (K >= 2: with K = 1 a backend subscribes plainly and would get every
  message); the first uses the client ids ``backend-1`` ... ``backend-K``, the second
  ``backendb-1`` ... (this broker's ACL grants ``backendb`` the backend's rights; on AWS the
  two would need disjoint numbers of ``backend-1`` ... ``backend-9``). The same K is used
  in every configuration, so the store and the number of processes are what differ.

Per configuration: a 2 s warm-up at 500 msgs/s, then a hold at ``--rate`` msgs/s for
``--hold-s`` (bench_ingest.py explains "kept up"). Reported: the rate held, msgs per backend
CPU-second (messages handled by all backend processes / their summed CPU time), the
PostgreSQL server's CPU (its postmaster and all its processes) beside it, and the checks
that matter with two writers: the samples stored, counted in the database itself (``raw``:
rows and distinct (device, seq)), against the messages the broker acknowledged: missing
= acknowledged - distinct stored, duplicates stored = rows - distinct. Then the in-process
profile (``profile_ingest.py``) on SQLite and on PostgreSQL, "before" (the code of
``--baseline``, default c1cfad8: main when the issue 17 work began, unpacked with
``git archive``; skipped with a note where the clone lacks it) and "after" (this tree): msgs
per CPU-second of the backend's own ingest step, the PostgreSQL server's CPU beside it, and
the top entries by own time.

The machine's load average is printed with every configuration: on a shared 2-core VM the
broker, the generator, the backends and PostgreSQL all compete for the same cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

import bench_ingest as bi
from _loadgen import ACKED, Device
from _stores_profile import TreeCpu, baseline_src, postmaster_pid, profile
from benchlib import exit_on_sigterm, figure, print_machine, print_result
from edgefleet.common.logs import setup_logging
from edgefleet.dev.broker import Mosquitto
from edgefleet.dev.postgres import Postgres
from edgefleet.wire.policy import mosquitto_acl

BENCH = Path(__file__).resolve().parent
SECOND_IDENTITY = "backendb"
BEFORE = "c1cfad8"  # main when the issue 17 work began (ingest as issue 17 found it)
CONFIGS = {"sqlite": ("SQLite, one backend", False, 1),
           "pg": ("PostgreSQL, one backend", True, 1),
           "pg2": ("PostgreSQL, two backends", True, 2)}


class StoresBroker(bi.Broker):
    """The harness broker; its ACL also gives ``backendb`` (and ``backendb-<k>``) the
    backend's rights, rendered by ``edgefleet.wire.policy`` like the rest."""

    def prepare(self) -> None:
        super().prepare()
        acl = self.workdir / "acl"
        second = mosquitto_acl(SECOND_IDENTITY)
        acl.write_text(acl.read_text() + second[second.index("\nuser "):])


class StoreBackend(bi.Backend):
    """One backend process: its own folder and HTTP port, ``identity`` with K connections,
    the store of ``database_url`` (SQLite in its folder when None)."""

    def __init__(self, broker: Mosquitto, workdir: Path, identity: str, connections: int,
                 database_url: str | None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(broker, workdir)
        if connections > 1:
            for k in range(1, connections + 1):
                cert, key, _ = broker.identity(f"{identity}-{k}")
            last = f"{identity}-{connections}"
            self.env["EDGE_BACKEND_CERT_FILE"] = str(cert).replace(last, identity + "-{n}")
            self.env["EDGE_BACKEND_KEY_FILE"] = str(key).replace(last, identity + "-{n}")
        self.env["EDGE_BACKEND_CLIENT_ID"] = identity
        self.env["EDGE_BACKEND_CONNECTIONS"] = str(connections)
        if database_url:
            self.env["EDGE_BACKEND_DATABASE_URL"] = database_url


class MultiBench(bi.Bench):
    """bench_ingest's measurements with the backend's figures summed over its processes."""

    def __init__(self, args: argparse.Namespace, backends: list[StoreBackend],
                 bare: bi.BareSubscriber, gens: bi.Generators, broker_pid: int) -> None:
        super().__init__(args, backends[0], bare, gens, broker_pid)
        self.backends = backends
        self.pids["backend"] = [b.proc.pid for b in backends if b.proc is not None]

    def backend_count(self) -> int:
        return sum(int(b.metrics()["edgefleet_ingest_messages_total"]) for b in self.backends)

    def _check_alive(self) -> None:
        for backend in self.backends:
            if not backend.alive:
                raise RuntimeError(f"a backend exited:\n{backend.log_tail()}")
        super()._check_alive()

    def counter(self, prefix: str) -> int:
        return int(sum(v for b in self.backends for k, v in b.metrics().items()
                       if k.startswith(prefix)))


STORED_SQL = ("SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT device, seq FROM raw) d) "
              "FROM raw")


def stored(db: str | Path) -> tuple[int, int]:
    """(rows, distinct (device, seq)) of the store's ``raw`` table (read-only)."""
    if isinstance(db, Path):
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            rows, distinct = conn.execute(STORED_SQL).fetchone()
    else:
        with psycopg.connect(db) as pconn:
            found = pconn.execute(STORED_SQL).fetchone()
            assert found is not None
            rows, distinct = found
    return int(rows), int(distinct)


def wait_stored(db: str | Path, want: int, timeout: float = 20.0) -> tuple[int, int]:
    """``stored(db)`` once at least ``want`` distinct samples are in (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        rows, distinct = stored(db)
        if distinct >= want or time.monotonic() > deadline:
            return rows, distinct
        time.sleep(0.2)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def one(args: argparse.Namespace, workdir: Path, name: str) -> dict[str, Any]:
    title, on_pg, processes = CONFIGS[name]
    load_start = load()
    broker = StoresBroker(workdir / "broker", {"autosave_interval": 3600})
    pg = Postgres(workdir / "pg") if on_pg else None
    backends: list[StoreBackend] = []
    bare = gens = None
    try:
        broker.start()
        if pg is not None:
            pg.start()
        names = [f"bench-dev-{i:04d}" for i in range(args.devices)]
        devices = [Device(n, *(str(p) for p in broker.identity(n)[:2])) for n in names]
        identities = ["backend", SECOND_IDENTITY][:processes]
        backends = [StoreBackend(broker, workdir / f"backend-{i}", ident, args.connections,
                                 pg.url if pg else None) for i, ident in enumerate(identities)]
        for backend in backends:
            backend.start()
        bare = bi.BareSubscriber(broker)
        bare.start()
        gens = bi.Generators(broker, devices, 1)
        gens.wait_ready()
        for backend in backends:
            backend.wait_ready()
        time.sleep(1.0)  # every connection subscribed (each logs its own line)
        bench = MultiBench(args, backends, bare, gens, broker.pid())
        bench.step("warm-up", bi.WARMUP_RATE, bi.WARMUP_S, 30.0)
        pg_tree = TreeCpu(postmaster_pid(pg))
        pg0, t0 = pg_tree.sample(), time.monotonic()
        hold = bench.step(f"hold {name}", args.rate, args.hold_s, 90.0)
        pg_cpu = 100.0 * (pg_tree.sample() - pg0) / (time.monotonic() - t0)
        acked = gens.counter(ACKED)
        rows, distinct = wait_stored(pg.url if pg else workdir / "backend-0" / "fleet.db", acked)
        own_lost = bench.counter("edgefleet_lost_samples")
        own_dups = bench.counter("edgefleet_ingest_duplicates_total")
    finally:
        if gens is not None:
            gens.stop()
        if bare is not None:
            bare.stop()
        for backend in backends:
            backend.stop()
        if pg is not None:
            pg.stop()
        broker.stop()
    cpu = hold.cpu["backend"]
    return {
        "name": name, "title": title, "processes": processes, "kept_up": hold.kept_up,
        "held": hold.acked_rate if hold.kept_up else 0.0, "backend_rate": hold.backend_rate,
        "cpu": cpu, "per_cpu_s": hold.backend_rate / (cpu / 100.0) if cpu > 0 else 0.0,
        "pg_cpu": pg_cpu if pg is not None else None, "machine": hold.cpu["machine"],
        "acked": acked, "rows": rows, "missing": max(0, acked - distinct),
        "dup_rows": rows - distinct, "own_lost": own_lost, "own_dups": own_dups,
        "load": f"{load_start} -> {load()}",
    }


def report(args: argparse.Namespace, runs: list[dict[str, Any]],
           profiles: list[dict[str, Any]]) -> None:
    figures = []
    print(f"\nworkload  {args.devices} devices, single-sample ~1.2 KB messages, QoS 1, hold "
          f"{args.rate:,.0f} msgs/s for {args.hold_s:g} s; K = {args.connections} connections "
          "per backend process (shared subscription)")
    for r in runs:
        kept = "kept up" if r["kept_up"] else f"NOT kept up at {args.rate:,.0f}"
        pg = "" if r["pg_cpu"] is None else f", PostgreSQL server CPU {r['pg_cpu']:.0f} %"
        print(f"\n{r['title']} (load avg {r['load']}): held {r['held']:,.0f} msgs/s ({kept}); "
              f"backend {r['backend_rate']:,.0f} msgs/s at {r['cpu']:.0f} % CPU of one core "
              f"summed over {r['processes']} process(es) = {r['per_cpu_s']:,.0f} msgs per "
              f"backend CPU-second{pg}; machine busy {r['machine']:.0f} % of one core")
        print(f"  stored: {r['rows']:,} rows for {r['acked']:,} acknowledged messages: "
              f"{r['missing']} missing, {r['dup_rows']} duplicate rows; the backends' own "
              f"counters: {r['own_lost']:,} lost, {r['own_dups']:,} duplicates removed")
        if r["processes"] > 1 and r["own_lost"]:
            print("  (each backend process counts the seqs the other one took as lost: its "
                  "loss counter is per process until the store counts losses; the rows "
                  "counted in the store above are the check)")
        tag = r["title"]
        figures += [
            figure(f"ingest held, {tag}", round(r["held"]), "msgs/s", f">= {args.rate:g}",
                   r["kept_up"]),
            figure(f"msgs per backend CPU-second, {tag}", round(r["per_cpu_s"]), "msgs/s"),
            figure(f"samples missing in the store, {tag}", r["missing"], "samples", "0",
                   r["missing"] == 0),
            figure(f"duplicate rows stored, {tag}", r["dup_rows"], "rows", "0",
                   r["dup_rows"] == 0),
        ]
        if r["pg_cpu"] is not None:
            figures.append(figure(f"PostgreSQL server CPU (hold), {tag}", round(r["pg_cpu"], 1),
                                  "% of one core"))
    for p in profiles:
        extra = ("" if p["pg_cpu_per_k"] is None else
                 f"; the PostgreSQL server used {p['pg_cpu_per_k'] * 1000:.0f} ms of CPU per "
                 "1,000 messages besides")
        code = "this tree (after)" if p["src"] is None else f"{args.baseline} (before)"
        print(f"\nprofile_ingest.py, {p['store']}, code of {code} (load avg {load()}){extra}:")
        print("\n".join("  " + line for line in p["output"].splitlines()))
        figures.append(figure(f"in-process ingest, {p['store']}, {code}", round(p["median"]),
                              "msgs per CPU-second"))
    print_result("stores", figures, devices=args.devices, rate=args.rate, hold_s=args.hold_s,
                 connections=args.connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="sqlite,pg,pg2",
                        help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rate", type=float, default=3000.0, help="msgs/s of the hold")
    parser.add_argument("--hold-s", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=2,
                        help="K connections per backend process (2-9)")
    parser.add_argument("--catchup-s", type=float, default=3.0)
    parser.add_argument("--profile-messages", type=int, default=20_000,
                        help="messages per profile round (0: no profile)")
    parser.add_argument("--top", type=int, default=12, help="profile entries shown")
    parser.add_argument("--baseline", default=BEFORE,
                        help="git commit whose code is profiled as 'before' ('' for none)")
    args = parser.parse_args()
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown or not names:
        parser.error(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    if not 2 <= args.connections <= 9:
        parser.error("--connections: 2 to 9 (two backends share the fleet only through the "
                     "shared subscription, which K = 1 does not use)")
    exit_on_sigterm()
    setup_logging("ERROR")
    print_machine()
    runs, profiles = [], []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"bench-stores-{name}-") as tmp:
            runs.append(one(args, Path(tmp), name))
    if args.profile_messages:
        with tempfile.TemporaryDirectory(prefix="bench-stores-profile-") as tmp:
            before = baseline_src(args.baseline, Path(tmp)) if args.baseline else None
            for src in ([before] if before else []) + [None]:
                for on_pg in (False, True):
                    with tempfile.TemporaryDirectory(prefix="pg-", dir=tmp) as pgdir:
                        profiles.append(profile(args, Path(pgdir), on_pg, src))
    report(args, runs, profiles)


if __name__ == "__main__":
    main()
