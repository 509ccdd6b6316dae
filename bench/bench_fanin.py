"""Ingest through K backend connections (MQTT5 shared subscriptions) against one, same run.

Run: ``python bench/bench_fanin.py [--connections 1,4] [--devices 200] [--rate 3000]
[--hold-s 30] [--drain 20000]`` (about 3 minutes).

For each K: the harness of ``bench_ingest.py`` (Mosquitto with mTLS and the fleet ACL, the
real backend process, a bare subscriber, a load generator process with ``--devices``
identities), the backend started with ``EDGE_BACKEND_CONNECTIONS=K`` (connections
``backend-1`` ... ``backend-K``, each with its own certificate as Mosquitto requires,
subscribed through ``$share/edgefleet/...``; K = 1 is the plain subscription). Then a
warm-up, a hold at ``--rate`` msgs/s for ``--hold-s`` and a ``--drain``-message backlog
worked off after a restart (bench_ingest.py explains each figure). Reported per K: the rate
held, the backend's CPU and messages per CPU-second, the share each connection carried
(``edgefleet_connection_messages_total``), the drain rate and loss.

Mosquitto on loopback sets no per-connection limit, so this measures what K costs and that
nothing is lost or doubled with shared subscriptions; the gain K brings on AWS IoT Core
(about 100 msgs/s per connection) is arithmetic (docs/production.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_ingest as bi
from benchlib import MIB, exit_on_sigterm, figure, print_machine, print_result
from edgefleet.common.logs import setup_logging


class FanBackend(bi.Backend):
    """The backend with K connections sharing the fleet's subscription."""

    def __init__(self, broker: bi.Mosquitto, workdir: Path, connections: int) -> None:
        super().__init__(broker, workdir)
        if connections > 1:
            for k in range(1, connections + 1):
                cert, key, _ = broker.identity(f"backend-{k}")
            pattern = f"backend-{connections}"
            self.env["EDGE_BACKEND_CERT_FILE"] = str(cert).replace(pattern, "backend-{n}")
            self.env["EDGE_BACKEND_KEY_FILE"] = str(key).replace(pattern, "backend-{n}")
        self.env["EDGE_BACKEND_CONNECTIONS"] = str(connections)


def one(args: argparse.Namespace, workdir: Path, k: int) -> dict[str, Any]:
    broker = bi.Broker(workdir / "broker", {"autosave_interval": 3600})
    backend: FanBackend | None = None
    bare = gens = None
    try:
        broker.start()
        names = [f"bench-dev-{i:04d}" for i in range(args.devices)]
        devices = [bi.Device(n, *(str(p) for p in broker.identity(n)[:2])) for n in names]
        backend = FanBackend(broker, workdir, k)
        backend.start()
        bare = bi.BareSubscriber(broker)
        bare.start()
        gens = bi.Generators(broker, devices, 1)
        gens.wait_ready()
        backend.wait_ready()
        time.sleep(1.0)  # every connection subscribed (each logs its own line)
        bench = bi.Bench(args, backend, bare, gens, broker.pid())
        bench.step("warm-up", bi.WARMUP_RATE, bi.WARMUP_S, 30.0)
        hold = bench.step(f"hold K={k}", args.rate, args.hold_s, 90.0)
        shares = [v for name, v in sorted(backend.metrics().items())
                  if name.startswith("edgefleet_connection_messages_total")]
        drain = bench.drain(args.drain, args.rate) if args.drain else None
        totals = bench.totals()
    finally:
        if gens is not None:
            gens.stop()
        if bare is not None:
            bare.stop()
        if backend is not None:
            backend.stop()
        broker.stop()
    cpu = hold.cpu["backend"]
    missing = totals["acked"] - totals["backend_samples"]
    return {
        "k": k, "held": hold.acked_rate if hold.kept_up else 0.0, "kept_up": hold.kept_up,
        "backend_rate": hold.backend_rate, "cpu": cpu,
        "per_cpu_s": hold.backend_rate / (cpu / 100.0) if cpu > 0 else 0.0,
        "rss_mib": hold.rss_max / MIB, "shares": shares,
        "drain": 0.0 if drain is None else drain.rate,
        "lost": max(0, missing) + totals["lost"], "duplicates": totals["duplicates"],
    }


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    figures = []
    for r in runs:
        total = sum(r["shares"]) or 1.0
        share = ", ".join(f"{100 * s / total:.0f} %" for s in r["shares"]) or "one connection"
        kept = "kept up" if r["kept_up"] else "NOT kept up"
        print(f"\nK = {r['k']}: held {r['held']:,.0f} msgs/s ({kept} at {args.rate:,.0f}); "
              f"backend CPU {r['cpu']:.0f} % of one core, "
              f"{r['per_cpu_s']:,.0f} msgs per CPU-second, RSS {r['rss_mib']:.1f} MiB; "
              f"shares {share}; drain {r['drain']:,.0f} msgs/s; {r['lost']} lost, "
              f"{r['duplicates']} duplicates removed")
        tag = f"K={r['k']}"
        figures += [
            figure(f"ingest held, {tag}", round(r["held"]), "msgs/s", f">= {args.rate:g}",
                   r["kept_up"]),
            figure(f"backend msgs per CPU-second, {tag}", round(r["per_cpu_s"]), "msgs/s"),
            figure(f"backlog drain, {tag}", round(r["drain"]), "msgs/s"),
            figure(f"samples lost or missing, {tag}", r["lost"], "samples", "0", r["lost"] == 0),
        ]
        if r["shares"]:
            low = min(r["shares"]) / (sum(r["shares"]) / len(r["shares"]))
            figures.append(figure(f"smallest connection share / fair share, {tag}",
                                  round(low, 3), "ratio", ">= 0.5", low >= 0.5))
    print_result("fanin", figures, devices=args.devices, rate=args.rate, hold_s=args.hold_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", default="1,4", help="values of K, comma-separated")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rate", type=float, default=3000.0, help="msgs/s of the hold")
    parser.add_argument("--hold-s", type=float, default=30.0)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--catchup-s", type=float, default=3.0)
    args = parser.parse_args()
    exit_on_sigterm()
    setup_logging("ERROR")
    print_machine()
    runs = []
    for k in (int(x) for x in args.connections.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"bench-fanin-{k}-") as tmp:
            runs.append(one(args, Path(tmp), k))
    report(runs, args)


if __name__ == "__main__":
    main()
