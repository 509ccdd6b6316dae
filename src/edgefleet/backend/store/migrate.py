"""Versioned schema migrations of the fleet database, for SQLite and PostgreSQL alike.

A database records the steps applied to it in ``schema_version(version)``: one row per
step. A migration is an ordered tuple of steps, step ``n`` a tuple of SQL statements that
takes the schema from version ``n - 1`` to ``n``; each step runs in one transaction with
its row, so a crash leaves the database at a whole version. A database of a newer version
than this backend knows is refused with one line (:class:`SchemaTooNewError`) and left
untouched: an older backend must not write a schema it does not understand.

Step 1 of each dialect is written with ``IF NOT EXISTS`` so that a database made before
versioning existed (the SQLite file of earlier releases) adopts version 1 as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edgefleet.errors import EdgefleetError

Steps = Sequence[Sequence[str]]
VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)"
CURRENT = "SELECT coalesce(max(version), 0) FROM schema_version"


class SchemaTooNewError(EdgefleetError):
    """The database was migrated by a newer backend than this one."""


def check_version(found: int, known: int, where: str) -> None:
    """Raise :class:`SchemaTooNewError` when ``found`` is past the ``known`` steps."""
    if found > known:
        raise SchemaTooNewError(
            f"{where} has store schema {found}, this backend knows up to {known}: "
            "run the newer backend (or restore a backup of the older schema)")


def pending(found: int, steps: Steps) -> list[tuple[int, Sequence[str]]]:
    """The steps after version ``found``, each with the version it leads to."""
    return [(number, steps[number - 1]) for number in range(found + 1, len(steps) + 1)]


def apply_steps(
    found: int, steps: Steps, run_step: Callable[[int, Sequence[str]], None]
) -> list[int]:
    """Run every step after ``found`` in order through ``run_step(version, statements)``,
    which executes the statements and records ``version`` in one transaction.
    Returns the versions applied."""
    applied = []
    for number, statements in pending(found, steps):
        run_step(number, statements)
        applied.append(number)
    return applied
