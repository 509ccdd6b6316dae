"""History queries of the PostgreSQL fleet store; the same answers as ``history.py`` gives
on SQLite (the resolution rules, :func:`~edgefleet.backend.store.history.choose_step` and
the result's shape are shared), in PostgreSQL's SQL: ``body ->> key`` reads any key, quotes
and brackets included, with the key as a parameter; averaging happens in the database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from psycopg import Connection

from edgefleet.backend.records import History, Source
from edgefleet.backend.store.history import BUCKET_S, MAX_KEYS, choose_step, columns, select_sql

_RAW_RANGE = "device = %s AND ts >= %s AND ts < %s"
_BUCKET_RANGE = "device = %s AND start > %s AND start < %s"
_Agg = dict[int, list[list[float]]]
Conn = Connection[Any]


def q(text: str) -> bytes:
    """A statement made in this package from fixed text, generated names and ``%s``
    placeholders (never text from a client), in the form psycopg's typing accepts."""
    return text.encode()


def find_keys(conn: Conn, dev: int, start: float, end: float) -> list[str]:
    """The metric keys of the newest sample (or bucket) of ``dev`` in ``[start, end)``."""
    row = conn.execute(
        q(select_sql("SELECT body FROM raw WHERE", _RAW_RANGE, "ORDER BY ts DESC LIMIT 1")),
        (dev, start, end),
    ).fetchone() or conn.execute(
        q(select_sql("SELECT body FROM buckets WHERE", _BUCKET_RANGE,
                   "ORDER BY start DESC LIMIT 1")),
        (dev, start - BUCKET_S, end),
    ).fetchone()
    return [] if row is None else sorted(row[0])


def present_keys(
    conn: Conn, dev: int, keys: Sequence[str], span: tuple[float, float], *, buckets: bool,
) -> list[str]:
    """The ``keys`` found in ``dev``'s rows over ``span``: one pass for all unknown keys."""
    newest = set(find_keys(conn, dev, *span))
    rest = [key for key in keys if key not in newest]
    found: set[str] = set()
    ranges = [("raw", _RAW_RANGE, span[0])] + (
        [("buckets", _BUCKET_RANGE, span[0] - BUCKET_S)] if buckets else [])
    for table, cond, low in ranges if rest else []:
        sql = select_sql("SELECT DISTINCT k FROM", table, ", jsonb_object_keys(body) AS k WHERE",
                         cond, "AND k = ANY(%s)")
        found.update(key for (key,) in conn.execute(q(sql), (dev, low, span[1], rest)))
    return [key for key in keys if key in newest or key in found]


def read_history(
    conn: Conn, dev: int, device: str, *, span: tuple[float, float], keys: Sequence[str],
    max_points: int, watermark: float,
) -> History:
    """Series of ``keys`` over ``span`` (see ``history.read_history``)."""
    if len(keys) > MAX_KEYS:
        raise ValueError(f"at most {MAX_KEYS} keys per history query, not {len(keys)}")
    old = span[0] < watermark
    wanted, keys = keys, present_keys(conn, dev, keys, span, buckets=old)
    history = _read(conn, dev, device, span=span, keys=keys, max_points=max_points, old=old)
    for key in wanted:
        for column in (history.avg, history.min, history.max):
            column.setdefault(key, [None] * len(history.ts))
    return history


def _read(
    conn: Conn, dev: int, device: str, *, span: tuple[float, float], keys: Sequence[str],
    max_points: int, old: bool,
) -> History:
    start, end = span
    if not old:
        row = conn.execute(q(select_sql("SELECT count(*) FROM raw WHERE", _RAW_RANGE)),
                           (dev, start, end)).fetchone()
        if row is not None and row[0] <= max_points:
            return _raw_points(conn, dev, device, span, keys)
    step = choose_step(end - start, max_points, buckets=old)
    agg: _Agg = {}
    from_raw = _aggregate(conn, "raw", keys, step=step, where=(dev, start, end), into=agg)
    from_buckets = _aggregate(conn, "buckets", keys, step=step,
                              where=(dev, start - BUCKET_S, end), into=agg) if old else 0
    source: Source = ("mixed" if from_raw and from_buckets else "raw" if from_raw
                      else "buckets" if from_buckets else "none")
    return columns(device, span, keys, step=step, source=source, agg=agg)


def _aggregate(
    conn: Conn, table: str, keys: Sequence[str], *, step: float,
    where: tuple[int, float, float], into: _Agg,
) -> int:
    """Add ``table``'s rows in range, averaged per ``step``, to ``into``; return rows used."""
    raw = table == "raw"
    cols, aggs, params = [], [], []
    for i, key in enumerate(keys):
        if raw:
            cols.append(f"(body ->> %s)::float8 AS v{i}")
            aggs.append(f"count(v{i}), sum(v{i}), min(v{i}), max(v{i})")
            params.append(key)
        else:
            for part, name in enumerate(("n", "s", "lo", "hi")):
                cols.append(f"(body -> %s ->> {part})::float8 AS {name}{i}")
                params.append(key)
            aggs.append(f"sum(n{i}), sum(s{i}), min(lo{i}), max(hi{i})")
    time_col, cond = ("ts", _RAW_RANGE) if raw else ("start", _BUCKET_RANGE)
    sql = select_sql(
        "SELECT", ", ".join(["b", "count(*)", *aggs]), "FROM (SELECT",
        ", ".join([f"floor({time_col} / %s)::bigint AS b", *cols]), "FROM", table, "WHERE",
        cond, ") AS x GROUP BY b")
    used = 0
    for b, count, *figures in conn.execute(q(sql), (step, *params, *where)):
        used += count
        slots = into.setdefault(b, [[0.0, 0.0, math.inf, -math.inf] for _ in keys])
        for slot, i in zip(slots, range(0, len(figures), 4), strict=True):
            n, total, low, high = figures[i : i + 4]
            if n:
                slot[0] += n
                slot[1] += total
                slot[2] = min(slot[2], low)
                slot[3] = max(slot[3], high)
    return used


def _raw_points(
    conn: Conn, dev: int, device: str, span: tuple[float, float], keys: Sequence[str],
) -> History:
    cols = [f"(body ->> %s)::float8 AS v{i}" for i in range(len(keys))]
    rows = conn.execute(
        q(select_sql("SELECT ts,", ", ".join(cols) or "NULL", "FROM raw WHERE", _RAW_RANGE,
                     "ORDER BY ts, seq")),
        (*keys, dev, *span),
    ).fetchall()
    values = {key: [row[i + 1] for row in rows] for i, key in enumerate(keys)}
    return History(device, span[0], span[1], 0.0, "raw" if rows else "none",
                   [row[0] for row in rows], values,
                   {k: list(v) for k, v in values.items()}, {k: list(v) for k, v in values.items()})
