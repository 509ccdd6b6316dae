"""What the PostgreSQL store adds to the shared store suite (``test_store.py`` runs against
both): schema migrations on both stores, de-duplication by the database across two
backends, day partitions and their retention, PostgreSQL's error kinds in the writer, and
the outbox and device metadata on the store's pool."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import psycopg
import pytest
from psycopg import errors
from tests.backend.store_backends import schema_url

from edgefleet.backend.ingest.dedup import SeqCursor
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.store.contract import open_store
from edgefleet.backend.store.fleet_store import FleetStore
from edgefleet.backend.store.metadata import MetadataStore
from edgefleet.backend.store.migrate import SchemaTooNewError
from edgefleet.backend.store.pg_errors import StoreConnectError, redact
from edgefleet.backend.store.pg_schema import DAY_S, MIGRATIONS
from edgefleet.backend.store.pg_store import PgFleetStore
from edgefleet.backend.store.quarantine import Quarantine
from edgefleet.backend.store.schema import SCHEMA
from edgefleet.backend.store.tx import StoreTx
from edgefleet.backend.store.writer import BatchWriter, Message, error_kind
from edgefleet.dev.broker import free_port
from edgefleet.dev.postgres import Postgres
from edgefleet.notify import Outbox
from edgefleet.notify.model import Alert

pytestmark = pytest.mark.postgres
DAY0 = 19_700 * DAY_S  # a UTC midnight


def sample(seq: int, ts: float, device: str = "dev-a", **metrics: float) -> AcceptedSample:
    return AcceptedSample(device, seq, ts, metrics or {"cpu.percent": float(seq)})


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(sql.encode())
        return cur.fetchall() if cur.description is not None else []


# -- migrations ------------------------------------------------------------------------------


def test_a_new_database_is_migrated_once_and_a_newer_one_is_refused(postgres: Postgres) -> None:
    url = schema_url(postgres)
    PgFleetStore(url).close()
    PgFleetStore(url).close()  # nothing to do the second time
    assert query(url, "SELECT version FROM schema_version ORDER BY version") == [
        (v,) for v in range(1, len(MIGRATIONS) + 1)]
    query(url, "INSERT INTO schema_version VALUES (99)")
    with pytest.raises(SchemaTooNewError, match=r"has store schema 99, this backend knows up "
                                                  rf"to {len(MIGRATIONS)}") as raised:
        PgFleetStore(url)
    assert "\n" not in str(raised.value) and "***" not in str(raised.value)


def test_a_sqlite_file_of_before_versioning_adopts_version_1_then_migrates_with_its_data(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fleet.db"
    with sqlite3.connect(path) as old:  # what the previous release made
        for statement in SCHEMA:
            old.execute(statement)
        old.execute("INSERT INTO meta VALUES ('schema', '1')")
        old.execute("INSERT INTO devices (name, first_seen, last_seen) VALUES ('old', 1, 2)")
        old.execute("INSERT INTO cursors VALUES (1, 's', 0, 9, 10, x'', 0, '[]')")
    old.close()
    store = FleetStore(path)
    assert [row.device for row in store.devices()] == ["old"]
    assert store.cursors() == {"old": SeqCursor("s", 0, 9, 10, 0, epoch=0)}  # step 2 added it
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,), (2,)]
        conn.execute("INSERT INTO schema_version VALUES (7)")
    conn.close()
    with pytest.raises(SchemaTooNewError, match="has store schema 7"):
        FleetStore(path)


def test_settings_choose_the_store_and_refuse_another_url(tmp_path: Path,
                                                          postgres: Postgres) -> None:
    sqlite_store = open_store(None, tmp_path / "fleet.db", raw_retention_s=3600)
    assert sqlite_store.kind == "sqlite"
    sqlite_store.close()
    pg_store = open_store(schema_url(postgres), tmp_path / "unused.db", raw_retention_s=3600)
    assert pg_store.kind == "postgres" and not (tmp_path / "unused.db").exists()
    pg_store.close()
    with pytest.raises(ValueError, match="must be a postgresql:// URL"):
        BackendSettings(database_url="mysql://x@y/z")
    assert BackendSettings(database_url="postgresql://u:pw@h/db").database_url is not None


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    url = f"postgresql://edgefleet:s3cret@127.0.0.1:{free_port('127.0.0.1')}/edgefleet"
    with pytest.raises(StoreConnectError, match="cannot reach PostgreSQL") as raised:
        PgFleetStore(url, connect_timeout_s=1)
    assert "s3cret" not in str(raised.value) and "\n" not in str(raised.value)
    assert redact(url).startswith("postgresql://edgefleet:***@127.0.0.1:")


# -- two backends, one database --------------------------------------------------------------


def test_two_backends_storing_the_same_samples_store_them_once(postgres: Postgres) -> None:
    url = schema_url(postgres)
    one, two = PgFleetStore(url), PgFleetStore(url)
    batch = [sample(i, DAY0 + i) for i in range(50)]
    one.add_samples(batch[:30], cursors={"dev-a": SeqCursor("s", 0, 29, 30, 0)})
    two.add_samples(batch[20:], cursors={"dev-a": SeqCursor("s", 0, 49, 50, 0)})
    two.add_samples(batch)  # a redelivery of everything
    assert query(url, "SELECT count(*), count(DISTINCT seq) FROM raw") == [(50, 50)]
    assert (one.duplicates_total, two.duplicates_total) == (0, 10 + 50)
    assert one.cursors()["dev-a"].high == 49  # whoever committed last
    assert one.history("dev-a", DAY0, DAY0 + 50).avg["cpu.percent"] == [float(i)
                                                                          for i in range(50)]
    one.close()
    two.close()


# -- partitions ------------------------------------------------------------------------------


def test_each_day_has_a_partition_and_retention_drops_whole_old_days(postgres: Postgres) -> None:
    url = schema_url(postgres)
    now = [DAY0 - 10 * DAY_S]
    store = PgFleetStore(url, raw_retention_s=DAY_S, bucket_retention_s=30 * DAY_S,
                         clock=lambda: now[0])
    early = sample(9000, DAY0 + 1, **{"mem.used_percent": 7.0})  # a clock 10 days ahead
    store.add_samples([early])
    assert partitions(url) == ["raw_other"]
    now[0] = DAY0 + 2 * DAY_S
    for day in range(3):  # 3 days, a sample every 10 minutes
        store.add_samples([sample(day * 1000 + i, DAY0 + day * DAY_S + i * 600)
                           for i in range(144)])
    assert partitions(url) == ["raw_d19700", "raw_d19701", "raw_d19702", "raw_other"]
    assert query(url, "SELECT count(*) FROM raw_d19700") == [(145,)]  # the early one moved in
    rolled = store.compact(DAY0 + 3 * DAY_S + 3600)  # cutoff: day 2 at 01:00
    assert rolled == 144 * 2 + 6 + 1
    assert partitions(url) == ["raw_d19702", "raw_other"]  # days 0 and 1 dropped
    hist = store.history("dev-a", DAY0, DAY0 + 3 * DAY_S, keys=["cpu.percent"], max_points=4)
    assert hist.source == "mixed" and len(hist.ts) == 3  # a day per point, every sample in
    assert hist.avg["cpu.percent"] == [71.5, 1071.5, 2071.5]
    store.add_samples([sample(5, DAY0 + 5)])  # a late sample for a dropped day: made again
    assert store.compact(DAY0 + 3 * DAY_S + 3600) == 1
    day0 = store.history("dev-a", DAY0, DAY0 + DAY_S, keys=["cpu.percent", "mem.used_percent"],
                         max_points=2)
    assert day0.max["cpu.percent"] == [143.0]  # merged into the day's buckets
    assert day0.avg["mem.used_percent"] == [7.0]
    store.close()


def test_samples_of_any_valid_time_make_no_more_partitions(postgres: Postgres) -> None:
    url = schema_url(postgres)
    store = PgFleetStore(url, clock=lambda: DAY0)
    spread = [sample(i, i * 7.0 * DAY_S + 1) for i in range(2000)]  # 1970 to 2008, a week apart
    store.add_samples([*spread, sample(2000, 32503680000.0), sample(2001, DAY0 + 60)])
    assert partitions(url) == ["raw_d19700", "raw_other"]  # today's, and one for the rest
    assert store.latest("dev-a") == {"cpu.percent": 2000.0}  # year 3000
    assert store.history("dev-a", 0, 14 * DAY_S).avg["cpu.percent"] == [0.0, 1.0]
    store.close()


def partitions(url: str) -> list[str]:
    rows = query(url, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                      "WHERE i.inhparent = 'raw'::regclass ORDER BY 1")
    return [str(row[0]) for row in rows]


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "kind"), [
    (errors.AdminShutdown("terminating connection due to administrator command"), "transient"),
    (errors.CannotConnectNow("the database system is starting up"), "transient"),
    (errors.TooManyConnections("sorry, too many clients already"), "transient"),
    (errors.SerializationFailure("could not serialize access"), "transient"),
    (errors.DeadlockDetected("deadlock detected"), "transient"),
    (psycopg.OperationalError("server closed the connection unexpectedly"), "transient"),
    (errors.CheckViolation('no partition of relation "raw" found for row'), "transient"),
    (errors.NumericValueOutOfRange("bigint out of range"), "data"),
    (errors.InvalidTextRepresentation("invalid input syntax for type json"), "data"),
    (errors.UniqueViolation("duplicate key"), "data"),
    (errors.UndefinedColumn('column "x" does not exist'), "bug"),
    (psycopg.ProgrammingError("the query has 2 placeholders but 1 parameters"), "bug"),
])
def test_postgres_errors_map_onto_the_writer_kinds(exc: Exception, kind: str) -> None:
    assert error_kind(exc) == kind


def test_values_postgres_refuses_are_data_errors_and_only_their_message_is_set_aside(
    postgres: Postgres, tmp_path: Path,
) -> None:
    store = PgFleetStore(schema_url(postgres))
    with pytest.raises(psycopg.Error) as too_big:
        store.add_samples([sample(2**63, DAY0)])
    with pytest.raises(psycopg.Error) as nul:
        store.add_samples([AcceptedSample("dev-a", 1, DAY0, {"bad\x00key": 1.0})])
    assert error_kind(too_big.value) == error_kind(nul.value) == "data"
    writer = BatchWriter(store, Quarantine(tmp_path / "q.db"), retries=0, backoff_max_s=0.01)
    messages = [Message(f"t/{i}", b"{}", "dev-a", [sample(i, DAY0 + i)]) for i in range(3)]
    messages.insert(1, Message("t/bad", b"bad", "dev-a", [sample(2**63, DAY0 + 9)]))
    asyncio.run(writer.write(messages, cursors={}, devices=[], save=None))
    assert writer.quarantine.total == 1
    hist = store.history("dev-a", DAY0, DAY0 + 10, keys=["cpu.percent"])
    assert hist.avg["cpu.percent"] == [0.0, 1.0, 2.0]
    store.close()


def test_connections_the_server_ended_are_replaced_without_an_error(postgres: Postgres) -> None:
    url = schema_url(postgres)
    store = PgFleetStore(url)
    store.add_samples([sample(0, DAY0)])
    ended = query(url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE application_name = '' AND pid <> pg_backend_pid() "
                       "AND datname = 'edgefleet'")
    assert ended[0][0] >= 1
    store.add_samples([sample(1, DAY0 + 1)])  # the pool checks its connections first
    assert store.latest("dev-a") == {"cpu.percent": 1.0}
    store.close()


# -- outbox and metadata on the store's pool -------------------------------------------------


def alert(device: str, n: int) -> Alert:
    return Alert.new(kind="firing", rule="cpu_high", device=device, instance=None,
                     severity="warning", value=90.0, threshold=80.0, labels={},
                     summary="cpu high", started_at=DAY0 + n, at=DAY0 + n)


def test_outbox_rows_commit_with_the_batch_and_dispatch_from_postgres(
    postgres: Postgres,
) -> None:
    store = PgFleetStore(schema_url(postgres))
    outbox = Outbox(store.open_db())
    first, second = alert("dev-a", 1), alert("dev-b", 2)

    def stage(tx: StoreTx) -> None:
        Outbox.add(tx.conn, [first, second, first], now=DAY0)

    store.add_samples([sample(0, DAY0)], also=stage)
    assert [e.alert.event_id for e in outbox.due(DAY0)] == [first.event_id, second.event_id]

    def failing(tx: StoreTx) -> None:
        Outbox.add(tx.conn, [alert("dev-c", 3)], now=DAY0)
        raise RuntimeError("the batch fails after staging")

    with pytest.raises(RuntimeError):
        store.add_samples([sample(1, DAY0 + 1)], also=failing)
    assert outbox.counts() == {"pending": 2}  # rolled back with the batch
    outbox.mark_sent([first.event_id], DAY0 + 5)
    assert outbox.state_of(first.event_id) == "sent" and outbox.depth() == 1
    assert outbox.sent_since(DAY0) == [("dev-a", "cpu_high", DAY0 + 5)]
    store.close()


def test_labels_and_forgetting_with_purge_on_postgres(postgres: Postgres) -> None:
    store = PgFleetStore(schema_url(postgres))
    store.add_samples([sample(i, DAY0 + i) for i in range(5)])
    meta = MetadataStore(store.open_db())
    assert meta.set_labels("dev-a", {"site": "north", "rack": "r1"}, ["none"]) == {
        "site": "north", "rack": "r1"}
    assert meta.labels() == {"dev-a": {"site": "north", "rack": "r1"}}
    assert meta.forget("dev-a", DAY0 + 10, purge=True) == 5
    assert meta.forget("dev-a", DAY0 + 20, purge=False) == 0  # again: an upsert
    assert meta.forgotten() == {"dev-a": DAY0 + 20} and meta.labels() == {}
    assert store.latest("dev-a") == {}
    meta.returned("dev-a")
    assert meta.forgotten() == {}
    store.close()
