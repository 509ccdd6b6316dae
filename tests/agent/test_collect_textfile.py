"""Prometheus text parsing (pure, on fixtures) and the textfile collector on real folders."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path

import pytest

from edgefleet.agent.collectors import collect_all
from edgefleet.agent.collectors.promtext import parse_exposition, parse_line, prom_metrics
from edgefleet.agent.collectors.textfile import TextfileCollector, list_prom_files, read_limited
from edgefleet.common.logs import RateLimitedLog
from edgefleet.wire.messages import METRIC_KEY_PATTERN

FIXTURES = Path(__file__).parent / "fixtures" / "textfile"
KEY_RE = re.compile(METRIC_KEY_PATTERN)


def test_node_exporter_style_file_maps_to_keys() -> None:
    parsed = parse_exposition((FIXTURES / "app.prom").read_text())
    assert parsed.bad == []
    metrics, refused = prom_metrics(parsed.samples, "textfile", 200)
    assert refused == []
    assert metrics == {
        "textfile.myapp_queue_depth[orders]": 17.0,
        "textfile.myapp_queue_depth[mail]": 0.0,
        "textfile.myapp_last_success_timestamp_seconds": 1795792580.1,
        "textfile.http_requests_total[code=200,method=GET]": 1027.0,
        "textfile.http_requests_total[code=500,method=POST]": 3.0,
        "textfile.job_errors_rate5m": 0.25,
        "textfile.myapp_build_info[1.2.3]": 1.0,  # the empty label counts as absent
    }  # NaN and +Inf are valid in the format and skipped


def test_bad_lines_are_numbered_and_the_rest_is_used() -> None:
    parsed = parse_exposition((FIXTURES / "broken.prom").read_text())
    assert [s.name for s in parsed.samples] == ["good_one", "good_two", "good_three"]
    assert [line for line, _ in parsed.bad] == [3, 5, 6, 8]
    reasons = dict(parsed.bad)
    assert reasons[5] == "value 'twelve' is not a number"
    assert reasons[8] == "label value not closed"


@pytest.mark.parametrize(
    "line",
    [
        'x{a="1"}',  # no value
        "x 1 2 3",  # too many fields
        "x 1 12.5",  # fractional timestamp
        "1x 1",  # name starts with a digit
        'x{a="1",a="2"} 1',  # label twice
        'x{a="\\q"} 1',  # unknown escape
        'x{a="1"}2',  # no space before the value
        "x 0x1f",  # hex is not a sample value
        "x 1_000",  # Python would accept it; the format does not
        'x{="v"} 1',
        "x{a=\"v\"",
    ],
)
def test_malformed_lines_are_refused(line: str) -> None:
    parsed = parse_exposition(line)
    assert parsed.samples == []
    assert len(parsed.bad) == 1


def test_escapes_timestamps_and_special_values() -> None:
    sample = parse_line('m{path="C:\\\\x\\"y\\nz"} -1.5e3 -100', 1)
    assert sample is not None
    assert sample.labels == (("path", 'C:\\x"y\nz'),)
    assert sample.value == -1500.0
    assert math.isnan(parse_exposition("m NaN").samples[0].value)
    assert parse_exposition("m -Inf").samples[0].value == -math.inf


def test_weird_names_and_labels_still_give_valid_keys() -> None:
    text = (
        'Upper:Case{x="a]b[c"} 1\n'
        f'long_label{{x="{"z" * 5000}"}} 2\n'
        f"{'n' * 55} 3\n"  # textfile. + 55 chars = 64: the longest family allowed
        f"{'n' * 56} 4\n"
        'tabs{x="a\\tb"} 5\n'
    )
    metrics, refused = prom_metrics(parse_exposition(text).samples, "textfile", 200)
    assert "textfile.upper_case[a)b(c]" in metrics
    assert f"textfile.{'n' * 55}" in metrics
    assert [line for line, _ in refused] == [4]
    assert all(KEY_RE.fullmatch(k) for k in metrics), metrics
    assert max(len(k) for k in metrics) <= 64 + 202


def test_key_bound_and_duplicates() -> None:
    text = "\n".join(f'm{{i="{i}"}} {i}' for i in range(5000)) + '\nm{i="3"} 9\n'
    metrics, refused = prom_metrics(parse_exposition(text).samples, "exec", 100)
    assert len(metrics) == 100
    assert metrics["exec.m[3]"] == 3.0
    assert len(refused) == 4901
    assert refused[-1] == (5001, "exec.m[3] given twice")


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def test_collector_reads_the_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("app.prom", "broken.prom"):
        (tmp_path / name).write_text((FIXTURES / name).read_text())
    (tmp_path / "notes.txt").write_text("ignored 1\n")
    (tmp_path / ".hidden.prom").write_text("hidden 1\n")
    (tmp_path / "dir.prom").mkdir()
    collector = TextfileCollector(folder=tmp_path)
    with caplog.at_level(logging.WARNING):
        metrics, failed = collect_all([collector], limiter=RateLimitedLog(60))
    assert failed == []
    assert metrics["textfile.myapp_queue_depth[orders]"] == 17.0
    assert metrics["textfile.good_three"] == 300.0
    assert "textfile.hidden" not in metrics
    assert metrics["textfile.status.files"] == 2.0
    assert metrics["textfile.status.errors"] == 4.0
    details = [r.__dict__["fields"]["detail"] for r in caplog.records
               if r.getMessage() == "textfile problem"]
    expected = f"{tmp_path / 'broken.prom'}:3: expected: name{{labels}} value [timestamp] (+3 more)"
    assert details == [expected]


def test_unchanged_files_are_not_read_again(tmp_path: Path) -> None:
    reads: list[Path] = []

    def counting(path: Path, limit: int) -> str:
        reads.append(path)
        return read_limited(path, limit)

    prom = tmp_path / "a.prom"
    write(prom, "a 1\n")
    collector = TextfileCollector(folder=tmp_path, read=counting)
    assert collector.collect()["textfile.a"] == 1.0
    assert collector.collect()["textfile.a"] == 1.0
    assert len(reads) == 1
    write(prom, "a 2\n")  # a new inode: parsed again
    assert collector.collect()["textfile.a"] == 2.0
    assert len(reads) == 2
    prom.unlink()
    assert "textfile.a" not in collector.collect()


def test_hostile_folder_is_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    huge = tmp_path / "00-huge.prom"
    with huge.open("w") as fh:
        fh.write("big 1\n" * 300_000)  # 1.8 MB: over the 1 MiB bound, skipped whole
    many = "\n".join(f"name_{i} {i}" for i in range(20_000))
    write(tmp_path / "01-many.prom", many)
    write(tmp_path / "02-late.prom", "late 1\n")
    for i in range(120):
        write(tmp_path / f"9{i:03}.prom", f"f{i} 1\n")
    with caplog.at_level(logging.WARNING):
        metrics = TextfileCollector(folder=tmp_path, max_keys=50).collect()
    user = [k for k in metrics if not k.startswith("textfile.status.")]
    assert len(user) == 50
    assert "textfile.big" not in metrics
    assert metrics["textfile.status.files"] == 100.0
    assert metrics["textfile.status.errors"] > 20_000
    assert any("larger than 1048576 bytes" in r.__dict__["fields"]["detail"]
               for r in caplog.records if r.getMessage() == "textfile problem")


def test_missing_folder_fails_this_collector_only(tmp_path: Path) -> None:
    collector = TextfileCollector(folder=tmp_path / "nope")
    metrics, failed = collect_all([collector], limiter=RateLimitedLog(60))
    assert (metrics, failed) == ({}, ["textfile"])
    assert TextfileCollector(folder=None).collect() == {}


def test_unreadable_file_is_skipped(tmp_path: Path) -> None:
    def reader(path: Path, limit: int) -> str:
        if path.name == "b.prom":
            raise PermissionError(13, "Permission denied", str(path))
        return read_limited(path, limit)

    write(tmp_path / "a.prom", "a 1\n")
    write(tmp_path / "b.prom", "b 1\n")
    metrics = TextfileCollector(folder=tmp_path, read=reader).collect()
    assert metrics["textfile.a"] == 1.0
    assert "textfile.b" not in metrics
    assert metrics["textfile.status.errors"] == 1.0


def test_only_newline_ends_a_line() -> None:
    parsed = parse_exposition('a{x="p\u2028q\x1cr"} 1\r\nb 2\n')
    assert parsed.bad == []
    assert [(s.line, s.labels) for s in parsed.samples] == [(1, (("x", "p\u2028q\x1cr"),)), (2, ())]


def test_a_fifo_never_blocks_the_collector(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.prom")  # skipped when listing (not a regular file)...
    write(tmp_path / "a.prom", "a 1\n")
    assert TextfileCollector(folder=tmp_path).collect()["textfile.a"] == 1.0
    with pytest.raises(ValueError, match="not a regular file"):
        read_limited(tmp_path / "pipe.prom", 100)  # ...and refused if it is swapped in later


def test_a_settled_folder_is_not_listed_again_but_its_files_are_looked_at(
    tmp_path: Path,
) -> None:
    listings: list[Path] = []

    def counting(folder: Path) -> list[tuple[str, tuple[int, int, int]]]:
        listings.append(folder)
        return list_prom_files(folder)

    prom = tmp_path / "a.prom"
    prom.write_text("a 1\n")
    old = time.time() - 100
    os.utime(tmp_path, (old, old))  # settled: nothing added or removed for a while
    collector = TextfileCollector(folder=tmp_path, list_files=counting)
    assert collector.collect()["textfile.a"] == 1.0
    assert collector.collect()["textfile.a"] == 1.0
    assert len(listings) == 1
    with prom.open("w") as fh:  # changed in place: the folder's mtime stays
        fh.write("a 2\n")
    assert collector.collect()["textfile.a"] == 2.0
    assert len(listings) == 1
    (tmp_path / "b.prom").write_text("b 1\n")  # a new file: the folder changed, listed again
    assert collector.collect()["textfile.b"] == 1.0
    assert len(listings) == 2
    os.utime(tmp_path, (old, old))
    collector.collect()
    prom.unlink()
    os.utime(tmp_path, (old, old))  # even with the folder's mtime put back: a is gone
    assert "textfile.a" not in collector.collect()
