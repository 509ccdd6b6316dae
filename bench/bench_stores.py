"""Ingest on SQLite, on PostgreSQL with one backend and on PostgreSQL with two, same run.

Run: ``python bench/bench_stores.py [--configs sqlite,pg,pg2] [--devices 200]
[--rates 2000,4000,6000,8000] [--hold-s 15] [--connections 2] [--profile-messages 20000]
[--top 12] [--baseline REV]`` (about 5 minutes).

Each configuration gets a fresh harness of ``bench_ingest.py`` (Mosquitto with mTLS and the
fleet ACL, a bare subscriber, one load generator process with ``--devices`` identities,
single-sample ~1.2 KB messages at QoS 1) and fresh backend processes
(``python -m edgefleet backend``):

- ``sqlite``: one backend on its SQLite file;
- ``pg``: one backend on a PostgreSQL of its own (``edgefleet.dev.postgres``: ``initdb``
  into a temp folder, loopback, ``EDGE_BACKEND_DATABASE_URL``);
- ``pg2``: two backend processes on one such PostgreSQL, sharing the fleet through the
  shared subscription ``$share/edgefleet/...``. Every backend process opens ``--connections``
  K connections of the one ``backend`` identity, numbered as the two tasks of
  infra/backend-service.yaml number them (``EDGE_BACKEND_CONNECTION_FIRST``): the first
  process ``backend-1`` ... ``backend-K``, the second ``backend-(K+1)`` ... ``backend-2K``.
  The same K is used in every configuration, so the store and the number of processes are
  what differ.

Per configuration: a 2 s warm-up at 500 msgs/s, then a hold of ``--hold-s`` at each rate of
``--rates`` up to the first one not kept up (bench_ingest.py explains "kept up"). Reported:
the highest rate held, msgs per backend CPU-second there (messages handled by all backend
processes / their summed CPU time), the PostgreSQL server's CPU (its postmaster and all its
processes) beside it, and the checks that matter with two writers: the samples stored,
counted in the database itself (``raw``: rows and distinct (device, seq)), against the
messages the broker acknowledged: missing = acknowledged - distinct stored, duplicates
stored = rows - distinct. Then the in-process profile (``profile_ingest.py``) on SQLite and
on PostgreSQL, "before" (the code of ``--baseline``, default c1cfad8: main when the issue 17
work began, unpacked with ``git archive``; skipped with a note where the clone lacks it) and
"after" (this tree): msgs per CPU-second of the backend's own ingest step, the PostgreSQL
server's CPU beside it, and the top entries by own time.

The machine's load average is printed with every configuration: on a shared 2-core VM the
broker, the generator, the backends and PostgreSQL all compete for the same cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_ingest as bi
from _loadgen import ACKED, Device
from _stores_parts import (
    MultiBench,
    StoreBackend,
    TreeCpu,
    baseline_src,
    postmaster_pid,
    profile,
    wait_stored,
)
from benchlib import exit_on_sigterm, figure, print_machine, print_result
from edgefleet.common.logs import setup_logging
from edgefleet.dev.postgres import Postgres

BENCH = Path(__file__).resolve().parent
BEFORE = "c1cfad8"  # main when the issue 17 work began (ingest as issue 17 found it)
CONFIGS = {"sqlite": ("SQLite, one backend", False, 1),
           "pg": ("PostgreSQL, one backend", True, 1),
           "pg2": ("PostgreSQL, two backends", True, 2)}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Harness:
    """One configuration's running parts."""

    bench: MultiBench
    gens: bi.Generators
    pg: Postgres | None
    db: str | Path  # where the samples are stored


