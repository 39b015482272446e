"""Publish tracking (DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH): the record exists from the moment of sending."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import chain, chord, group, states
from django.contrib.auth.models import User
from django.core.signals import request_finished
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext, override_settings

from django_celery_fulldbresult import publish
from django_celery_fulldbresult.models import TaskResultMeta
from django_celery_fulldbresult.upsert import ASYNCHRONOUS_COMMIT
from testcelery import tasks
from testcelery.celery import app

from .conftest import in_a_forked_child, server_sessions, session_of, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_published_task_is_recorded_pending_with_everything_known(parked: str) -> None:
    eta = datetime.now(UTC) + timedelta(hours=1)
    expires = eta + timedelta(hours=1)
    with CaptureQueriesContext(connection) as queries:
        result = tasks.echo.apply_async((1, [2, 3]), {"x": "y"}, queue=parked, eta=eta, expires=expires, priority=3)
    assert len(queries) == 1, "one round-trip per published task"
    record = TaskResultMeta.objects.get(task_id=result.id)
    assert record.status == states.PENDING
    assert record.task == "testcelery.tasks.echo"
    assert json.loads(record.args) == [1, [2, 3]]
    assert json.loads(record.kwargs) == {"x": "y"}
    assert record.queue == parked
    assert record.routing_key == parked
    assert record.priority == 3
    assert abs((record.eta - eta).total_seconds()) < 0.01
    assert abs((record.expires - expires).total_seconds()) < 0.01
    assert record.date_submitted is not None
    assert record.date_done == record.date_submitted
    assert record.date_started is None


def test_send_task_by_name_is_recorded(parked: str) -> None:
    result = app.send_task("some.other.service.task", args=[1], kwargs={"a": 2}, queue=parked)
    record = TaskResultMeta.objects.get(task_id=result.id)
    assert record.task == "some.other.service.task"
    assert json.loads(record.args) == [1]


@override_settings(DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH=False)
def test_nothing_at_all_is_done_when_the_setting_is_off(parked: str) -> None:
    with CaptureQueriesContext(connection) as queries:
        result = tasks.add.apply_async((1, 2), queue=parked)
    assert len(queries) == 0
    assert not TaskResultMeta.objects.filter(task_id=result.id).exists()


def test_ignored_tasks_get_no_record(parked: str) -> None:
    ignored = [
        tasks.ignored.apply_async((1,), queue=parked),
        tasks.add.apply_async((1, 2), queue=parked, ignore_result=True),
        app.send_task("testcelery.tasks.ignored", args=[1], queue=parked),
    ]
    kept = tasks.add.apply_async((1, 2), queue=parked)
    assert not TaskResultMeta.objects.filter(task_id__in=[r.id for r in ignored]).exists()
    assert TaskResultMeta.objects.filter(task_id=kept.id).exists()


def test_group_members_and_chord_header_are_recorded_with_their_group(parked: str) -> None:
    result = group(tasks.add.s(i, i) for i in range(5)).apply_async(queue=parked)
    members = TaskResultMeta.objects.filter(group_id=result.id)
    assert members.count() == 5
    assert sorted(json.loads(m.args)[0] for m in members) == [0, 1, 2, 3, 4]


def test_every_task_of_a_canvas_has_its_record_with_lineage(worker: Any) -> None:
    flow = chain(tasks.add.s(1, 1), tasks.add.s(2), chord([tasks.add.si(i, 0) for i in range(3)], tasks.tsum.s()))
    result = flow.apply_async()
    assert result.get(timeout=60) == 3
    records = TaskResultMeta.objects.all()
    assert {r.status for r in records} == {states.SUCCESS}
    # 2 chain links + 3 chord members + the chord body, all recorded at publish time.
    assert records.filter(date_submitted__isnull=False).count() == records.count() == 6
    first = TaskResultMeta.objects.get(task="testcelery.tasks.add", args="[1, 1]")
    assert records.exclude(task_id=first.task_id).filter(root_id=first.task_id).count() == 5


def test_a_retry_republish_updates_retries_and_eta(worker: Any) -> None:
    result = tasks.flaky.apply_async(kwargs={"fail_times": 1, "countdown": 30})

    def waiting() -> bool:
        record = TaskResultMeta.objects.filter(task_id=result.id).first()
        return record is not None and record.status == states.RETRY and record.eta is not None

    wait_for(waiting, timeout=30)
    record = TaskResultMeta.objects.get(task_id=result.id)
    assert record.retries == 1
    assert record.eta > datetime.now(UTC) + timedelta(seconds=20)
    assert record.date_submitted is not None
    result.revoke()


def test_the_workers_record_wins_over_a_late_publish_write() -> None:
    """Insert-if-absent: a publish write arriving after the worker's never changes it."""
    app.backend.store_result("late-publish", 42, states.SUCCESS)
    from django_celery_fulldbresult.upsert import record_published

    now = datetime.now(UTC)
    record_published(connection, [{"task_id": "late-publish", "task": "x", "status": states.PENDING, "date_done": now}])
    record = TaskResultMeta.objects.get(task_id="late-publish")
    assert record.status == states.SUCCESS
    assert record.result == 42


