"""History queries and compaction of the fleet store (tables are made in ``fleet_store.py``).

Two tables hold a device's metrics:

- ``raw(device, ts, seq, body)``: one row per sample, ``body`` the metrics as compact JSON;
- ``buckets(device, start, body)``: one row per device and :data:`BUCKET_S` seconds, ``body``
  ``{"key": [n, sum, min, max], ...}`` over the samples of that bucket.

:func:`compact_chunk` moves raw rows older than a cutoff into buckets in one transaction, so
a sample is always in exactly one of the tables and a query reads both. Averaging happens in
SQL (``json_extract`` in a materialised CTE), so a day of 10 s samples is one index range scan
and never comes to Python row by row.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence

from edgefleet.backend.records import History, Source

BUCKET_S = 300
MAX_KEYS = 256
_NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
               43200, 86400)
_RAW_RANGE = "device = ? AND ts >= ? AND ts < ?"
_BUCKET_RANGE = "device = ? AND start > ? AND start < ?"  # buckets overlapping the span
_Agg = dict[int, list[list[float]]]  # bucket index -> per key [n, sum, min, max]


def choose_step(span: float, max_points: int, *, buckets: bool) -> float:
    """The smallest round bucket width that fits ``span`` into ``max_points`` points.

    With ``buckets`` the width is a multiple of :data:`BUCKET_S`, so stored buckets nest.
    """
    need = span / max(1, max_points - 1)
    if buckets:
        need = max(need, BUCKET_S)
    for step in _NICE_STEPS:
        if step >= need:
            return float(step)
    return float(math.ceil(need / 86400) * 86400)


def value_sql(key: str, table: str, index: int | None) -> tuple[str, str]:
    """SQL reading ``key`` (element ``index`` of its array) from ``table``.body, and its param.

    ``json_extract`` cannot quote a ``"`` inside a key, so such keys go through ``json_each``.
    """
    if '"' not in key:
        return "json_extract(body, ?)", f'$."{key}"' + ("" if index is None else f"[{index}]")
    element = "j.value" if index is None else f"json_extract(j.value, '$[{index}]')"
    return select_sql(
        "(SELECT", element, "FROM json_each(", table, ".body) AS j WHERE j.key = ?)"
    ), key


def select_sql(*parts: str) -> str:
    """Join SQL made here from fixed text, generated column names and ``?`` placeholders.

    Nothing a client sends is ever part of it: keys and values travel as parameters.
    """
    return " ".join(parts)


def _raw_columns(keys: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    cols, aggs, params = [], [], []
    for i, key in enumerate(keys):
        expr, param = value_sql(key, "raw", None)
        cols.append(f"{expr} AS v{i}")
        aggs.append(f"count(v{i}), sum(v{i}), min(v{i}), max(v{i})")
        params.append(param)
    return cols, aggs, params


def _bucket_columns(keys: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    cols, aggs, params = [], [], []
    for i, key in enumerate(keys):
        for part, name in enumerate(("n", "s", "lo", "hi")):
            expr, param = value_sql(key, "buckets", part)
            cols.append(f"{expr} AS {name}{i}")
            params.append(param)
        aggs.append(f"sum(n{i}), sum(s{i}), min(lo{i}), max(hi{i})")
    return cols, aggs, params


def _aggregate(
    conn: sqlite3.Connection, table: str, keys: Sequence[str], *, step: float,
    where: tuple[int, float, float], into: _Agg,
) -> int:
    """Add ``table``'s rows in range, averaged per ``step``, to ``into``; return rows used."""
    raw = table == "raw"
    cols, aggs, params = (_raw_columns if raw else _bucket_columns)(keys)
    time_col, cond = ("ts", _RAW_RANGE) if raw else ("start", _BUCKET_RANGE)
    sql = select_sql(
        "WITH x AS MATERIALIZED (SELECT", ", ".join([f"CAST({time_col} / ? AS INTEGER) AS b",
                                                      *cols]),
        "FROM", table, "WHERE", cond, ") SELECT", ", ".join(["b", "count(*)", *aggs]),
        "FROM x GROUP BY b",
    )
    used = 0
    for b, count, *figures in conn.execute(sql, (step, *params, *where)):
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