@contextlib.contextmanager
def harness(args: argparse.Namespace, workdir: Path, name: str) -> Iterator[Harness]:
    """Broker, PostgreSQL (pg, pg2), backends, bare subscriber and generator; all stopped
    on the way out, also on an error."""
    _, on_pg, processes = CONFIGS[name]
    broker = bi.Broker(workdir / "broker", {"autosave_interval": 3600})
    pg = Postgres(workdir / "pg") if on_pg else None
    with contextlib.ExitStack() as stack:
        broker.start()
        stack.callback(broker.stop)
        if pg is not None:
            pg.start()
            stack.callback(pg.stop)
        names = [f"bench-dev-{i:04d}" for i in range(args.devices)]
        devices = [Device(n, *(str(p) for p in broker.identity(n)[:2])) for n in names]
        backends = [StoreBackend(broker, workdir / f"backend-{i}", 1 + i * args.connections,
                                 args.connections, pg.url if pg else None)
                    for i in range(processes)]
        for backend in backends:
            backend.start()
            stack.callback(backend.stop)
        bare = bi.BareSubscriber(broker)
        bare.start()
        stack.callback(bare.stop)
        gens = bi.Generators(broker, devices, 1)
        stack.callback(gens.stop)
        gens.wait_ready()
        for backend in backends:
            backend.wait_ready()
        time.sleep(1.0)  # every connection subscribed (each logs its own line)
        bench = MultiBench(args, backends, bare, gens, broker.pid())
        yield Harness(bench, gens, pg, pg.url if pg else workdir / "backend-0" / "fleet.db")


def ramp(args: argparse.Namespace, h: Harness) -> tuple[bi.Step | None, float, list[str]]:
    """Hold each rate of ``--rates`` for ``--hold-s`` up to the first one not kept up:
    the last kept-up step, PostgreSQL's CPU (% of one core) in it, a line per step."""
    pg_tree = TreeCpu(postmaster_pid(h.pg))
    best, best_pg, lines = None, 0.0, []
    for rate in args.rates:
        pg0, t0 = pg_tree.sample(), time.monotonic()
        st = h.bench.step(f"hold {rate:g}", rate, args.hold_s, 90.0)
        pg_cpu = 100.0 * (pg_tree.sample() - pg0) / (time.monotonic() - t0)
        cpu = st.cpu["backend"]
        catch = "-" if st.catchup_s is None else f"{st.catchup_s:.1f} s"
        lines.append(
            f"  {rate:>6,.0f} msgs/s: acked {st.acked_rate:,.0f}/s, backend "
            f"{st.backend_rate:,.0f}/s, catch-up {catch}, "
            f"{'kept up' if st.kept_up else 'NOT kept up'}; backend CPU {cpu:.0f} % = "
            f"{st.backend_rate / max(cpu / 100.0, 1e-9):,.0f} msgs per CPU-second"
            + (f", PostgreSQL CPU {pg_cpu:.0f} %" if h.pg else "")
            + f"; machine busy {st.cpu['machine']:.0f} %")
        if not st.kept_up:
            break
        best, best_pg = st, pg_cpu
    return best, best_pg, lines


def one(args: argparse.Namespace, workdir: Path, name: str) -> dict[str, Any]:
    title, on_pg, processes = CONFIGS[name]
    load_start = load()
    with harness(args, workdir, name) as h:
        h.bench.step("warm-up", bi.WARMUP_RATE, bi.WARMUP_S, 30.0)
        best, pg_cpu, lines = ramp(args, h)
        acked = h.gens.counter(ACKED)
        rows, distinct = wait_stored(h.db, acked)
        own_lost = h.bench.counter("edgefleet_lost_samples")
        own_dups = h.bench.counter("edgefleet_ingest_duplicates_total")
    cpu = best.cpu["backend"] if best else 0.0
    return {
        "name": name, "title": title, "processes": processes, "steps": lines,
        "held": best.acked_rate if best else 0.0, "rate": best.target if best else 0.0,
        "cpu": cpu, "per_cpu_s": best.backend_rate / (cpu / 100.0) if best and cpu else 0.0,
        "pg_cpu": pg_cpu if on_pg else None, "acked": acked, "rows": rows,
        "missing": max(0, acked - distinct), "dup_rows": rows - distinct,
        "own_lost": own_lost, "own_dups": own_dups, "load": f"{load_start} -> {load()}",
    }


