"""Errors carry what the caller needs: a bug anywhere in the ingest path stops the backend
with status 1 (its supervisor restarts it; nothing it did not store was acknowledged), a
disk or broker error is retried with a bound and logged, and only errors of the data are
quarantined."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.backend.store_backends import store_class

from backend.test_service import Start, start, stored, until  # noqa: F401
from edgefleet.backend.ingest.handler import Ingest
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.runtime import BackendFailedError
from edgefleet.backend.store.contract import FleetStoreContract
from edgefleet.backend.store.writer import error_kind, is_transient
from edgefleet.errors import TransportError


def test_errors_are_sorted_into_transient_data_and_bug() -> None:
    for exc in (sqlite3.OperationalError("database is locked"), OSError(28, "No space left"),
                sqlite3.DatabaseError("database disk image is malformed")):
        assert is_transient(exc) and error_kind(exc) == "transient", exc
    for exc in (OverflowError("Python int too large"), ValueError("nan"),
                UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogates not allowed"),
                sqlite3.IntegrityError("NOT NULL"), sqlite3.DataError("string or blob too big")):
        assert error_kind(exc) == "data", exc
    for exc in (TypeError("unsupported operand"), KeyError("device"), AttributeError("x"),
                sqlite3.ProgrammingError("Incorrect number of bindings")):
        assert error_kind(exc) == "bug", exc


async def test_a_bug_in_ingest_stops_the_backend_loudly_and_acks_nothing_unstored(
    start: Start, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    r = await start()
    r.send("dev-a", 0)
    await until(lambda: r.t.acked == [("dev-a", 0)])
    real = Ingest.handle

    def handle(self: Ingest, topic: str, payload: bytes, now: float) -> Any:
        if b'"seq":1' in payload.replace(b" ", b""):
            raise TypeError("a bug in ingest")
        return real(self, topic, payload, now)

    monkeypatch.setattr(Ingest, "handle", handle)
    with caplog.at_level(logging.CRITICAL, logger="edgefleet.backend.runtime"):
        r.send("dev-a", 1)
        with pytest.raises(BackendFailedError, match="ingest: TypeError"):
            await asyncio.wait_for(r.task, 15)
    [rec] = [x for x in caplog.records if x.getMessage() == "backend task failed; stopping"]
    assert rec.exc_info is not None  # the traceback is in the log
    assert r.t.acked == [("dev-a", 0)]  # seq 1 stays at the broker for the next process
    assert stored(tmp_path / "fleet.db") == {"dev-a": [0]}


async def test_a_bug_in_the_store_is_not_quarantined_but_stops_the_backend(
    start: Start, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cls = store_class()
    real = cls.add_samples

    def add_samples(self: FleetStoreContract, samples: Sequence[AcceptedSample],
                    **kw: Any) -> int:
        if any(s.seq == 1 for s in samples):
            raise AttributeError("'NoneType' object has no attribute 'id'")
        return real(self, samples, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "add_samples", add_samples)
    r = await start()
    r.send("dev-a", 0)
    await until(lambda: r.t.acked == [("dev-a", 0)])
    r.send("dev-a", 1)
    with pytest.raises(BackendFailedError, match="AttributeError"):
        await asyncio.wait_for(r.task, 15)
    assert r.b.quarantine.total == 0
    assert r.t.acked == [("dev-a", 0)]


async def test_a_store_failing_past_its_bound_stops_the_backend_and_acks_nothing(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    def add_samples(self: FleetStoreContract, samples: Sequence[AcceptedSample],
                    **kw: Any) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store_class(), "add_samples", add_samples)
    r = await start(store_give_up_s=0.3)
    r.b.writer.backoff_max_s = 0.05
    r.send("dev-a", 0)
    with pytest.raises(BackendFailedError, match=r"storing has failed for .* disk I/O error"):
        await asyncio.wait_for(r.task, 15)
    assert r.b.writer.failures_total >= 2  # retried before giving up
    assert r.t.acked == []


async def test_an_unexpected_subscribe_failure_stops_the_backend(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    r = await start(run=False)
    r.t.subscribe_error = RuntimeError("bug in the subscription")
    with (caplog.at_level(logging.CRITICAL, logger="edgefleet.backend.runtime"),
          pytest.raises(BackendFailedError, match="subscribe: RuntimeError")):
        await asyncio.wait_for(r.b.run(lambda stop: stop.wait()), 15)
    [rec] = [x for x in caplog.records if x.getMessage() == "backend task failed; stopping"]
    assert rec.__dict__["fields"] == {
        "task": "subscribe", "error": "RuntimeError('bug in the subscription')"}


async def test_a_failing_subscription_is_retried_then_gives_up(
    start: Start, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_sleep(asyncio.sleep))
    r = await start(run=False, subscribe_attempts=3)
    r.t.subscribe_error = TransportError("SUBACK timed out")
    with (caplog.at_level(logging.ERROR, logger="edgefleet.backend.runtime"),
          pytest.raises(BackendFailedError, match="failed 3 times in a row")):
        await asyncio.wait_for(r.b.run(lambda stop: stop.wait()), 15)
    retries = [x for x in caplog.records if x.getMessage() == "subscribe failed; retrying"]
    assert [x.__dict__["fields"]["attempt"] for x in retries] == [1, 2, 3]


def _no_sleep(real: Any) -> Any:
    """``asyncio.sleep`` without the subscription's backoff delays (0 s sleeps only)."""
    async def sleep(delay: float, result: Any = None) -> Any:
        return await real(0 if delay >= 0.5 else delay, result)
    return sleep