def find_keys(conn: sqlite3.Connection, dev: int, start: float, end: float) -> list[str]:
    """The metric keys of the newest sample (or bucket) of ``dev`` in ``[start, end)``."""
    row = conn.execute(
        select_sql("SELECT body FROM raw WHERE", _RAW_RANGE, "ORDER BY ts DESC LIMIT 1"),
        (dev, start, end),
    ).fetchone() or conn.execute(
        select_sql("SELECT body FROM buckets WHERE", _BUCKET_RANGE,
                   "ORDER BY start DESC LIMIT 1"),
        (dev, start - BUCKET_S, end),
    ).fetchone()
    return [] if row is None else sorted(json.loads(row[0]))


def present_keys(
    conn: sqlite3.Connection, dev: int, keys: Sequence[str], span: tuple[float, float], *,
    buckets: bool,
) -> list[str]:
    """The ``keys`` that occur in ``dev``'s rows over ``span``, in their order.

    A key costs a lookup per row, and a key with a ``"`` a ``json_each`` scan per row: a
    request for hundreds of unknown or odd keys would scan the range hundreds of times for
    nothing. Keys of the newest row are present (one indexed row); the rest are checked
    together in ONE pass over the range, so unknown keys cost one scan in all.
    """
    newest = set(find_keys(conn, dev, *span))
    rest = [key for key in keys if key not in newest]
    if not rest:
        return list(keys)
    ranges = [("raw", _RAW_RANGE, span[0])]
    if buckets:
        ranges.append(("buckets", _BUCKET_RANGE, span[0] - BUCKET_S))
    found: set[str] = set()
    for table, cond, low in ranges:
        sql = select_sql("SELECT DISTINCT j.key FROM", table, ", json_each(", table,
                         ".body) AS j WHERE", cond, "AND j.key IN (SELECT value FROM json_each(?))")
        found.update(key for (key,) in conn.execute(sql, (dev, low, span[1], json.dumps(rest))))
    return [key for key in keys if key in newest or key in found]


def read_history(
    conn: sqlite3.Connection, dev: int, device: str, *, span: tuple[float, float],
    keys: Sequence[str], max_points: int, watermark: float,
) -> History:
    """Series of ``keys`` over ``span``; see :class:`History` for the shape.

    Raw samples, one point each, when they are all in ``raw`` and no more than
    ``max_points``; else averages over :func:`choose_step` buckets, read from both tables.
    """
    if len(keys) > MAX_KEYS:
        raise ValueError(f"at most {MAX_KEYS} keys per history query, not {len(keys)}")
    old = span[0] < watermark
    wanted, keys = keys, present_keys(conn, dev, keys, span, buckets=old)
    history = _read(conn, dev, device, span=span, keys=keys, max_points=max_points, old=old)
    for key in wanted:  # absent keys: a None per point, without reading them row by row
        for column in (history.avg, history.min, history.max):
            column.setdefault(key, [None] * len(history.ts))
    return history


def _read(
    conn: sqlite3.Connection, dev: int, device: str, *, span: tuple[float, float],
    keys: Sequence[str], max_points: int, old: bool,
) -> History:
    start, end = span
    if not old:
        (count,) = conn.execute(select_sql("SELECT count(*) FROM raw WHERE", _RAW_RANGE),
                                (dev, start, end)).fetchone()
        if count <= max_points:
            return _raw_points(conn, dev, device, span, keys)
    step = choose_step(end - start, max_points, buckets=old)
    agg: _Agg = {}
    from_raw = _aggregate(conn, "raw", keys, step=step, where=(dev, start, end), into=agg)
    from_buckets = _aggregate(conn, "buckets", keys, step=step,
                              where=(dev, start - BUCKET_S, end), into=agg) if old else 0
    source: Source = ("mixed" if from_raw and from_buckets else "raw" if from_raw
                      else "buckets" if from_buckets else "none")
    return columns(device, span, keys, step=step, source=source, agg=agg)


