"""The exec collector: real commands, their failures, and the pure mapping of a run's result."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import pytest

from edgefleet.agent.collectors import build_collectors
from edgefleet.agent.collectors.command import CommandResult
from edgefleet.agent.collectors.exec_cmd import ExecCollector, exec_metrics
from edgefleet.agent.collectors.options import CollectorOptions

PY = sys.executable


def settled(collector: ExecCollector) -> dict[str, float]:
    """Wait for the run in flight, then take its figures (the next run starts meanwhile)."""
    assert collector.refresher is not None
    assert collector.refresher.wait_idle(30)
    return collector.collect()


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "metrics.py"
    path.write_text(body)
    return [PY, str(path)]


def test_pure_mapping_of_results() -> None:
    good = CommandResult(0, b'# TYPE a gauge\na{x="1"} 2\nnot a sample\n', b"")
    metrics, problems = exec_metrics(good, 10)
    assert metrics == {"exec.a[1]": 2.0, "exec.status.failed": 0.0,
                       "exec.status.exit_code": 0.0, "exec.status.errors": 1.0}
    assert problems == ["output line 3: value 'a' is not a number"]
    failed = CommandResult(2, b"a 1\n", b"cannot reach the db\n")
    assert exec_metrics(failed, 10) == (
        {"exec.status.failed": 1.0, "exec.status.exit_code": 2.0},
        ["exec_command: exit code 2: cannot reach the db"],
    )
    killed = CommandResult(None, b"a 1\n", b"", timed_out=True)
    assert exec_metrics(killed, 10)[0] == {"exec.status.failed": 1.0}


def test_command_output_becomes_metrics(tmp_path: Path) -> None:
    argv = script(tmp_path, "print('backup_age_seconds 3600')\nprint('disk_ok{disk=\"sda\"} 1')\n")
    collector = ExecCollector(argv=argv, timeout_s=20)
    assert settled(collector) == {
        "exec.backup_age_seconds": 3600.0, "exec.disk_ok[sda]": 1.0,
        "exec.status.failed": 0.0, "exec.status.exit_code": 0.0, "exec.status.errors": 0.0,
    }


def test_non_zero_exit_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = script(tmp_path, "import sys\nprint('a 1')\nsys.exit('db down')\n")
    with caplog.at_level(logging.WARNING):
        metrics = settled(ExecCollector(argv=argv, timeout_s=20))
    assert metrics == {"exec.status.failed": 1.0, "exec.status.exit_code": 1.0}
    details = [r.__dict__["fields"]["detail"] for r in caplog.records
               if r.getMessage() == "exec collector problem"]
    assert details == ["exec_command: exit code 1: db down"]


def test_slow_command_never_delays_a_sample_and_is_killed(tmp_path: Path) -> None:
    argv = script(tmp_path, "import time\nprint('a 1', flush=True)\ntime.sleep(60)\n")
    collector = ExecCollector(argv=argv, timeout_s=1.0)
    assert collector.collect() == {}  # the run is in flight: this sample goes without it
    assert settled(collector) == {"exec.status.failed": 1.0}


def test_missing_program_is_a_failed_run_not_a_crash(tmp_path: Path) -> None:
    collector = ExecCollector(argv=[str(tmp_path / "nope")], timeout_s=5)
    assert settled(collector) == {"exec.status.failed": 1.0}


def test_built_from_options_with_shell_like_splitting(tmp_path: Path) -> None:
    code = "print('greeting{who=\"a b\"} 1')"
    options = CollectorOptions(exec_command=f"{shlex.quote(PY)} -c {shlex.quote(code)}")
    [collector] = build_collectors(["exec"], options=options)
    assert isinstance(collector, ExecCollector)
    assert settled(collector)["exec.greeting[a b]"] == 1.0
    [idle] = build_collectors(["exec"])
    assert idle.collect() == {}
