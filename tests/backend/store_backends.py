"""The fleet store suite runs against both stores: ``open_store`` is a factory fixture with
params ``sqlite`` and ``postgres``; every call opens a store on the SAME database (the
test's file, or the test's own schema in one PostgreSQL started once per session), so
reopening after ``close()`` sees what was stored. Import the fixtures you use:
``from tests.backend.store_backends import open_store, postgres, store  # noqa: F401``.
"""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """One PostgreSQL for the session; each test works in a schema of its own."""
    with Postgres(tmp_path_factory.mktemp("pg")) as pg:
        yield pg


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
