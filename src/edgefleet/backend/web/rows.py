"""The device rows every connected page holds: the baseline of the WebSocket's delta frames.

Invariant: after a client has taken its snapshot and every update frame since, its copy of
each device's row equals this book's. So an update frame needs to carry, per changed device,
only the fields that differ from the book (``row_delta``); a device the book does not hold is
sent as a full row. The book changes only where every client sees the change:

- :meth:`RowBook.update` while an update frame is built (the frame goes to every client);
- :meth:`RowBook.drop` for a device the frame lists in ``removed``, or for a change consumed
  while no client is connected (nobody holds it; the device is sent in full next time);
- :meth:`RowBook.put` while a snapshot is made for a client that is the only one connected.

A device's CPU trend (``spark``) is sent as the points appended to the client's copy
(``spark_add``; the page keeps the last ``spark_points``), or in full when that cannot give
the new trend. Each row is serialised once, when a snapshot first needs it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SPARK = "spark"
SPARK_ADD = "spark_add"


def dumps(doc: Any) -> str:
    """Compact JSON, as every WebSocket frame is written."""
    return json.dumps(doc, separators=(",", ":"))


def spark_tail(old: Sequence[float], new: Sequence[float], keep: int) -> list[float] | None:
    """The fewest points that, appended to ``old`` and trimmed to the last ``keep``, give
    ``new`` (``[]`` when ``new == old``); None when no such points exist."""
    old, new = list(old), list(new)
    for k in range(len(new) + 1):
        if (old + new[len(new) - k:])[-keep:] == new:
            return new[len(new) - k:]
    return None


def row_delta(old: dict[str, Any], new: dict[str, Any], keep: int) -> dict[str, Any] | None:
    """``new`` as a change to ``old``: ``id`` and each field whose value differs, the trend as
    ``spark_add`` when it only grew; None when nothing differs. Rows always have the same
    fields (``shapes.device_row`` plus labels and groups)."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        if key != SPARK and old.get(key) != value:
            out[key] = value
    old_spark, new_spark = old.get(SPARK) or [], new.get(SPARK) or []
    if old_spark != new_spark:
        tail = spark_tail(old_spark, new_spark, keep)
        if tail is None:
            out[SPARK] = new_spark
        else:
            out[SPARK_ADD] = tail
    if not out:
        return None
    return {"id": new["id"], **out}


@dataclass(slots=True)
class _Entry:
    row: dict[str, Any]
    text: str | None = None  # the row serialised, made when a snapshot first needs it


class RowBook:
    """Each device's row as every connected client holds it (see the module docstring)."""

    def __init__(self, spark_points: int) -> None:
        self.spark_points = spark_points
        self.version = 0  # changes whenever a snapshot made from the book would differ
        self._entries: dict[str, _Entry] = {}
        self._uncommitted: dict[str, int] = {}  # devices whose agent reports it

    def __contains__(self, device: object) -> bool:
        return device in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def row(self, device: str) -> dict[str, Any] | None:
        entry = self._entries.get(device)
        return None if entry is None else entry.row

    def put(self, row: dict[str, Any]) -> None:
        """Hold ``row`` as it is (a snapshot for the only client, or after a frame)."""
        device = str(row["id"])
        self._entries[device] = _Entry(row)
        uncommitted = row.get("agent", {}).get("uncommitted")
        if isinstance(uncommitted, int):
            self._uncommitted[device] = uncommitted
        else:
            self._uncommitted.pop(device, None)
        self.version += 1

    def update(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """Hold ``row``; return what a frame must carry for it: the full row for a device
        not held, else its change (None: nothing changed)."""
        old = self.row(str(row["id"]))
        change = dict(row) if old is None else row_delta(old, row, self.spark_points)
        if change is not None:
            self.put(row)
        return change

    def drop(self, device: str) -> bool:
        """Forget ``device``'s row; True when it was held."""
        self._uncommitted.pop(device, None)
        if self._entries.pop(device, None) is None:
            return False
        self.version += 1
        return True

    def text(self, device: str) -> str:
        """The held row of ``device``, serialised (once per change)."""
        entry = self._entries[device]
        if entry.text is None:
            entry.text = dumps(entry.row)
        return entry.text

    def uncommitted(self) -> int | None:
        """Samples the held devices' agents have sent but the backend not committed (their
        health reports); None while none reports it."""
        return sum(self._uncommitted.values()) if self._uncommitted else None
