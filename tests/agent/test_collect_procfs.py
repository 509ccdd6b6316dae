"""Direct /proc readers: parsers on fixture files, and the same answers as psutil here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from edgefleet.agent.collectors import cpu, disk, diskio, load, memory, net, procfs, swap, temp
from edgefleet.agent.collectors.processes_read import parse_btime
from edgefleet.agent.collectors.uptime import boot_time

FIXTURES = Path(__file__).parent / "fixtures"
linux_only = pytest.mark.skipif(not procfs.HAVE_PROC, reason="needs /proc")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# --- parsers on fixtures ------------------------------------------------------------------


def test_cpu_stat_machine_and_cores_in_seconds() -> None:
    total, cores = procfs.parse_cpu_stat(fixture("proc_stat_pi4.txt"), ticks_per_s=100)
    assert list(total) == list(procfs.CPU_FIELDS)
    assert total["user"] == 101321.53
    assert total["iowait"] == 812.6
    assert len(cores) == 4
    assert cores[3]["idle"] == 237786.76
    assert parse_btime(fixture("proc_stat_pi4.txt")) == 1700000000.0


def test_cpu_stat_of_an_old_kernel_has_fewer_modes() -> None:
    total, cores = procfs.parse_cpu_stat(b"cpu  1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\nintr 9\n", 1)
    assert list(total) == ["user", "nice", "system", "idle", "iowait", "irq", "softirq"]
    assert cores == [total]


def test_meminfo_in_bytes_and_available() -> None:
    mem = procfs.parse_meminfo(fixture("proc_meminfo_pi4.txt"))
    assert mem["MemTotal"] == 3885672 * 1024
    assert set(mem) == set(procfs.MEMINFO_FIELDS)  # SwapCached, HugePages_Total, ... not read
    assert (mem["Cached"], mem["SwapFree"]) == (2268844 * 1024, 76796 * 1024)  # not SwapCached
    assert procfs.memory_available(mem) == 2762736 * 1024
    # Before Linux 3.14 (or a 0 there): MemFree + Cached; never above the total.
    assert procfs.memory_available({"MemTotal": 100, "MemFree": 20, "Cached": 30}) == 50
    assert procfs.memory_available({"MemTotal": 100, "MemFree": 20, "MemAvailable": 900}) == 20


def test_diskstats_every_line_layout() -> None:
    stats = procfs.parse_diskstats(fixture("proc_diskstats_pi4.txt"))
    assert stats["mmcblk0"] == {
        "read_count": 219348, "write_count": 1893277,
        "read_bytes": 11843514 * 512, "write_bytes": 62458384 * 512,
    }  # fmt: skip
    assert stats["sda"]["write_bytes"] == 64000 * 512  # 14 fields (Linux 2.6 to 4.17)
    assert stats["sda1"] == {  # 7 fields: a partition on an old kernel
        "read_count": 1400, "write_count": 790, "read_bytes": 80000 * 512,
        "write_bytes": 63000 * 512,
    }  # fmt: skip
    assert set(stats) == {"ram0", "loop0", "mmcblk0", "mmcblk0p1", "mmcblk0p2", "sda", "sda1"}


def test_net_dev_counters() -> None:
    stats = procfs.parse_net_dev(fixture("proc_net_dev_pi4.txt"))
    assert list(stats) == ["lo", "eth0", "wlan0"]
    assert stats["eth0"] == {
        "bytes_recv": 6076405227, "packets_recv": 235578, "errin": 3,
        "bytes_sent": 15879016, "packets_sent": 154858, "errout": 1,
    }  # fmt: skip


def test_mount_table_unescaped_like_getmntent() -> None:
    mounts = disk.mounts_from_table(fixture("proc_mounts_escaped.txt"))
    assert [m.mountpoint for m in mounts] == [
        "/", "/proc", "/run/user", "/media/usb stick", "/mnt/back\\slash",
    ]  # fmt: skip
    assert mounts[2].device == ""  # "none", as psutil gives it
    assert mounts[0].device in ("/dev/root", disk.root_device())


def test_statm_rss() -> None:
    assert procfs.parse_statm_rss(b"100895 7685 3343 1 0 15035 0\n", page_bytes=4096) == 7685 * 4096


def test_proc_file_shares_one_read_per_round(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one")
    shared = procfs.ProcFile(str(path))
    with procfs.one_round():
        assert shared.read() == b"one"
        path.write_bytes(b"two")  # same inode: the kept descriptor sees it
        assert shared.read() == b"one"  # the same round: read once
        assert shared.parsed(bytes.upper) is shared.parsed(bytes.upper)  # parsed once
    assert shared.read() == b"two"  # outside a round: always afresh
    with procfs.one_round():
        assert shared.parsed(bytes.upper) == b"TWO"
    path.write_bytes(b"x" * 200_000)
    assert len(shared.read()) == 200_000  # more than one pread


def test_mount_table_read_again_only_after_a_change(tmp_path: Path) -> None:
    table = procfs.MountTable()
    first = table.read()
    assert table.read() is first  # unchanged: the kernel flagged nothing, nothing re-read
    assert b" /proc proc " in first


def test_sensors_found_once_then_only_values_read() -> None:
    found = [temp.SensorFile("cpu_thermal", "", "/t0"), temp.SensorFile("nvme", "Composite", "/t1")]
    finds: list[float] = []
    values = {"/t0": "48312", "/t1": "oops"}
    now = [0.0]

    def find() -> list[temp.SensorFile]:
        finds.append(now[0])
        return found

    sensors = temp.SysfsSensors(find=find, read=values.__getitem__, rescan_s=600, clock=lambda: now[0])
    assert sensors() == {"cpu_thermal": [("", 48.312)]}  # an unreadable value is left out
    now[0] = 599
    values["/t1"] = "35850"
    assert sensors() == {"cpu_thermal": [("", 48.312)], "nvme": [("Composite", 35.85)]}
    now[0] = 600
    sensors()
    assert finds == [0.0, 600]


# --- the same answers as psutil on this machine ---------------------------------------------


@linux_only
def test_readers_agree_with_psutil() -> None:
    fast, slow = cpu.read_cpu_times_proc(), cpu.read_cpu_times_psutil()
    assert list(fast.total) == list(slow.total)
    assert len(fast.cores) == len(slow.cores)
    for mode, seconds in fast.total.items():
        assert seconds == pytest.approx(slow.total[mode], abs=1.0)  # a second of CPU apart
    assert load.read_load_proc().cores == load.read_load_psutil().cores
    assert abs(load.read_load_proc().load1 - os.getloadavg()[0]) < 0.5  # /proc/loadavg
    assert memory.read_memory_proc().total == memory.read_memory_psutil().total
    assert memory.read_memory_proc().available == pytest.approx(
        memory.read_memory_psutil().available, rel=0.05
    )
    assert swap.read_swap_proc().total == swap.read_swap_psutil().total
    assert disk.read_mounts_proc() == disk.read_mounts_psutil()
    assert temp.SysfsSensors()().keys() == temp.read_sensors_psutil().keys()
    assert abs(boot_time() - psutil.boot_time()) < 2.0


@linux_only
def test_counters_agree_with_psutil() -> None:
    d_fast, d_slow = diskio.read_disk_counters_proc(), diskio.read_disk_counters_psutil()
    assert d_fast.keys() == d_slow.keys()
    for name, counters in d_slow.items():
        assert d_fast[name]["read_bytes"] <= counters["read_bytes"]  # read first: not ahead
    n_fast, n_slow = net.read_nic_counters_proc(), net.read_nic_counters_psutil()
    assert n_fast.keys() == n_slow.keys()
    for name, counters in n_slow.items():
        assert set(n_fast[name]) == set(counters)
        assert n_fast[name]["bytes_recv"] <= counters["bytes_recv"]


def test_pid_list_shared_within_a_round() -> None:
    listings = [[1, 7], [1, 7, 9], [1, 9]]
    pids = procfs.PidList(lister=lambda: listings.pop(0))
    with procfs.one_round():
        assert pids() == [1, 7]
        assert pids() == [1, 7]  # procs and processes of one round: one listing
    with procfs.one_round():
        assert pids() == [1, 7, 9]
    assert pids() == [1, 9]  # outside a round: listed afresh
    assert listings == []


def test_pid_list_lists_again_only_when_a_task_came_or_went() -> None:
    listings = [[1, 7], [1, 7, 9]]
    marks = [b"80 500", b"80 500", b"81 502", b"81 502"]
    pids = procfs.PidList(lister=lambda: listings.pop(0), mark=lambda: marks.pop(0))
    for expected in ([1, 7], [1, 7], [1, 7, 9], [1, 7, 9]):
        with procfs.one_round():
            assert pids() == expected
    assert (listings, marks, pids.listings) == ([], [], 2)


@linux_only
def test_pid_list_sees_a_new_process_through_the_kernels_task_mark() -> None:
    pids = procfs.PidList(mark=procfs.task_mark)
    with procfs.one_round():
        before = pids()
    child = subprocess.Popen(["sleep", "30"])
    try:
        with procfs.one_round():
            assert child.pid in pids() and child.pid not in before
    finally:
        child.kill()
        child.wait()
    with procfs.one_round():
        assert child.pid not in pids()  # reaped: the task count moved, listed again


@linux_only
def test_pid_list_is_psutils() -> None:
    for _ in range(5):  # processes come and go on a busy machine: agree once
        if sorted(procfs.list_pids()) == sorted(psutil.pids()):
            break
    else:
        pytest.fail("the /proc listing never matched psutil.pids()")
    assert os.getpid() in procfs.list_pids()


@linux_only
def test_own_rss_like_psutil() -> None:
    assert procfs.self_rss() == pytest.approx(psutil.Process().memory_info().rss, rel=0.05)


def test_runtime_readers_do_not_import_psutil() -> None:
    """The lean runtime's collectors read /proc themselves: psutil (about 4 MiB of RSS) is
    imported only where there is no /proc."""
    if not procfs.HAVE_PROC:
        pytest.skip("needs /proc")
    import subprocess

    code = (
        "import sys\nfrom edgefleet.agent.collectors import build_collectors, collect_all\n"
        "import edgefleet.agent.main\nfrom edgefleet.agent.collectors.procfs import self_rss\n"
        "collect_all(build_collectors()); self_rss()\nprint('psutil' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False", done.stderr
