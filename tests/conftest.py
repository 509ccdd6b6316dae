"""Shared fixtures: a real Mosquitto broker with mTLS and the fleet ACL on a free port; the
fleet store tests/backend runs on (``--store``, see ``tests/backend/store_backends.py``)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tests.backend.store_backends import (  # noqa: F401 - fixtures
    URL_ENV,
    pg_database,
    pg_template,
    postgres,
)

from edgefleet.dev.broker import Mosquitto
from edgefleet.transport.mqtt import MqttClient, MqttConfig


@pytest.fixture(autouse=True)
def no_leftover_backends() -> Iterator[None]:
    """Backend processes a failing test left running are killed after it (they would hold
    ports and CPU for the rest of the run)."""
    yield
    if "backendproc" in sys.modules:
        sys.modules["backendproc"].kill_leftovers()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running Mosquitto on a free loopback port, stopped after the test."""
    with Mosquitto(tmp_path / "broker") as b:
        yield b


STORES = ("sqlite", "postgres")
BACKEND_TESTS = Path(__file__).parent / "backend"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store", default=os.environ.get("EDGEFLEET_TEST_STORE", "sqlite"),
        help="the fleet store tests/backend runs on: sqlite (default) or postgres (a database "
             "per test in a PostgreSQL of the session); env EDGEFLEET_TEST_STORE")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("store") not in STORES:
        raise pytest.UsageError(
            f"--store / EDGEFLEET_TEST_STORE must be one of {', '.join(STORES)} "
            f"(got {config.getoption('store')!r})")


def pytest_report_header(config: pytest.Config) -> str:
    return f"fleet store of tests/backend: {config.getoption('store')}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On ``--store=postgres``, tests marked ``sqlite_only("why")`` are skipped, saying why."""
    if config.getoption("store") != "postgres":
        return
    for item in items:
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None:
            why = marker.args[0] if marker.args else "a SQLite-only behaviour"
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {why}"))


@pytest.fixture(autouse=True)
def fleet_database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """On ``--store=postgres``, a tests/backend test gets a database of its own as the
    backend's database URL (``EDGE_BACKEND_DATABASE_URL``)."""
    if (request.config.getoption("store") == "postgres"
            and BACKEND_TESTS in request.node.path.parents
            and request.node.get_closest_marker("sqlite_only") is None):
        monkeypatch.setenv(URL_ENV, request.getfixturevalue("pg_database"))


ClientFactory = Callable[..., MqttClient]


@pytest.fixture
async def mqtt_client(broker: Mosquitto) -> AsyncIterator[ClientFactory]:
    """Factory for started awscrt MQTT5 clients authenticated as an identity of the CA."""
    made: list[MqttClient] = []

    def make(identity: str, **kw: object) -> MqttClient:
        cert, key, ca = broker.identity(identity)
        on_message = kw.pop("on_message", None)
        cfg = MqttConfig(
            endpoint="127.0.0.1",
            port=broker.port,
            cert_file=Path(str(kw.pop("cert_file", cert))),
            key_file=Path(str(kw.pop("key_file", key))),
            ca_file=ca,
            client_id=str(kw.pop("client_id", identity)),
            aws_limits=False,
            min_reconnect_ms=100,
            max_reconnect_ms=1000,
            **kw,  # type: ignore[arg-type]
        )
        client = MqttClient(cfg, on_message=on_message)  # type: ignore[arg-type]
        client.start()
        made.append(client)
        return client

    yield make
    await asyncio.gather(*(c.stop() for c in made))