@pytest.mark.parametrize("path", ["sql", "portable"])
def test_the_first_submission_time_is_kept_whatever_the_order_of_the_writes(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_celery_fulldbresult import upsert

    write = upsert.record_published if path == "sql" else upsert._record_published_portable
    first = datetime.now(UTC).replace(microsecond=0)
    row = {"task_id": "twice", "task": "testcelery.tasks.add", "status": states.PENDING, "date_done": first}
    # A group member retried before the group's write landed: Task.retry()'s re-publish comes first...
    write(connection, [{**row, "retries": 1, "date_submitted": first + timedelta(seconds=5)}])
    # ... then the group's write, with the first publication's time.
    write(connection, [{**row, "retries": 0, "date_submitted": first}])
    record = TaskResultMeta.objects.get(task_id="twice")
    assert (record.date_submitted, record.retries) == (first, 1)
    write(connection, [{**row, "retries": 2, "date_submitted": first + timedelta(seconds=9)}])
    record = TaskResultMeta.objects.get(task_id="twice")
    assert (record.date_submitted, record.retries) == (first, 2)


def test_a_rolled_back_transaction_keeps_the_record_of_the_sent_message(worker: Any) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        User.objects.create(username="rolled-back")
        result = tasks.add.delay(20, 22)
        if connection.vendor != "sqlite":
            # Written on its own connection: visible outside the open transaction.
            # (SQLite has one writer: there it is written in this transaction.)
            assert _visible_elsewhere(result.id)
        raise RuntimeError("roll back")
    assert not User.objects.filter(username="rolled-back").exists()
    assert result.get(timeout=30) == 42
    record = TaskResultMeta.objects.get(task_id=result.id)
    assert record.status == states.SUCCESS
    if connection.vendor != "sqlite":
        assert record.date_submitted is not None


def test_a_committed_transaction_records_the_task(worker: Any) -> None:
    with transaction.atomic():
        User.objects.create(username="committed")
        result = tasks.add.delay(1, 1)
    assert result.get(timeout=30) == 2
    assert TaskResultMeta.objects.get(task_id=result.id).date_submitted is not None


def test_an_open_transaction_never_holds_up_the_worker(worker: Any) -> None:
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has one writer: an open write transaction holds up every other writer")
    with transaction.atomic():
        User.objects.create(username="still-open")
        result = tasks.add.delay(2, 2)
        # The caller's transaction is still open while the worker writes.
        assert result.get(timeout=30) == 4
    assert TaskResultMeta.objects.get(task_id=result.id).status == states.SUCCESS


def test_a_failed_bookkeeping_write_is_logged_and_the_task_is_still_sent(
    parked: str, caplog: pytest.LogCaptureFixture
) -> None:
    table = connection.ops.quote_name(TaskResultMeta._meta.db_table)
    hidden = connection.ops.quote_name("fulldbresult_hidden")
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {hidden}")
    try:
        with caplog.at_level(logging.ERROR, logger="django_celery_fulldbresult.publish"):
            result = tasks.add.apply_async((1, 2), queue=parked)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {hidden} RENAME TO {table}")
    assert f"Could not record the publication of task {result.id}" in caplog.text
    with app.connection_for_write() as conn:
        message = conn.SimpleQueue(parked, no_ack=True).get(timeout=10)
    assert message.headers["id"] == result.id


def _visible_elsewhere(task_id: str) -> bool:
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            table = other.ops.quote_name(TaskResultMeta._meta.db_table)
            cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE task_id = %s", [task_id])
            return bool(cursor.fetchone()[0])
    finally:
        other.close()


@override_settings(DJANGO_CELERY_FULLDBRESULT_PUBLISH_SYNCHRONOUS_COMMIT=False)
def test_an_asynchronous_publish_commit_is_one_round_trip_and_changes_no_session(parked: str) -> None:
    with CaptureQueriesContext(connection) as queries:
        result = tasks.add.apply_async((1, 2), queue=parked)
    assert len(queries) == 1
    assert _visible_elsewhere(result.id), "committed when apply_async returns"
    if connection.vendor != "postgresql":
        assert queries[0]["sql"].startswith("INSERT"), "PostgreSQL only: elsewhere nothing changes"
        return
    assert queries[0]["sql"].startswith(ASYNCHRONOUS_COMMIT + "INSERT")
    with connection.cursor() as cursor:
        # SET LOCAL applies to the implicit transaction of the statements sent together...
        cursor.execute(ASYNCHRONOUS_COMMIT + "SELECT current_setting('synchronous_commit')")
        if cursor.description is None:  # psycopg 3 keeps each statement's result: the SET's first
            cursor.nextset()
        assert cursor.fetchone()[0] == "off"
        # ... and to nothing after it.
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
    with transaction.atomic():
        inside = tasks.add.apply_async((3, 4), queue=parked)
        assert _visible_elsewhere(inside.id), "the record's own connection, outside this transaction"
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on", "the caller's transaction commits as it always did"


async def publish_from_an_event_loop(queue: str) -> str:
    return tasks.add.apply_async((1, 2), queue=queue).id  # as an async view calling .delay() does


def test_a_task_published_from_an_event_loop_is_recorded(parked: str) -> None:
    """Django refuses queries in an event loop's thread: the record is written from a thread of the app's own."""
    task_id = asyncio.run(publish_from_an_event_loop(parked))
    assert TaskResultMeta.objects.get(task_id=task_id).status == states.PENDING


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_records_what_it_publishes_from_an_event_loop(parked: str) -> None:
    asyncio.run(publish_from_an_event_loop(parked))  # the app's thread is running in this process
    task_id = in_a_forked_child(lambda: asyncio.run(publish_from_an_event_loop(parked)))  # (that thread is not there)
    assert TaskResultMeta.objects.filter(task_id=task_id).exists()


def _session(wrapper: Any) -> int:
    driver = wrapper.connection
    return int(driver.thread_id() if wrapper.vendor == "mysql" else driver.info.backend_pid)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_neither_uses_nor_ends_the_session_that_wrote_for_an_atomic_block(parked: str) -> None:
    """Inside ``atomic()`` the record is written on a connection the thread opened for it. A child forked
    afterwards (a management command's multiprocessing pool, a master before gunicorn forks) used to inherit
    it: its writes went down the parent's socket, and with mysqlclient or psycopg2 freeing it ended the
    parent's session. Django's own connections are the forking code's business (here: forgotten in the
    child, its socket pointed at /dev/null)."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite writes inside the caller's transaction")
    with transaction.atomic():
        first = tasks.add.apply_async((0, 0), queue=parked)
    parents = _session(publish._local.connections[connection.alias])

    def child() -> str:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, connection.connection.fileno())  # what a forking server does with Django's connections
        connection.connection = None
        with transaction.atomic():
            published = tasks.add.apply_async((1, 1), queue=parked)
        mine = _session(publish._local.connections[connection.alias])
        publish.close_connections()
        connection.close()
        return f"{published.id} {mine}"

    child_task, child_session = in_a_forked_child(child).split()
    time.sleep(0.2)  # (the server ends a session a moment after its goodbye)
    assert int(child_session) != parents, "the child wrote on a session of its own"
    assert parents in server_sessions(), "the parent's session is still open"
    with transaction.atomic():
        second = tasks.add.apply_async((2, 2), queue=parked)
    assert _session(publish._local.connections[connection.alias]) == parents, "and the parent writes on it"
    assert TaskResultMeta.objects.filter(task_id__in=[first.id, child_task, second.id]).count() == 3


@pytest.mark.timeout(120)
def test_a_publish_waiting_for_a_lock_its_own_transaction_holds_gives_up(
    parked: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A task's ``update_state()`` inside its atomic block, then its retry's re-publish of the same id: the
    publish write, on a connection of its own, waits for the row lock the caller's transaction holds, and the
    caller waits for the write. On PostgreSQL that never ended (no deadlock the server can see); on MariaDB it
    took 50 s, twice. The write waits a second, then is logged; the message goes out."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite writes inside the caller's transaction")
    task_id = str(uuid.uuid4())
    with transaction.atomic():
        app.backend.store_result(task_id, {"done": 1}, "PROGRESS")  # the row's lock, until this block ends
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="django_celery_fulldbresult.publish"):
            tasks.add.apply_async((1, 1), task_id=task_id, queue=parked)
        waited = time.monotonic() - started
    assert waited < 4, "a second, tried once (a lock wait that timed out is not tried again)"
    assert f"Could not record the publication of task {task_id}" in caplog.text
    assert TaskResultMeta.objects.get(task_id=task_id).status == "PROGRESS"


def test_the_connection_that_wrote_for_an_event_loop_is_closed_as_django_closes_its_own(
    parked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the end of a request when CONN_MAX_AGE says so, and by ``publish.close_connections()``."""
    if connection.vendor == "sqlite":
        pytest.skip("no server session")
    for alias in connections:
        monkeypatch.setitem(connections.settings[alias], "CONN_MAX_AGE", 0)  # Django's default
    publish.close_connections()
    asyncio.run(publish_from_an_event_loop(parked))
    session = session_of(publish._executor_thread)
    assert session in server_sessions()
    request_finished.send(sender=None)
    publish._executor().submit(lambda: None).result()  # (the close is that thread's next job)
    wait_for(lambda: session not in server_sessions(), timeout=10, message="the connection closed with the request")

    monkeypatch.undo()  # a persistent connection, which the request's end leaves open
    asyncio.run(publish_from_an_event_loop(parked))
    session = session_of(publish._executor_thread)
    request_finished.send(sender=None)
    publish._executor().submit(lambda: None).result()
    assert session_of(publish._executor_thread) == session, "CONN_MAX_AGE keeps it"
    publish.close_connections()
    wait_for(lambda: session not in server_sessions(), timeout=10, message="the connection closed")