def _raw_points(
    conn: sqlite3.Connection, dev: int, device: str, span: tuple[float, float],
    keys: Sequence[str],
) -> History:
    cols, _, params = _raw_columns(keys)
    rows = conn.execute(
        select_sql("SELECT ts,", ", ".join(cols) or "NULL", "FROM raw WHERE", _RAW_RANGE,
                   "ORDER BY ts, seq"),
        (*params, dev, *span),
    ).fetchall()
    values = {key: [row[i + 1] for row in rows] for i, key in enumerate(keys)}
    return History(device, span[0], span[1], 0.0, "raw" if rows else "none",
                   [row[0] for row in rows], values,
                   {k: list(v) for k, v in values.items()}, {k: list(v) for k, v in values.items()})


def columns(
    device: str, span: tuple[float, float], keys: Sequence[str], *, step: float,
    source: Source, agg: _Agg,
) -> History:
    """A :class:`History` of the averaged ``agg`` (bucket index -> per key figures)."""
    order = sorted(agg)
    avg: dict[str, list[float | None]] = {key: [] for key in keys}
    low: dict[str, list[float | None]] = {key: [] for key in keys}
    high: dict[str, list[float | None]] = {key: [] for key in keys}
    for b in order:
        for key, (n, total, lo, hi) in zip(keys, agg[b], strict=True):
            avg[key].append(total / n if n else None)
            low[key].append(lo if n else None)
            high[key].append(hi if n else None)
    return History(device, span[0], span[1], step, source, [b * step for b in order], avg, low,
                   high)


def compact_chunk(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """Roll about ``limit`` of the oldest raw rows with ``ts < cutoff`` into buckets.

    Returns how many rows moved (0 when none are left). The caller runs this inside a
    transaction; ``cutoff`` is a multiple of BUCKET_S. Rows go by ts through the ``raw_ts``
    index, so the pages freed are mostly contiguous.
    """
    row = conn.execute(
        "SELECT ts FROM raw WHERE ts < ? ORDER BY ts LIMIT 1 OFFSET ?", (cutoff, limit - 1)
    ).fetchone()
    cond, bound = ("ts <= ?", row[0]) if row is not None else ("ts < ?", cutoff)
    fresh: dict[tuple[int, int], dict[str, list[float]]] = {}
    rows = conn.execute(
        select_sql("SELECT device, ts, body FROM raw INDEXED BY raw_ts WHERE", cond), (bound,)
    )
    for dev, ts, body in rows:
        count_into(fresh.setdefault((dev, int(ts // BUCKET_S) * BUCKET_S), {}), json.loads(body))
    for (dev, start), figures in fresh.items():
        old = conn.execute(
            "SELECT body FROM buckets WHERE device = ? AND start = ?", (dev, start)
        ).fetchone()
        if old is not None:
            merge_into(figures, json.loads(old[0]))
    conn.executemany(
        "INSERT OR REPLACE INTO buckets (device, start, body) VALUES (?, ?, ?)",
        [(dev, start, json.dumps(body, separators=(",", ":")))
         for (dev, start), body in fresh.items()],
    )
    return int(conn.execute(select_sql("DELETE FROM raw WHERE", cond), (bound,)).rowcount)


def count_into(into: dict[str, list[float]], metrics: dict[str, float]) -> None:
    """Count one sample's metrics into a bucket's ``{key: [n, sum, min, max]}``."""
    for key, value in metrics.items():
        slot = into.get(key)
        if slot is None:
            into[key] = [1, value, value, value]
        else:
            slot[0] += 1
            slot[1] += value
            if value < slot[2]:
                slot[2] = value
            elif value > slot[3]:
                slot[3] = value


def merge_into(into: dict[str, list[float]], old: dict[str, list[float]]) -> None:
    """Add the figures of an older bucket body ``old`` into ``into``."""
    for key, (n, total, low, high) in old.items():
        mine = into.get(key)
        if mine is None:
            into[key] = [n, total, low, high]
        else:
            into[key] = [mine[0] + n, mine[1] + total, min(mine[2], low), max(mine[3], high)]
