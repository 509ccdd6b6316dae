"""The bounded command runner and the background refresher the issue 21 collectors share."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.agent.collectors.command import CommandResult, run_bounded
from edgefleet.agent.collectors.periodic import Refresher

PY = sys.executable


def dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def wait_until(condition: Callable[[], bool], limit_s: float = 20.0) -> bool:
    """Poll ``condition`` (a kill is asynchronous) until it holds or ``limit_s`` passed."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_output_and_exit_code() -> None:
    ok = run_bounded([PY, "-c", "print('a 1'); print('b 2')"], timeout_s=20)
    assert ok == CommandResult(0, b"a 1\nb 2\n", b"")
    assert ok.error("x") is None
    bad = run_bounded([PY, "-c", "import sys; sys.stderr.write('no db\\nmore\\n'); sys.exit(3)"],
                      timeout_s=20)
    assert bad.exit_code == 3
    assert bad.error("exec_command") == "exec_command: exit code 3: no db"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    result = run_bounded([PY, "-c", script], timeout_s=1.5)
    assert result.timed_out
    assert result.exit_code is None
    assert result.stdout == b"started\n"
    assert result.error("exec_command") == "exec_command: killed after its timeout"
    grandchild = int(pidfile.read_text())
    # SIGKILL went to the group: the grandchild dies (gone once reaped, else a zombie).
    assert wait_until(lambda: dead(grandchild))


def test_background_child_holding_stdout_does_not_hang_the_run() -> None:
    script = (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('x 1')\n"
    )
    result = run_bounded([PY, "-c", script], timeout_s=1.5)
    assert result.timed_out  # the child keeps the pipe open: bounded by the deadline, killed
    assert result.stdout == b"x 1\n"


def test_output_beyond_the_bound_is_cut_and_the_command_killed() -> None:
    result = run_bounded([PY, "-c", "import sys\nwhile True: sys.stdout.write('y' * 65536)"],
                         timeout_s=20, max_bytes=100_000)
    assert result.truncated
    assert len(result.stdout) == 100_000
    assert result.error("exec_command") == "exec_command: killed, output larger than its bound"


def test_chatty_stderr_is_bounded_and_does_not_block() -> None:
    script = "import sys\nfor _ in range(200): sys.stderr.write('e' * 65536)\nprint('done 1')"
    result = run_bounded([PY, "-c", script], timeout_s=20, max_stderr=1000)
    assert result.exit_code == 0
    assert result.stdout == b"done 1\n"
    assert len(result.stderr) == 1000


def test_missing_program_raises_oserror() -> None:
    with pytest.raises(OSError, match="no-such-program"):
        run_bounded(["/nonexistent/no-such-program"], timeout_s=5)


def test_refresher_never_waits_for_a_slow_job() -> None:
    release = threading.Event()
    calls: list[int] = []

    def job() -> int:
        calls.append(1)
        release.wait(30)
        return len(calls)

    now = [0.0]
    ref = Refresher(job, period_s=10.0, name="t", clock=lambda: now[0])
    assert ref.poll() is None  # started, not finished: returns at once
    now[0] = 50.0
    assert ref.poll() is None  # due again, but the first run is still going: no second run
    assert len(calls) == 1
    release.set()
    assert ref.wait_idle(10)
    release.clear()
    assert ref.poll() == 1  # period passed: a new run starts; the finished outcome is returned
    release.set()
    assert ref.wait_idle(10)
    now[0] = 55.0
    assert ref.poll() == 2
    assert ref.wait_idle(10)
    assert len(calls) == 2  # not due yet at 55: no third run


def test_refresher_hands_over_a_job_exception() -> None:
    def job() -> int:
        raise RuntimeError("systemctl broke")

    ref = Refresher(job, period_s=0.0, name="t")
    ref.poll()
    assert ref.wait_idle(10)
    outcome = ref.poll()
    assert isinstance(outcome, RuntimeError)
    assert str(outcome) == "systemctl broke"
