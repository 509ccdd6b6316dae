"""The test PostgreSQL (edgefleet.dev.postgres): a cluster of its own on a loopback port,
that keeps its data across a restart and refuses to be reached while stopped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgefleet.dev.postgres import Postgres, find_bin


def psql(pg: Postgres, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_bin("psql")), pg.url, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True, text=True, check=False, timeout=30,
    )


@pytest.mark.slow
def test_a_cluster_of_its_own_that_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    with Postgres(tmp_path / "pg") as pg:
        assert pg.url.startswith("postgresql://edgefleet@127.0.0.1:")
        assert psql(pg, "CREATE TABLE t (n int); INSERT INTO t VALUES (41), (1)").returncode == 0
        pg.stop()
        assert not pg.running
        down = psql(pg, "SELECT 1")
        assert down.returncode != 0 and "127.0.0.1" in down.stderr
        pg.start()
        assert psql(pg, "SELECT sum(n) FROM t").stdout.strip() == "42"
    assert not pg.running
