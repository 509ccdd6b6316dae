"""The processes collector: specs, matching, restart counting and CPU maths; real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.collectors.processes import (
    ProcessesCollector,
    ProcessScanner,
    RestartState,
    cmdline_needed,
    cpu_share,
    parse_spec,
    step_restarts,
)
from edgefleet.agent.collectors.processes_read import (
    Identity,
    Usage,
    parse_identity,
    parse_proc_stat,
    read_identity,
    read_identity_proc,
    read_usage_proc,
    read_usage_psutil,
    split_cmdline,
)


def test_specs() -> None:
    assert parse_spec("nginx").matches("nginx", "/usr/sbin/nginx -g daemon off;")
    assert not parse_spec("nginx").matches("nginx-helper", "")
    api = parse_spec("api=python3? .*-m myapp\\.api")
    assert api.label == "api"
    assert api.matches("python3", "/usr/bin/python3 -m myapp.api --port 80")
    assert not api.matches("python3", "/usr/bin/python3 -m myapp.worker")
    for bad, reason in [
        ("", "1-64 chars"),
        ("a[b]", "no brackets"),
        ("x=", "empty pattern"),
        ("x=(", "bad regex"),
        ("y" * 65, "1-64 chars"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_spec(bad)


def ids(*pids: int) -> frozenset[tuple[int, float]]:
    return frozenset((pid, 1000.0 + pid) for pid in pids)


def test_restarts_seen() -> None:
    state = step_restarts(RestartState(), ids(10))
    assert state.restarts == 0  # the first look is not a restart
    state = step_restarts(state, ids(11))  # replaced within one interval
    assert state.restarts == 1
    state = step_restarts(state, ids())  # down for a while...
    state = step_restarts(state, ids())
    assert state.restarts == 1
    state = step_restarts(state, ids(12))  # ...and back
    assert state.restarts == 2
    state = step_restarts(state, ids(12, 13))  # scaling up is not a restart
    assert state.restarts == 2
    state = step_restarts(state, ids(12))  # a worker died (count drop)...
    state = step_restarts(state, ids(12, 14))  # ...and a new one came (rise)
    assert state.restarts == 3
    same_pid_new_process = frozenset({(12, 5000.0), (14, 1014.0)})  # PID reused
    assert step_restarts(state, same_pid_new_process).restarts == 4


def test_cpu_share_of_the_machine() -> None:
    before = {(1, 1.0): 10.0, (2, 2.0): 5.0}
    after = {(1, 1.0): 11.0, (2, 2.0): 5.5, (3, 3.0): 99.0}  # pid 3 is new: not counted
    assert cpu_share(before, after, elapsed_s=1.0, cpus=2) == 75.0
    assert cpu_share({}, after, elapsed_s=0.0, cpus=2) is None
    assert cpu_share({(1, 1.0): 10.0}, {(1, 1.0): 50.0}, 1.0, 1) == 100.0  # clamped


class FakeProcs:
    """A process table the test edits: pid -> identity; identify calls are counted."""

    def __init__(self, table: dict[int, Identity]) -> None:
        self.table = table
        self.identified: list[int] = []

    def pids(self) -> list[int]:
        return list(self.table)

    def identify(self, pid: int) -> Identity | None:
        self.identified.append(pid)
        return self.table.get(pid)


def test_scanner_rereads_a_new_pid_once_then_caches() -> None:
    procs = FakeProcs({1: Identity("init", "/sbin/init", 1.0), 50: Identity("bash", "bash", 5.0)})
    scanner = ProcessScanner([parse_spec("nginx")], pids=procs.pids, identify=procs.identify)
    assert scanner.scan() == {"nginx": []}
    procs.table[50] = Identity("nginx", "nginx: master", 5.0)  # the fork exec-ed nginx
    assert scanner.scan() == {"nginx": [(50, procs.table[50])]}
    assert scanner.scan() == {"nginx": [(50, procs.table[50])]}
    assert procs.identified == [1, 50, 1, 50]  # two reads per PID, then none
    del procs.table[50]
    procs.table[51] = Identity("nginx", "nginx: master", 9.0)
    assert scanner.scan() == {"nginx": [(51, procs.table[51])]}


def test_collector_figures_from_fakes() -> None:
    procs = FakeProcs({7: Identity("agent", "agent", 1.0), 8: Identity("agent", "agent", 2.0)})
    cpu = {7: 1.0, 8: 2.0}
    now = [0.0]
    collector = ProcessesCollector(
        specs=["agent", "db=postgres"],
        pids=procs.pids,
        identify=procs.identify,
        usage=lambda pid: Usage(cpu[pid], 1000 * pid),
        clock=lambda: now[0],
        cpus=4,
    )
    first = collector.collect()
    assert first == {
        "process.running[agent]": 1.0,
        "process.count[agent]": 2.0,
        "process.rss_bytes[agent]": 15000.0,
        "process.restarts[agent]": 0.0,
        "process.running[db]": 0.0,
        "process.count[db]": 0.0,
        "process.rss_bytes[db]": 0.0,
        "process.restarts[db]": 0.0,
    }  # no CPU figure without an interval
    now[0], cpu[7], cpu[8] = 2.0, 3.0, 4.0
    assert collector.collect()["process.cpu_percent[agent]"] == 50.0  # 4 s of 8 core-seconds
    assert ProcessesCollector().collect() == {}


@pytest.fixture
def marker() -> str:
    return f"edgefleet-proc-test-{uuid.uuid4().hex}"


@pytest.fixture
def spawn(marker: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def start(marker: str, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    code = "import sys, time; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code, marker], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"  # running (and exec-ed) before the first look
    procs.append(proc)
    return proc


def test_real_processes_restart_seen(marker: str, spawn: list[subprocess.Popen[bytes]]) -> None:
    collector = ProcessesCollector(specs=[f"svc={marker}"])
    assert collector.collect()["process.running[svc]"] == 0.0
    first = start(marker, spawn)
    metrics = collector.collect()
    assert metrics["process.running[svc]"] == 1.0
    assert metrics["process.count[svc]"] == 1.0
    assert metrics["process.rss_bytes[svc]"] > 1_000_000
    assert metrics["process.restarts[svc]"] == 0.0  # it was not running before: a start
    first.kill()
    first.wait()
    start(marker, spawn)
    metrics = collector.collect()
    assert metrics["process.restarts[svc]"] == 1.0
    assert 0.0 <= metrics["process.cpu_percent[svc]"] <= 100.0


def test_proc_stat_parsing_with_an_awkward_name() -> None:
    data = (Path(__file__).parent / "fixtures" / "proc_pid_stat.txt").read_bytes()
    assert parse_proc_stat(data, ticks_per_s=100, page_bytes=4096) == Usage(16.25, 2048 * 4096)


def test_fast_reader_agrees_with_psutil() -> None:
    fast, slow = read_usage_proc(os.getpid()), read_usage_psutil(os.getpid())
    assert fast is not None
    assert slow is not None
    assert fast.rss > 1_000_000
    assert fast.cpu_s <= slow.cpu_s + 1e-9  # read first: a process only gains CPU time
    assert read_usage_proc(2**22 + 12345) is None  # no such process


def test_identity_parsing_like_psutil() -> None:
    stat = (Path(__file__).parent / "fixtures" / "proc_pid_stat.txt").read_bytes()
    start = int(stat.rsplit(b")", 1)[1].split()[19])
    ident = parse_identity(stat, b"/usr/bin/x\0--flag\0a b\0", 1000.0, 100)
    assert ident.cmdline == "/usr/bin/x --flag a b"
    assert ident.create_time == 1000.0 + start / 100
    assert ident.name == stat.partition(b"(")[2].rpartition(b")")[0].decode()
    # A process that rewrote its title with spaces; a kernel thread has no command line.
    assert split_cmdline(b"nginx: master process /usr/sbin/nginx") == [
        "nginx:", "master", "process", "/usr/sbin/nginx"]  # fmt: skip
    assert split_cmdline(b"") == []
    # The kernel cuts names to 15 characters; the program's file name completes them.
    long = b"42 (systemd-journal) S" + b" 0" * 40
    full = parse_identity(long, b"/lib/systemd/systemd-journald\0", 0.0, 100)
    assert full.name == "systemd-journald"
    other = parse_identity(long, b"/usr/bin/python3\0", 0.0, 100)
    assert other.name == "systemd-journal"  # not a completion of the cut name: kept


def test_fast_identity_agrees_with_psutil(spawn: list[subprocess.Popen[bytes]]) -> None:
    name = "edgefleet-long-process-name"  # longer than the kernel's 15 characters
    link = Path(f"/tmp/{name}-{uuid.uuid4().hex[:6]}")
    link.symlink_to(sys.executable)
    try:
        proc = subprocess.Popen([str(link), "-c", "import time; time.sleep(30)", "x y"])
        spawn.append(proc)
        for pid in (os.getpid(), proc.pid):
            assert read_identity_proc(pid) == read_identity(pid)
        assert (read_identity_proc(proc.pid) or Identity("", "", 0)).name == link.name
    finally:
        link.unlink()
    assert read_identity_proc(2**22 + 12345) is None


def test_command_line_read_only_when_a_spec_can_use_it() -> None:
    by_name = cmdline_needed([parse_spec("nginx"), parse_spec("systemd-journald")])
    assert not by_name("nginx")
    assert not by_name("bash")
    assert by_name("systemd-journal")  # cut by the kernel: the full name is in the cmdline
    assert not by_name("kworker/0:1-eve")  # cut, but no spec could be its completion
    assert cmdline_needed([parse_spec("api=gunicorn .*app")])("python3")
    me = read_identity_proc(os.getpid(), need_cmdline=lambda comm: False)
    full = read_identity(os.getpid())
    assert me is not None and full is not None
    assert (me.name, me.cmdline, me.create_time) == (full.name, "", full.create_time)
