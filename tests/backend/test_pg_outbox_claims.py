"""Several dispatchers on one PostgreSQL outbox (several backends, issue 17): every alert is
posted exactly once, and rows held by a backend that dies are sent by another."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest
from tests.backend.store_backends import schema_url

from edgefleet.backend.store.pg_store import PgFleetStore
from edgefleet.dev.postgres import Postgres
from edgefleet.notify import AlertDispatcher, BudgetSettings, Outbox
from edgefleet.notify.model import Alert
from edgefleet.notify.slack import SlackNotifier
from fakeslack import FakeSlack

pytestmark = pytest.mark.postgres


def alerts(n: int, now: float) -> list[Alert]:
    """``n`` firing alerts of ``n`` rules (one group, one Slack message each)."""
    return [Alert.new(kind="firing", rule=f"r{i}", device="dev-a", instance=None,
                      severity="warning", value=95.0, threshold=90.0, labels={}, summary="hot",
                      started_at=now, at=now) for i in range(n)]


NOTIFIERS: list[SlackNotifier] = []


def dispatcher(store: PgFleetStore, slack: FakeSlack) -> AlertDispatcher:
    NOTIFIERS.append(SlackNotifier(webhook_url=slack.webhook_url))
    return AlertDispatcher(outbox=Outbox(store.open_db()), group_window_s=0.0,
                           notifier=NOTIFIERS[-1],
                           poll_interval_s=0.05, budget=BudgetSettings(600.0, 0, 0))


async def test_two_dispatchers_send_each_alert_once(postgres: Postgres, tmp_path: Path) -> None:
    url = schema_url(postgres)
    stores = [PgFleetStore(url), PgFleetStore(url)]
    try:
        async with FakeSlack() as slack:
            both = [dispatcher(s, slack) for s in stores]
            for d in both:
                await d.start()
            made = alerts(60, time.time())
            for i in range(0, 60, 6):  # arriving while both dispatchers poll
                both[i % 2].submit(made[i:i + 6])
                await asyncio.sleep(0.01)
            await slack.wait_until(lambda: len(slack.event_ids()) >= 60)
            for d in both:
                await d.stop()
            while NOTIFIERS:
                await NOTIFIERS.pop().aclose()
            ids = slack.event_ids()
            assert sorted(ids) == sorted(a.event_id for a in made)  # each exactly once
            assert both[0].outbox.counts() == {"sent": 60}
            assert all(d.stats().sent_alerts > 0 for d in both)  # both took a share
    finally:
        for s in stores:
            s.close()


async def test_rows_held_by_a_dead_backend_are_sent_by_another(
    postgres: Postgres, tmp_path: Path,
) -> None:
    url = schema_url(postgres)
    store = PgFleetStore(url)
    try:
        async with FakeSlack() as slack:
            made = alerts(3, time.time())
            Outbox(store.open_db()).enqueue(made, now=time.time())
            dead = psycopg.connect(url)  # a backend in the middle of sending these
            dead.execute("SELECT event_id FROM outbox FOR UPDATE")
            d = dispatcher(store, slack)
            await d.start()
            # a whole round: the held rows are skipped, and looked at again after a pause
            # (their due time has passed: without it the loop would spin on them)
            assert await d.run_once() > 0
            assert slack.event_ids() == []
            dead.close()  # killed: its session ends, its claim with it
            await slack.wait_until(lambda: len(slack.event_ids()) == 3)
            await d.stop()
            await NOTIFIERS.pop().aclose()
            assert sorted(slack.event_ids()) == sorted(a.event_id for a in made)
    finally:
        store.close()


async def test_only_the_dispatcher_asked_to_posts_the_budget_summary(
    postgres: Postgres, tmp_path: Path,
) -> None:
    store = PgFleetStore(schema_url(postgres))
    leading = False
    try:
        async with FakeSlack() as slack:
            notifier = SlackNotifier(webhook_url=slack.webhook_url)
            d = AlertDispatcher(outbox=Outbox(store.open_db()), group_window_s=0.0,
                                notifier=notifier, budget=BudgetSettings(600.0, 1, 0),
                                summarises=lambda: leading)
            d.submit(alerts(3, time.time()))  # one posted, two over the device's budget
            await d.run_once()
            kinds = [(m.get("metadata") or {}).get("event_type") for m in slack.messages]
            assert len(kinds) == 1 and d.outbox.counts() == {"sent": 1, "suppressed": 2}
            leading = True  # e.g. this backend became the alert leader
            await d.run_once()
            kinds = [(m.get("metadata") or {}).get("event_type") for m in slack.messages]
            assert kinds[1:] == ["edgefleet_alerts_suppressed"]
            await notifier.aclose()
    finally:
        store.close()
