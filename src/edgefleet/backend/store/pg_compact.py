"""Compaction of the PostgreSQL store: whole old days of ``raw`` rolled into ``buckets``.

Each day partition older than the cutoff is aggregated in SQL (per device, bucket and key:
count, sum, min, max), merged with the buckets already there, and then DROPPED in the same
transaction: retention costs one ``DROP TABLE``, not a delete of every row. The partition
of the day the cutoff falls in keeps its newer rows; its older ones are deleted, as are the
old rows of ``raw_other`` (days without a partition). A sample
is always in exactly one of the tables, as on SQLite. One backend compacts at a time (an
advisory lock; the others skip the run).
"""

from __future__ import annotations

import json
import math
from typing import Any

from psycopg import Connection

from edgefleet.backend.store.history import BUCKET_S, merge_into, select_sql
from edgefleet.backend.store.pg_history import q
from edgefleet.backend.store.pg_schema import (
    COMPACT_LOCK,
    DAY_S,
    PARTITIONS,
    RAISE_WATERMARK,
    UPSERT_BUCKET,
    day_of_partition,
    partition_name,
)

Conn = Connection[Any]
_Figures = dict[tuple[int, int], dict[str, list[float]]]


def compact(conn: Conn, now: float, raw_retention_s: float,
            bucket_retention_s: float) -> tuple[int, int]:
    """Roll raw rows older than the raw retention into buckets, drop expired buckets.
    Returns ``(samples rolled, partitions dropped)``; ``(0, 0)`` when another backend is
    compacting."""
    cutoff = math.floor((now - raw_retention_s) / BUCKET_S) * BUCKET_S
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (COMPACT_LOCK,)).fetchone()
    conn.commit()
    if row is None or not row[0]:
        return 0, 0
    rolled = dropped = 0
    try:
        with conn.transaction():  # first, so queries look in buckets
            conn.execute(RAISE_WATERMARK, (str(cutoff),))
        days = sorted(d for d in (day_of_partition(r[0]) for r in conn.execute(PARTITIONS))
                      if d is not None and d * DAY_S < cutoff)
        conn.commit()
        for day in days:
            with conn.transaction():
                count, whole = _roll(conn, partition_name(day), cutoff,
                                     whole=(day + 1) * DAY_S <= cutoff)
            rolled += count
            dropped += whole
        with conn.transaction():  # the days without a partition of their own
            rolled += _roll(conn, "raw_other", cutoff, whole=False)[0]
        with conn.transaction():
            conn.execute("DELETE FROM buckets WHERE start < %s", (now - bucket_retention_s,))
    finally:
        conn.rollback()
        conn.execute("SELECT pg_advisory_unlock(%s)", (COMPACT_LOCK,))
        conn.commit()
    return rolled, dropped


def _roll(conn: Conn, name: str, cutoff: float, *, whole: bool) -> tuple[int, bool]:
    """Roll the rows of partition ``name`` before ``cutoff``; with ``whole`` (they are all
    before it) drop the partition. Returns ``(rows rolled, dropped)``."""
    cond, params = ("", ()) if whole else (" WHERE ts < %s", (cutoff,))
    row = conn.execute(q(select_sql("SELECT count(*) FROM", name, cond)), params).fetchone()
    count = 0 if row is None else int(row[0])
    fresh: _Figures = {}
    for dev, start, key, n, total, low, high in conn.execute(q(select_sql(
        f"SELECT device, floor(ts / {BUCKET_S})::bigint * {BUCKET_S}, j.key, count(*),",
        "sum(j.value::float8), min(j.value::float8), max(j.value::float8) FROM", name,
        ", jsonb_each(body) AS j", cond, "GROUP BY 1, 2, 3")), params):
        fresh.setdefault((int(dev), int(start)), {})[str(key)] = [n, total, low, high]
    if fresh:
        devs, starts = zip(*fresh, strict=True)
        for dev, start, body in conn.execute(
            "SELECT b.device, b.start, b.body FROM buckets AS b JOIN unnest(%s::bigint[], "
            "%s::bigint[]) AS u(d, s) ON b.device = u.d AND b.start = u.s",
            (list(devs), list(starts))):
            merge_into(fresh[(int(dev), int(start))], body)
        with conn.cursor() as cur:
            cur.executemany(UPSERT_BUCKET, [(dev, start, json.dumps(body, separators=(",", ":")))
                                            for (dev, start), body in fresh.items()])
    conn.execute(q(select_sql("DROP TABLE", name) if whole
                   else select_sql("DELETE FROM", name, cond)), params)
    return count, whole
