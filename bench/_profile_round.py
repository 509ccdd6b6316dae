"""CPU of one sampling round and of one message, per collector and per step, in-process.

Run: ``python bench/_profile_round.py [--rounds 60] [--interval 0.25]`` (not a benchmark:
run_all skips files starting with ``_``). Builds every collector as ``bench_vs_collectd.py``
configures them (processes, textfile, exec, systemd units) and runs ``--rounds`` rounds
``--interval`` seconds apart (caches cool down between rounds as in the agent; a tight loop
would flatter psutil), timing each collector with ``time.thread_time`` (CPU of this thread,
so other load on the machine changes it little). Then the per-round steps after collecting:
the sample body, the queue write (SQLite, WAL, in a temp folder), the health object and the
message built from one queued sample, the acknowledgement. Prints microseconds of CPU per
call: median and mean.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_vs_collectd import PROCESSES
from edgefleet.agent.batch import build_message, sample_body
from edgefleet.agent.collectors import CollectorOptions, build_collectors, collect_all, procfs
from edgefleet.agent.queue.sqlite import SqliteQueue
from edgefleet.wire.base import HealthDoc


def options(workdir: Path) -> CollectorOptions:
    """The collector settings of ``bench_vs_collectd`` (every collector has work)."""
    folder = workdir / "textfile"
    folder.mkdir()
    (folder / "app.prom").write_text('app_jobs_done 12\napp_queue_depth{queue="a"} 3\n')
    (workdir / "exec.prom").write_text("app_temperature_c 41.5\n")
    return CollectorOptions(
        systemd_units=("ssh.service",), processes=PROCESSES, textfile_dir=folder,
        exec_command=f"cat {workdir / 'exec.prom'}", exec_interval_s=10.0, state_dir=workdir,
    )  # fmt: skip


def cpu_us(func: Callable[[], object]) -> tuple[float, object]:
    """CPU microseconds of this thread spent in ``func()``, and its result."""
    t0 = time.thread_time_ns()
    out = func()
    return (time.thread_time_ns() - t0) / 1000, out


def show(table: dict[str, list[float]]) -> None:
    total = 0.0
    print(f"{'step':<22}{'median us':>11}{'mean us':>11}")
    for name, values in sorted(table.items(), key=lambda kv: -statistics.fmean(kv[1])):
        mean = statistics.fmean(values)
        total += mean if not name.startswith("=") else 0.0
        print(f"{name:<22}{statistics.median(values):>11.0f}{mean:>11.0f}")
    print(f"{'sum of means':<22}{'':>11}{total:>11.0f}")


def run(workdir: Path, rounds: int, interval: float) -> None:
    collectors = build_collectors(None, (), options(workdir))
    queue = SqliteQueue(workdir / "q.db", max_bytes=64 << 20, max_samples=1_000_000)
    table: dict[str, list[float]] = {c.name: [] for c in collectors}
    for step in ("=collect_all", "sample_body", "queue.put", "health+build", "queue.ack"):
        table[step] = []
    keys = 0
    for _ in range(rounds):
        time.sleep(interval)
        keys = one_round(collectors, queue, table)
    queue.close()
    print(f"{len(collectors)} collectors, {keys} keys, {rounds} rounds {interval} s apart")
    show(table)


def one_round(
    collectors: list, queue: SqliteQueue, table: dict[str, list[float]]  # type: ignore[type-arg]
) -> int:
    """One round timed step by step; the number of keys it gave."""
    spent, (metrics, failed) = cpu_us(lambda: collect_one_by_one(collectors, table))
    table["=collect_all"].append(spent)
    spent, body = cpu_us(lambda: sample_body(metrics, failed))
    table["sample_body"].append(spent)
    spent, _ = cpu_us(lambda: queue.put(time.time(), body))  # type: ignore[arg-type]
    table["queue.put"].append(spent)
    spent, batch = cpu_us(lambda: message(queue))
    table["health+build"].append(spent)
    spent, _ = cpu_us(lambda: queue.ack([s.seq for s in batch]))  # type: ignore[attr-defined]
    table["queue.ack"].append(spent)
    return len(metrics)


def collect_one_by_one(
    collectors: list, table: dict[str, list[float]]  # type: ignore[type-arg]
) -> tuple[dict[str, float], list[str]]:
    metrics: dict[str, float] = {}
    failed: list[str] = []
    with procfs.one_round():  # as in the agent: files shared by collectors are read once
        for collector in collectors:
            spent, (got, bad) = cpu_us(lambda c=collector: collect_all([c]))  # type: ignore[misc]
            table[collector.name].append(spent)
            metrics.update(got)
            failed += bad
    return metrics, failed


def message(queue: SqliteQueue) -> list:  # type: ignore[type-arg]
    st = queue.stats()
    health = HealthDoc(
        queue_depth=st.depth, queue_bytes=st.bytes, oldest_age_s=0.0,
        dropped_total=st.dropped_total, publish_errors_total=0, rss_bytes=0,
        agent_version="0", uncommitted=0,
    )  # fmt: skip
    batch = queue.peek(max_samples=4096, max_bytes=120 * 1024)
    build_message("bench-1", queue.stream, batch, health, held_from=st.held_from)
    return batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="profile-round-") as tmp:
        run(Path(tmp), args.rounds, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
