"""Parts of ``bench_stores.py``: the broker whose ACL also knows a second backend identity,
a backend process on either store, the measurements summed over backend processes, the
samples counted in the store, PostgreSQL's CPU, and ``profile_ingest.py`` run on one store
with this tree's code or with the code of an earlier commit (the profile "before").

Not a benchmark itself (``run_all.py`` runs only ``bench_*.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg

import bench_ingest as bi
from edgefleet.dev.broker import Mosquitto
from edgefleet.dev.postgres import Postgres

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
class StoreBackend(bi.Backend):
    """One backend process: its own folder and HTTP port, K connections of the ``backend``
    identity numbered from ``first`` (``EDGE_BACKEND_CONNECTION_FIRST``: backend-<first> ...,
    always in the shared subscription), the store of ``database_url`` (SQLite in its folder
    when None)."""

    def __init__(self, broker: Mosquitto, workdir: Path, first: int, connections: int,
                 database_url: str | None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(broker, workdir)
        for k in range(first, first + connections):
            cert, key, _ = broker.identity(f"backend-{k}")
        last = f"backend-{first + connections - 1}"
        self.env["EDGE_BACKEND_CERT_FILE"] = str(cert).replace(last, "backend-{n}")
        self.env["EDGE_BACKEND_KEY_FILE"] = str(key).replace(last, "backend-{n}")
        self.env["EDGE_BACKEND_CLIENT_ID"] = "backend"
        self.env["EDGE_BACKEND_CONNECTIONS"] = str(connections)
        self.env["EDGE_BACKEND_CONNECTION_FIRST"] = str(first)
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


def wait_stored(db: str | Path, want: int, timeout: float = 120.0) -> tuple[int, int]:
    """``stored(db)`` once at least ``want`` distinct samples are in (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        rows, distinct = stored(db)
        if distinct >= want or time.monotonic() > deadline:
            return rows, distinct
        time.sleep(0.2)




class TreeCpu:
    """User + system CPU seconds of a process tree (PostgreSQL's server: the postmaster and
    one process per connection). A process that ended counts with its last sample, so
    sample often while short-lived connections come and go."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.seen: dict[int, float] = {}

    def sample(self) -> float:
        if self.pid is None:
            return 0.0
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    self.seen[proc.pid] = t.user + t.system
        return sum(self.seen.values())


def postmaster_pid(pg: Postgres | None) -> int | None:
    if pg is None:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((pg.data / "postmaster.pid").read_text().split()[0])
    return None


def baseline_src(rev: str, workdir: Path) -> Path | None:
    """``src/`` of commit ``rev`` unpacked under ``workdir`` (None, said why, when this
    checkout does not have it: a shallow clone, no git)."""
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"],
                              capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"profile before ({rev}): skipped, git failed: {exc}")
        return None
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()[:1]
        print(f"profile before ({rev}): skipped, {' '.join(reason) or 'git archive failed'}")
        return None
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "src"


def profile(args: argparse.Namespace, workdir: Path, on_pg: bool,
            src: Path | None = None) -> dict[str, Any]:
    """``profile_ingest.py`` on one store (the code of ``src``, else this tree's); its median
    msgs per CPU-second and its output."""
    cmd = [sys.executable, str(BENCH / "profile_ingest.py"), "--messages",
           str(args.profile_messages), "--rounds", "3", "--top", str(args.top)]
    pg = Postgres(workdir / "pg-profile") if on_pg else None
    try:
        if pg is not None:
            pg.start()
            cmd += ["--database-url", pg.url]
        env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
        pg_tree = TreeCpu(postmaster_pid(pg))
        pg0 = pg_tree.sample()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
            while proc.poll() is None:
                pg_tree.sample()
                time.sleep(0.1)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        pg_cpu_s = pg_tree.sample() - pg0
    finally:
        if pg is not None:
            pg.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"profile_ingest failed:\n{stderr[-2000:]}")
    median = next(float(line.split()[1].replace(",", "")) for line in stdout.splitlines()
                  if line.startswith("median "))
    for folder in (src, ROOT / "src"):  # profile entries relative to src/, as in the tree
        if folder is not None:
            stdout = stdout.replace(f"{folder}/", "")
    # warm-up (5 batches of 200), 3 rounds and the profiled round
    messages = 1000 + 4 * args.profile_messages
    return {"store": "PostgreSQL" if on_pg else "SQLite", "median": median, "src": src,
            "output": stdout.rstrip(), "pg_cpu_per_k": 1000 * pg_cpu_s / messages
            if pg is not None else None}
