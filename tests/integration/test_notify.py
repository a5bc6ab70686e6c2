"""LISTEN/NOTIFY wake-ups: delivered on commit, coalesced, and survived when the connection dies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from oracle.store.notify import CHAIN_CHANNEL, NotificationWaiter, notify
from oracle.store.queue import (
    JOBS_DONE_CHANNEL,
    complete_job,
    enqueue_job,
    reclaim_expired_leases,
)
from tests.integration.test_queue import MODEL, _claim


@pytest.fixture
def waiter(database_url: str) -> Iterator[NotificationWaiter]:
    waiter = NotificationWaiter(database_url, [CHAIN_CHANNEL, JOBS_DONE_CHANNEL])
    yield waiter
    waiter.close()


def test_quiet_channels_time_out(waiter: NotificationWaiter) -> None:
    assert waiter.wait(0.05) is False


def test_a_notification_arrives_when_its_transaction_commits(
    db_engine: Engine, waiter: NotificationWaiter
) -> None:
    with db_engine.connect() as conn:
        notify(conn, CHAIN_CHANNEL, "3")
        assert waiter.wait(0.2) is False  # not yet committed
        conn.commit()
    assert waiter.wait(5) is True


def test_a_burst_of_notifications_wakes_a_few_times_not_once_each(
    db_engine: Engine, waiter: NotificationWaiter
) -> None:
    """One wake-up consumes every notification that has arrived. Postgres delivers each
    committed notification on its own, so on a loaded machine a straggler may still be
    on its way after the first wake-up and wake the waiter again: a few wake-ups for the
    burst, never one each."""
    burst = 20
    for payload in range(burst):
        with db_engine.begin() as conn:
            notify(conn, CHAIN_CHANNEL, str(payload))
    assert waiter.wait(5) is True
    stragglers = 0
    while waiter.wait(0.5):  # until half a second passes with nothing new
        stragglers += 1
    assert stragglers <= 2, f"{1 + stragglers} wake-ups for a burst of {burst}"


def test_a_finished_job_wakes_the_node(db_engine: Engine, waiter: NotificationWaiter) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    with db_engine.begin() as conn:
        enqueue_job(conn, kind="inference", request_id=7, model=MODEL, priority=1,
                    deadline=deadline, payload={})  # fmt: skip
    (job_id,) = _claim(db_engine)
    assert waiter.wait(0.1) is False  # queuing and claiming wake workers, not the node
    with db_engine.begin() as conn:
        complete_job(conn, job_id=job_id, worker_id="w1", result={"text": "Paris"})
    assert waiter.wait(5) is True


def test_a_dropped_connection_is_reopened_and_reported_as_news(
    db_engine: Engine, waiter: NotificationWaiter
) -> None:
    with db_engine.begin() as conn:
        killed = (
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            )
            .scalars()
            .all()
        )
    assert killed == [True]
    assert waiter.wait(0.5) is False  # notices the loss
    assert waiter.wait(0.05) is True  # back, and whatever it may have missed counts as news
    with db_engine.begin() as conn:
        notify(conn, CHAIN_CHANNEL)
    assert waiter.wait(5) is True


def test_a_job_buried_after_its_last_lease_ran_out_wakes_the_node(
    db_engine: Engine, waiter: NotificationWaiter
) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    with db_engine.begin() as conn:
        enqueue_job(conn, kind="inference", request_id=7, model=MODEL, priority=1,
                    deadline=deadline, payload={}, max_attempts=1)  # fmt: skip
    _claim(db_engine, worker="crashed", lease_s=0.01)
    time.sleep(0.05)
    with db_engine.begin() as conn:
        assert reclaim_expired_leases(conn) == 1
        assert conn.scalar(text("SELECT status FROM jobs")) == "dead"
    assert waiter.wait(5) is True
