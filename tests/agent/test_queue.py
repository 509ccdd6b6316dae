"""The sample queue: one contract suite over both backends, then SQLite's durability.

No test here measures time; the SIGKILL test waits on the child's output, not a clock.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.contracts import SampleQueue
from edgefleet.agent.queue import (
    ROW_OVERHEAD_BYTES,
    AnyQueue,
    MemoryQueue,
    SqliteQueue,
    open_queue,
)
from edgefleet.errors import ConfigError

ROW = ROW_OVERHEAD_BYTES
BIG = 1 << 40
MakeQueue = Callable[..., AnyQueue]


def body(n: int, size: int = 100) -> bytes:
    """A body of exactly ``size`` bytes that names its sample."""
    return f"{n:08d}".encode().ljust(size, b".")


def seqs(queue: SampleQueue, after_seq: int = -1) -> list[int]:
    return [s.seq for s in queue.peek(max_samples=10**6, max_bytes=BIG, after_seq=after_seq)]


@pytest.fixture(params=["memory", "sqlite"])
def make_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeQueue]:
    """Opens the backend under test with the given bounds (generous by default)."""
    opened: list[AnyQueue] = []

    def make(*, max_bytes: int = BIG, max_samples: int = 10**6) -> AnyQueue:
        queue = open_queue(
            request.param, tmp_path / "queue.db", max_bytes=max_bytes, max_samples=max_samples
        )
        assert queue.kind == request.param
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        queue.close()


# -- the contract, both backends -----------------------------------------------------------


def test_put_assigns_consecutive_seqs_from_zero(make_queue: MakeQueue) -> None:
    queue = make_queue()
    assert [queue.put(float(i), body(i)) for i in range(5)] == [0, 1, 2, 3, 4]
    assert len(queue.stream) == 16
    int(queue.stream, 16)


def test_peek_returns_samples_oldest_first_as_stored(make_queue: MakeQueue) -> None:
    queue = make_queue()
    for i in range(10):
        queue.put(1000.0 + i, body(i))
    batch = queue.peek(max_samples=4, max_bytes=BIG)
    assert [(s.seq, s.ts, s.body) for s in batch] == [(i, 1000.0 + i, body(i)) for i in range(4)]
    assert isinstance(batch[0].body, bytes)
    assert seqs(queue) == list(range(10)), "peek does not remove anything"


def test_peek_after_seq_skips_in_flight_samples(make_queue: MakeQueue) -> None:
    queue = make_queue()
    for i in range(10):
        queue.put(float(i), body(i))
    assert seqs(queue, after_seq=6) == [7, 8, 9]
    assert seqs(queue, after_seq=9) == []
    assert [s.seq for s in queue.peek(max_samples=2, max_bytes=BIG, after_seq=3)] == [4, 5]


def test_peek_max_bytes_counts_bodies_and_returns_at_least_one(make_queue: MakeQueue) -> None:
    queue = make_queue()
    for i in range(5):
        queue.put(float(i), body(i, size=100))
    assert [s.seq for s in queue.peek(max_samples=10, max_bytes=250)] == [0, 1]
    assert [s.seq for s in queue.peek(max_samples=10, max_bytes=300)] == [0, 1, 2]
    assert [s.seq for s in queue.peek(max_samples=10, max_bytes=1)] == [0]
    assert [s.seq for s in queue.peek(max_samples=10, max_bytes=1, after_seq=3)] == [4]


def test_peek_on_empty_queue_and_bad_limit(make_queue: MakeQueue) -> None:
    queue = make_queue()
    assert queue.peek(max_samples=10, max_bytes=BIG) == []
    with pytest.raises(ValueError, match="max_samples"):
        queue.peek(max_samples=0, max_bytes=BIG)


def test_oldest_sample_follows_puts_acks_and_drops(make_queue: MakeQueue) -> None:
    """What the health object reports (oldest age, held_from) after every kind of change."""
    queue = make_queue(max_samples=3)

    def head() -> tuple[float | None, int]:
        st = queue.stats()
        return st.oldest_ts, st.held_from

    assert head() == (None, 0)
    for i in range(3):
        queue.put(10.0 + i, body(i))
    assert head() == (10.0, 0)
    queue.ack([0])
    assert head() == (11.0, 1)
    queue.put(13.0, body(3))
    queue.put(14.0, body(4))  # full: 1 dropped
    assert head() == (12.0, 2)
    queue.ack([2, 3, 4])
    assert head() == (None, 5)  # empty: held from the next seq
    assert seqs(queue, after_seq=4) == []
    queue.put(15.0, body(5))
    assert head() == (15.0, 5)
    assert seqs(queue, after_seq=4) == [5]


def test_ack_removes_given_seqs_and_ignores_unknown(make_queue: MakeQueue) -> None:
    queue = make_queue()
    for i in range(6):
        queue.put(float(i), body(i))
    queue.ack([0, 2, 4, 99, -5])
    queue.ack([2])
    queue.ack([])
    assert seqs(queue) == [1, 3, 5]
    assert queue.stats().depth == 3
    assert queue.stats().bytes == 3 * (100 + ROW)


def test_ack_through_removes_everything_up_to_a_watermark(make_queue: MakeQueue) -> None:
    queue = make_queue()
    for i in range(6):
        queue.put(float(i), body(i))
    assert queue.stats().held_from == 0
    assert queue.ack_through(2) == 3
    assert seqs(queue) == [3, 4, 5]
    assert queue.ack_through(1) == 0  # an older watermark changes nothing
    assert (queue.stats().depth, queue.stats().bytes) == (3, 3 * (100 + ROW))
    assert queue.stats().held_from == 3
    assert queue.ack_through(99) == 3
    stats = queue.stats()
    assert (stats.depth, stats.bytes, stats.held_from) == (0, 0, 6)  # next seq when empty
    queue.put(6.0, body(6))
    assert seqs(queue) == [6] and queue.stats().held_from == 6


def test_a_watermark_over_samples_dropped_in_flight_takes_back_the_drop(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue(max_samples=2)
    for n in range(3):
        queue.put(float(n), body(n))  # 0 dropped for room (it was sent: in flight)
    assert (queue.stats().dropped_total, queue.stats().held_from) == (1, 1)
    queue.ack_through(1)  # the backend committed 0 and 1: 0 was delivered after all
    assert queue.stats().dropped_total == 0
    assert seqs(queue) == [2]


def test_notes_are_remembered(make_queue: MakeQueue) -> None:
    queue = make_queue()
    assert queue.recall("delivery") is None
    queue.note("delivery", "backend")
    queue.note("delivery", "backend")
    assert queue.recall("delivery") == "backend"


def test_sample_bound_drops_exactly_the_oldest(make_queue: MakeQueue) -> None:
    queue = make_queue(max_samples=10)
    for i in range(25):
        assert queue.put(float(i), body(i)) == i
    assert seqs(queue) == list(range(15, 25))
    stats = queue.stats()
    assert (stats.depth, stats.dropped_total, stats.oldest_ts) == (10, 15, 15.0)


def test_byte_bound_drops_exactly_the_oldest(make_queue: MakeQueue) -> None:
    queue = make_queue(max_bytes=5 * (100 + ROW))
    for i in range(12):
        queue.put(float(i), body(i, size=100))
    assert seqs(queue) == [7, 8, 9, 10, 11]
    stats = queue.stats()
    assert (stats.depth, stats.bytes, stats.dropped_total) == (5, 5 * (100 + ROW), 7)
    queue.put(12.0, body(12, size=250))  # needs 250 + ROW: two 100-byte rows must go
    assert seqs(queue) == [9, 10, 11, 12]
    assert queue.stats().dropped_total == 9
    assert queue.stats().bytes == 3 * (100 + ROW) + 250 + ROW


def test_dropped_while_in_flight_then_acked_is_not_counted_as_dropped(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue(max_samples=2)
    for n in range(2):
        queue.put(float(n), body(n))
    in_flight = [s.seq for s in queue.peek(max_samples=10, max_bytes=BIG)]
    queue.put(2.0, body(2))  # full: seq 0 is dropped although its message is on the wire
    assert queue.stats().dropped_total == 1
    queue.ack(in_flight)  # ...and then its PUBACK arrives: it was delivered after all
    assert queue.stats().dropped_total == 0
    assert seqs(queue) == [2]
    queue.ack([0])  # a second ack of the same seq changes nothing
    assert queue.stats().dropped_total == 0


def test_oversized_sample_is_dropped_alone(make_queue: MakeQueue) -> None:
    queue = make_queue(max_bytes=3 * (100 + ROW))
    queue.put(0.0, body(0))
    assert queue.put(1.0, body(1, size=3 * (100 + ROW))) == 1
    assert queue.put(2.0, body(2)) == 2
    assert seqs(queue) == [0, 2]
    assert queue.stats().dropped_total == 1


def test_acked_samples_make_room_without_drops(make_queue: MakeQueue) -> None:
    queue = make_queue(max_samples=3)
    for i in range(3):
        queue.put(float(i), body(i))
    queue.ack([0, 1])
    queue.put(3.0, body(3))
    queue.put(4.0, body(4))
    assert seqs(queue) == [2, 3, 4]
    assert queue.stats().dropped_total == 0


def test_stats(make_queue: MakeQueue) -> None:
    queue = make_queue()
    empty = queue.stats()
    assert (empty.depth, empty.bytes, empty.oldest_ts, empty.dropped_total) == (0, 0, None, 0)
    queue.put(50.0, body(0, size=10))
    queue.put(60.0, body(1, size=20))
    stats = queue.stats()
    assert (stats.depth, stats.bytes, stats.oldest_ts) == (2, 30 + 2 * ROW, 50.0)
    queue.ack([0])
    assert queue.stats().oldest_ts == 60.0


def test_bad_bounds_are_refused(make_queue: MakeQueue) -> None:
    with pytest.raises(ValueError, match="max_samples"):
        make_queue(max_samples=0)
    with pytest.raises(ValueError, match="max_bytes"):
        make_queue(max_bytes=ROW)


def test_puts_from_many_threads_get_unique_consecutive_seqs(make_queue: MakeQueue) -> None:
    queue = make_queue()
    got: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [queue.put(1.0, b"{}") for _ in range(300)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == list(range(1200))
    assert seqs(queue) == list(range(1200))


@pytest.mark.slow
def test_byte_bound_holds_over_100k_puts(make_queue: MakeQueue) -> None:
    bound = 1 << 20
    queue = make_queue(max_bytes=bound, max_samples=10**7)
    payload = b"x" * 300
    for i in range(100_000):
        queue.put(float(i), payload)
        if i % 5000 == 0:
            assert queue.stats().bytes <= bound
    stats = queue.stats()
    assert stats.bytes <= bound
    assert stats.depth == bound // (300 + ROW)
    assert stats.depth + stats.dropped_total == 100_000
    assert seqs(queue) == list(range(100_000 - stats.depth, 100_000))


# -- open_queue --------------------------------------------------------------------------


def test_open_queue_refuses_unknown_kind_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="disk"):
        open_queue("disk", tmp_path / "q.db", max_bytes=BIG, max_samples=10)
    with pytest.raises(ConfigError, match="path"):
        open_queue("sqlite", None, max_bytes=BIG, max_samples=10)


def test_memory_queues_start_new_streams() -> None:
    first = MemoryQueue(max_bytes=BIG, max_samples=10)
    second = MemoryQueue(max_bytes=BIG, max_samples=10)
    assert first.stream != second.stream


# -- SQLite: durability and recovery -----------------------------------------------------


def open_sqlite(path: Path, **kw: Any) -> SqliteQueue:
    queue = open_queue("sqlite", path, max_bytes=BIG, max_samples=10**6, **kw)
    assert isinstance(queue, SqliteQueue)
    return queue


def test_reopen_keeps_samples_seq_stream_and_dropped(tmp_path: Path) -> None:
    path = tmp_path / "state" / "queue.db"
    queue = SqliteQueue(path, max_bytes=BIG, max_samples=5)
    for i in range(8):
        queue.put(float(i), body(i))
    queue.ack([3])
    stream = queue.stream
    queue.close()

    again = SqliteQueue(path, max_bytes=BIG, max_samples=5)
    assert again.stream == stream
    assert seqs(again) == [4, 5, 6, 7]
    assert again.peek(max_samples=1, max_bytes=BIG)[0].body == body(4)
    stats = again.stats()
    assert (stats.depth, stats.bytes, stats.dropped_total) == (4, 4 * (100 + ROW), 3)
    assert again.put(8.0, body(8)) == 8
    again.close()


def test_a_note_survives_a_reopen(tmp_path: Path) -> None:
    queue = open_queue("sqlite", tmp_path / "q.db", max_bytes=BIG, max_samples=100)
    queue.note("delivery", "backend")
    queue.close()
    again = open_queue("sqlite", tmp_path / "q.db", max_bytes=BIG, max_samples=100)
    assert again.recall("delivery") == "backend"
    again.close()


def test_seq_continues_after_everything_was_acked(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    queue = open_sqlite(path, synchronous="full")
    for i in range(4):
        queue.put(float(i), body(i))
    queue.ack(range(4))
    queue.close()
    again = open_sqlite(path)
    assert again.stats().depth == 0
    assert again.put(9.0, body(9)) == 4
    again.close()


def aside_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}*.corrupt-*"))


def test_garbage_file_is_moved_aside_and_a_new_stream_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "queue.db"
    queue = open_sqlite(path)
    queue.put(1.0, body(1))
    old_stream = queue.stream
    queue.close()
    garbage = b"this is not an sqlite database\x00" * 200
    path.write_bytes(garbage)

    with caplog.at_level(logging.WARNING):
        fresh = open_sqlite(path)
    assert fresh.kind == "sqlite"
    assert fresh.stream != old_stream
    assert fresh.stats().depth == 0
    assert fresh.put(2.0, body(2)) == 0
    [aside] = aside_files(path)
    assert aside.read_bytes() == garbage
    assert any(getattr(r, "fields", {}).get("moved_to") == str(aside) for r in caplog.records)
    fresh.close()


@pytest.mark.parametrize("damage", ["all_but_header", "one_leaf_page"])
def test_damaged_pages_are_found_on_open(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "queue.db"
    queue = open_sqlite(path)
    for i in range(2000):
        queue.put(float(i), body(i))
    old_stream = queue.stream
    queue.close()
    data = bytearray(path.read_bytes())
    if damage == "all_but_header":  # SQLite raises "database disk image is malformed"
        data[8192:] = b"\xa5" * (len(data) - 8192)
    else:  # a scrambled cell pointer array: PRAGMA quick_check reports it
        data[30 * 4096 + 12 : 30 * 4096 + 40] = bytes(range(28))
    path.write_bytes(bytes(data))

    fresh = open_sqlite(path)
    assert fresh.kind == "sqlite"
    assert fresh.stream != old_stream
    assert fresh.stats().depth == 0
    assert len(aside_files(path)) == 1
    fresh.close()


class FailingInsert:
    """Stands in for the connection and fails every INSERT with the given error."""

    def __init__(self, conn: sqlite3.Connection, error: sqlite3.Error) -> None:
        self.conn = conn
        self.error = error

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("INSERT INTO samples"):
            raise self.error
        return self.conn.execute(sql, *args)

    def close(self) -> None:
        self.conn.close()


def test_corruption_found_by_a_put_replaces_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "queue.db"
    queue = SqliteQueue(path, max_bytes=BIG, max_samples=10)
    for i in range(13):
        queue.put(float(i), body(i))
    old_stream = queue.stream
    malformed = sqlite3.DatabaseError("database disk image is malformed")
    queue._conn = FailingInsert(queue._conn, malformed)  # type: ignore[assignment]

    with caplog.at_level(logging.WARNING):
        assert queue.put(13.0, body(13)) == 0
    assert queue.stream != old_stream
    assert queue.put(14.0, body(14)) == 1
    stats = queue.stats()
    assert (stats.depth, stats.dropped_total) == (2, 3 + 10)
    assert len(aside_files(path)) == 1
    assert any(getattr(r, "fields", {}).get("lost") == 10 for r in caplog.records)
    queue.close()
    again = SqliteQueue(path, max_bytes=BIG, max_samples=10)
    assert (again.stream, again.stats().dropped_total, seqs(again)) == (queue.stream, 13, [0, 1])
    again.close()


def test_disk_full_on_put_counts_the_sample_as_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "queue.db"
    queue = SqliteQueue(path, max_bytes=BIG, max_samples=10)
    queue.put(0.0, body(0))
    stream, real = queue.stream, queue._conn
    full = sqlite3.OperationalError("database or disk is full")
    queue._conn = FailingInsert(real, full)  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR):
        assert queue.put(1.0, body(1)) == 1
    queue._conn = real
    assert queue.put(2.0, body(2)) == 2
    assert (queue.stream, seqs(queue), queue.stats().dropped_total) == (stream, [0, 2], 1)
    assert aside_files(path) == []
    assert [getattr(r, "fields", {}).get("reason") for r in caplog.records] == ["store_error"]
    queue.close()  # (a SIGKILL would do the same: the next put already saved the counters)
    again = SqliteQueue(path, max_bytes=BIG, max_samples=10)
    assert again.stats().dropped_total == 1  # the drop is remembered, not forgotten
    assert again.put(3.0, body(3)) == 3  # and its seq is never handed out twice
    again.close()


@pytest.mark.parametrize("where", ["is_a_directory", "under_a_file"])
def test_unusable_location_falls_back_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    if where == "is_a_directory":
        path = tmp_path / "queue.db"
        path.mkdir()
    else:
        (tmp_path / "plain-file").write_text("x")
        path = tmp_path / "plain-file" / "queue.db"
    with caplog.at_level(logging.ERROR):
        queue = open_queue("sqlite", path, max_bytes=BIG, max_samples=10)
    assert queue.kind == "memory"
    assert queue.put(1.0, b"{}") == 0
    assert [r.levelname for r in caplog.records] == ["ERROR"]


READ_ONLY_CHILD = """
import os, sys
from pathlib import Path
from edgefleet.agent.queue import open_queue
if os.geteuid() == 0:  # root writes anywhere: act as nobody, like a service user would
    os.setgid(65534)
    os.setuid(65534)
