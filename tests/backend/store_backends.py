"""The fleet store suite runs against both stores: ``open_store`` is a factory fixture with
params ``sqlite`` and ``postgres``; every call opens a store on the SAME database (the
test's file, or the test's own schema in one PostgreSQL started once per session), so
reopening after ``close()`` sees what was stored. Import the fixtures you use:
``from tests.backend.store_backends import open_store, store  # noqa: F401`` (tests/conftest.py
provides ``postgres``: a module that imports it too would start a cluster of its own).

The rest of tests/backend runs on the store that ``--store`` (env ``EDGEFLEET_TEST_STORE``)
selects: with ``postgres``, ``conftest.py`` gives every test a database of its own (copied
from a migrated template) in ``EDGE_BACKEND_DATABASE_URL``, which the backend's settings (in
process, or ``tests/backendproc.py``'s process) read; :func:`fleet_store` opens the store a
test would otherwise open on its SQLite file.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from edgefleet.backend.store.contract import FleetStoreContract
from edgefleet.backend.store.fleet_store import FleetStore
from edgefleet.backend.store.pg_store import PgFleetStore
from edgefleet.dev.postgres import Postgres

OpenStore = Callable[..., FleetStoreContract]
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


URL_ENV = "EDGE_BACKEND_DATABASE_URL"
OPENED: list[PgFleetStore] = []
TEMPLATE = "edgefleet_template"
# a throw-away cluster: durability is what test_pg_outage.py tests, with a cluster of its own
FAST = "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """One PostgreSQL for the session; each test works in a schema or database of its own."""
    pg = Postgres(tmp_path_factory.mktemp("pg"))
    pg.prepare()
    with (pg.data / "postgresql.conf").open("a") as conf:
        conf.write(FAST)
    with pg:
        yield pg


def database_url(pg: Postgres, name: str) -> str:
    """The URL of database ``name`` in ``pg``."""
    return f"{pg.url.rsplit('/', 1)[0]}/{name}"


@pytest.fixture(scope="session")
def pg_template(postgres: Postgres) -> str:
    """A database with the fleet store's schema, the template of each test's database."""
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE}".encode())
    PgFleetStore(database_url(postgres, TEMPLATE)).close()
    return TEMPLATE


@pytest.fixture
def pg_database(postgres: Postgres, pg_template: str) -> Iterator[str]:
    """The URL of a database of this test's own (the template's copy), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {pg_template}".encode())
    yield database_url(postgres, name)
    close_opened()
    with psycopg.connect(postgres.url, autocommit=True) as conn:  # ends what the test left
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


def fleet_store(path: Path, **options: Any) -> FleetStoreContract:
    """The fleet store of this test: PostgreSQL at ``EDGE_BACKEND_DATABASE_URL`` when the run
    is on PostgreSQL (conftest.py sets it), else the SQLite file ``path``."""
    url = os.environ.get(URL_ENV)
    if not url:
        return FleetStore(path, **options)
    store = PgFleetStore(url, **options)
    OPENED.append(store)  # closed after the test (conftest.py), before its database goes
    return store


def close_opened() -> None:
    """Close the PostgreSQL stores :func:`fleet_store` opened (closing twice is harmless)."""
    while OPENED:
        OPENED.pop().close()


def schema_url(pg: Postgres) -> str:
    """The URL of a new, empty schema of ``pg`` (as the connections' search path)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}".encode())
    return f"{pg.url}?options=-csearch_path%3D{name}"


@pytest.fixture(params=STORES)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """``open_store(**options)`` -> a store on this test's database (see the module doc)."""
    opened: list[FleetStoreContract] = []
    url = schema_url(request.getfixturevalue("postgres")) if request.param == "postgres" else ""

    def make(**options: Any) -> FleetStoreContract:
        store: FleetStoreContract = (
            PgFleetStore(url, **options) if url else FleetStore(tmp_path / "fleet.db", **options))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> FleetStoreContract:
    """A store of each kind with a raw retention of an hour and a bucket retention of a day."""
    return open_store(raw_retention_s=3600, bucket_retention_s=86400)


def on_postgres() -> bool:
    """True when this test runs on PostgreSQL (``--store=postgres``)."""
    return bool(os.environ.get(URL_ENV))


def store_class() -> type[FleetStore] | type[PgFleetStore]:
    """The class of this test's store (to patch a method of it)."""
    return PgFleetStore if on_postgres() else FleetStore


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (no parameters) read from this test's store, as :func:`fleet_store`
    would open it."""
    url = os.environ.get(URL_ENV)
    if url:
        with psycopg.connect(url) as conn:
            return [tuple(row) for row in conn.execute(sql.encode()).fetchall()]
    db = sqlite3.connect(path)
    try:
        return list(db.execute(sql).fetchall())
    finally:
        db.close()
