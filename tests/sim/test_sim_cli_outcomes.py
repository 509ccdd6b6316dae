"""``edgefleet simulate`` says what went wrong: a refused connection, nothing acknowledged,
device names a running demo holds."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from edgefleet.dev.broker import Mosquitto, free_port
from edgefleet.errors import ConfigError
from edgefleet.sim.claims import CLAIM_FILE, check_unclaimed, read_claim, write_claim
from edgefleet.sim.runner import random_spread


def _simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet", "simulate", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_no_broker_is_one_line_saying_connection_refused(broker: Mosquitto) -> None:
    port = free_port()
    proc = _simulate("--pki", str(broker.pki), "--port", str(port), "--duration", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"edgefleet simulate: error: connection refused at 127.0.0.1:{port}"
        " — is the broker running?"
    )


def test_nothing_acknowledged_exits_non_zero(broker: Mosquitto) -> None:
    """Stopped before any device's first sample (seeded spread: all first ticks > 20 s)."""
    seed = next(s for s in itertools.count(1)
                if all(d > 20 for d in itertools.islice(random_spread(s, 60.0), 2)))
    proc = _simulate("--pki", str(broker.pki), "--port", str(broker.port), "--devices", "2",
                     "--interval", "60", "--duration", "0.5", "--seed", str(seed))
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("simulated 2 devices: 0 samples acked")
    assert (f"edgefleet simulate: error: the broker at 127.0.0.1:{broker.port} acknowledged "
            "no sample") in proc.stderr


def test_a_live_demos_names_are_refused_others_pass(tmp_path: Path) -> None:
    write_claim(tmp_path, tmp_path / "work", ["host-x", "sim-0001", "sim-0002"])
    with pytest.raises(ConfigError) as err:
        check_unclaimed(tmp_path, ["sim-0001", "sim-0002", "sim-0003"])
    assert "sim-0001 .. sim-0002 (2 names) are in use by the demo" in str(err.value)
    assert f"pid {os.getpid()}" in str(err.value)
    check_unclaimed(tmp_path, ["mine-0001"])


def test_a_stale_claim_claims_nothing(tmp_path: Path) -> None:
    path = write_claim(tmp_path, tmp_path, ["sim-0001"])
    claim = read_claim(tmp_path)
    assert claim is not None and claim.alive()
    # the same pid, started at another time: a reused pid after the demo was killed
    path.write_text(path.read_text().replace(str(claim.started), str(claim.started - 3600)))
    check_unclaimed(tmp_path, ["sim-0001"])
    (tmp_path / CLAIM_FILE).write_text("not json")
    check_unclaimed(tmp_path, ["sim-0001"])


def test_the_demos_own_simulator_is_let_through(tmp_path: Path) -> None:
    """The demo starts its simulator as a child: the claim's pid is the child's parent."""
    write_claim(tmp_path, tmp_path, ["sim-0001"])
    code = (f"from pathlib import Path; from edgefleet.sim.claims import check_unclaimed; "
            f"check_unclaimed(Path({str(tmp_path)!r}), ['sim-0001'])")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=30, check=False)
    assert child.returncode == 0, child.stderr
    assert psutil.Process().pid == read_claim(tmp_path).pid  # type: ignore[union-attr]