print(open_queue("sqlite", Path(sys.argv[1]), max_bytes=1 << 20, max_samples=10).kind)
"""


def test_read_only_directory_falls_back_to_memory() -> None:
    with tempfile.TemporaryDirectory() as top:
        Path(top).chmod(0o755)
        locked = Path(top) / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        child = subprocess.run(
            [sys.executable, "-c", READ_ONLY_CHILD, str(locked / "queue.db")],
            capture_output=True,
            text=True,
            check=True,
        )
        locked.chmod(0o755)
    assert child.stdout.strip() == "memory"
    assert "falling back to memory" in child.stderr


CHILD = """
import sys
from pathlib import Path
from edgefleet.agent.queue import SqliteQueue

queue = SqliteQueue(Path(sys.argv[1]), max_bytes=1 << 40, max_samples=1 << 40)
print(queue.stream, flush=True)
for i in range(10_000_000):
    print(queue.put(float(i), b"x" * 300), flush=True)
"""


@pytest.mark.fault
def test_sigkill_loses_no_sample_that_put_returned(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    stream = child.stdout.readline().strip()
    printed: list[int] = []
    while len(printed) < 3000:
        line = child.stdout.readline()
        assert line, f"child stopped early with {child.wait()}"
        printed.append(int(line))
    child.send_signal(signal.SIGKILL)
    printed += [int(word) for word in child.stdout.read().split()]
    assert child.wait() == -signal.SIGKILL

    queue = open_sqlite(path)
    stored = seqs(queue)
    assert queue.stream == stream
    assert printed == list(range(len(printed)))
    assert stored[: len(printed)] == printed
    assert len(stored) - len(printed) in (0, 1)  # a put may have committed but not printed
    assert queue.put(0.0, b"{}") == len(stored)
    queue.close()


def test_steady_acks_keep_the_next_seq_exact_across_a_crash(tmp_path: Path) -> None:
    """The agent's steady rhythm (put n, then the PUBACK of n - 1) deletes a row with one
    statement and no counter write; the newest row still tells the next seq after a crash
    (a second connection opened without closing the first), and so do the counters once the
    newest row is acknowledged too."""
    path = tmp_path / "queue.db"
    queue = open_sqlite(path)
    queue.put(0.0, body(0))
    for n in range(1, 6):
        queue.put(float(n), body(n))
        queue.ack([n - 1])
    assert seqs(queue) == [5]
    crashed = open_sqlite(path)
    assert seqs(crashed) == [5]
    assert crashed.put(6.0, body(6)) == 6
    crashed.close()
    queue.close()

    queue = open_sqlite(path)
    queue.ack([5, 6])  # the newest row goes: the counters are written with it
    crashed = open_sqlite(path)
    assert seqs(crashed) == []
    assert crashed.put(7.0, body(7)) == 7
    crashed.close()
    queue.close()


def test_peek_of_the_last_put_is_served_from_memory_but_never_stale(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    queue = open_sqlite(path)
    queue.put(1.0, body(1))
    queue.put(2.0, body(2))
    [last] = queue.peek(max_samples=10, max_bytes=BIG, after_seq=0)
    assert (last.seq, last.ts, last.body) == (1, 2.0, body(2))
    queue.ack([1])
    assert queue.peek(max_samples=10, max_bytes=BIG, after_seq=0) == []
    assert queue.ack_through(0) == 1 and seqs(queue) == []
    queue.put(3.0, body(3))
    assert queue.ack_through(2) == 1
    assert queue.peek(max_samples=10, max_bytes=BIG, after_seq=1) == []
    queue.close()
    reopened = open_sqlite(path)
    assert seqs(reopened) == []
    reopened.close()


def test_a_put_with_acks_is_one_step_and_keeps_the_next_seq(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    queue = open_sqlite(path)
    queue.put(0.0, body(0))
    for n in range(1, 4):  # the lane's rhythm: sample n stored with the PUBACK of n - 1
        assert queue.put(float(n), body(n), acked=[n - 1]) == n
        assert seqs(queue) == [n] and queue.stats().depth == 1
    assert queue.put(4.0, body(4), acked=[1, 3, 77]) == 4  # not a run: acked the usual way
    assert seqs(queue) == [4]
    crashed = open_sqlite(path)  # as after a kill: the file alone tells the next seq
    assert seqs(crashed) == [4]
    assert crashed.put(5.0, body(5), acked=[4]) == 5
    crashed.close()
    queue.close()
    again = open_sqlite(path)
    assert seqs(again) == [5] and again.stats().held_from == 5
    again.close()