def report_run(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Print one configuration's result; its figures."""
    pg = "" if r["pg_cpu"] is None else f", PostgreSQL server CPU {r['pg_cpu']:.0f} %"
    print(f"\n{r['title']} (load avg {r['load']}):")
    print("\n".join(r["steps"]))
    print(f"  held {r['held']:,.0f} msgs/s (the highest rate kept up); there backend CPU "
          f"{r['cpu']:.0f} % of one core summed over {r['processes']} process(es) = "
          f"{r['per_cpu_s']:,.0f} msgs per backend CPU-second{pg}")
    print(f"  stored: {r['rows']:,} rows for {r['acked']:,} acknowledged messages: "
          f"{r['missing']} missing, {r['dup_rows']} duplicate rows; the backends' own "
          f"counters: {r['own_lost']:,} lost, {r['own_dups']:,} duplicates removed")
    if r["processes"] > 1 and r["own_lost"]:
        print("  (a backend counts the seqs the other one stored after its own last batch "
              "of a device once it reads the stored cursors, about every second; the rows "
              "counted in the store above are the check)")
    tag = r["title"]
    figures = [
        figure(f"ingest held, {tag}", round(r["held"]), "msgs/s"),
        figure(f"msgs per backend CPU-second, {tag}", round(r["per_cpu_s"]), "msgs/s"),
        figure(f"samples missing in the store, {tag}", r["missing"], "samples", "0",
               r["missing"] == 0),
        figure(f"duplicate rows stored, {tag}", r["dup_rows"], "rows", "0", r["dup_rows"] == 0),
    ]
    if r["pg_cpu"] is not None:
        figures.append(figure(f"PostgreSQL server CPU (highest rate held), {tag}",
                              round(r["pg_cpu"], 1), "% of one core"))
    return figures


def report(args: argparse.Namespace, runs: list[dict[str, Any]],
           profiles: list[dict[str, Any]]) -> None:
    rates = ", ".join(f"{r:,.0f}" for r in args.rates)
    print(f"\nworkload  {args.devices} devices, single-sample ~1.2 KB messages, QoS 1; holds "
          f"of {args.hold_s:g} s at {rates} msgs/s up to the first not kept up; "
          f"K = {args.connections} connections per backend process (shared subscription)")
    figures = [f for r in runs for f in report_run(r)]
    for p in profiles:
        extra = ("" if p["pg_cpu_per_k"] is None else
                 f"; the PostgreSQL server used {p['pg_cpu_per_k'] * 1000:.0f} ms of CPU per "
                 "1,000 messages besides")
        code = "this tree (after)" if p["src"] is None else f"{args.baseline} (before)"
        print(f"\nprofile_ingest.py, {p['store']}, code of {code} (load avg {load()}){extra}:")
        print("\n".join("  " + line for line in p["output"].splitlines()))
        figures.append(figure(f"in-process ingest, {p['store']}, {code}", round(p["median"]),
                              "msgs per CPU-second"))
    print_result("stores", figures, devices=args.devices, rates=args.rates,
                 hold_s=args.hold_s, connections=args.connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="sqlite,pg,pg2",
                        help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rates", default="2000,4000,6000,8000",
                        help="msgs/s of the holds, ascending, comma-separated")
    parser.add_argument("--hold-s", type=float, default=15.0, help="seconds per hold")
    parser.add_argument("--connections", type=int, default=2,
                        help="K connections per backend process (1-4)")
    parser.add_argument("--catchup-s", type=float, default=3.0)
    parser.add_argument("--profile-messages", type=int, default=20_000,
                        help="messages per profile round (0: no profile)")
    parser.add_argument("--top", type=int, default=12, help="profile entries shown")
    parser.add_argument("--baseline", default=BEFORE,
                        help="git commit whose code is profiled as 'before' ('' for none)")
    args = parser.parse_args()
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    try:
        args.rates = sorted(float(r) for r in args.rates.split(","))
    except ValueError:
        parser.error(f"--rates: numbers separated by commas, not {args.rates!r}")
    unknown = [c for c in names if c not in CONFIGS]
    if unknown or not names:
        parser.error(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    if not 1 <= args.connections <= 4:
        parser.error("--connections: 1 to 4 (two processes use 2K of backend-1 ... -9)")
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
