"""PUBLISH_IN_BACKGROUND: the publish record written by a thread of the process, after ``apply_async`` returns."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import chain, group, states
from django.db import connection, transaction
from django.db.utils import OperationalError
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from django_celery_fulldbresult import publish
from django_celery_fulldbresult.models import TaskResultMeta
from testcelery import tasks

from .conftest import ROOT, in_a_forked_child, server_sessions, session_of, wait_for, worker_env

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("background"),
]


@pytest.fixture
def background() -> Iterator[None]:
    with override_settings(DJANGO_CELERY_FULLDBRESULT_PUBLISH_IN_BACKGROUND=True):
        yield
        publish.stop_background_writer()


def test_apply_async_makes_no_query_and_the_record_follows(parked: str) -> None:
    with CaptureQueriesContext(connection) as queries:
        result = tasks.echo.apply_async((1, [2, 3]), {"x": "y"}, queue=parked, priority=3)
    assert len(queries) == 0, "the caller's thread does not touch the database"
    assert publish.flush(timeout=10)
    record = TaskResultMeta.objects.get(task_id=result.id)
    assert record.status == states.PENDING
    assert json.loads(record.args) == [1, [2, 3]]
    assert json.loads(record.kwargs) == {"x": "y"}
    assert (record.queue, record.priority) == (parked, 3)
    assert record.date_submitted is not None


def test_the_arguments_are_recorded_as_they_were_when_published(parked: str) -> None:
    numbers = [1, 2]
    result = tasks.tsum.apply_async((numbers,), queue=parked)
    numbers.append(3)  # the caller goes on with its list before the writer runs
    publish.flush(timeout=10)
    assert json.loads(TaskResultMeta.objects.get(task_id=result.id).args) == [[1, 2]]


def test_a_burst_of_publishes_and_a_group_are_all_recorded(parked: str) -> None:
    results = [tasks.add.apply_async((i, i), queue=parked) for i in range(300)]
    members = group(tasks.add.s(i, 0) for i in range(100)).apply_async(queue=parked)
    assert publish.flush(timeout=30)
    ids = [r.id for r in results]
    assert TaskResultMeta.objects.filter(task_id__in=ids, date_submitted__isnull=False).count() == 300
    assert TaskResultMeta.objects.filter(group_id=members.id, status=states.PENDING).count() == 100


def test_a_rolled_back_transaction_keeps_the_record(parked: str) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        result = tasks.add.apply_async((1, 2), queue=parked)
        raise RuntimeError("the caller's work fails after sending")
    assert publish.flush(timeout=10)
    assert TaskResultMeta.objects.filter(task_id=result.id).exists(), "the message was sent: its record stays"


@pytest.mark.skipif("os.environ.get('FULLDBRESULT_DB') != 'postgres'", reason="terminates PostgreSQL sessions")
def test_the_writer_recovers_from_a_dropped_connection(parked: str) -> None:
    first = tasks.add.apply_async((1, 2), queue=parked)
    assert publish.flush(timeout=10)
    with connection.cursor() as cursor:  # what a database restart does to the writer's connection
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    second = tasks.add.apply_async((3, 4), queue=parked)
    assert publish.flush(timeout=10)
    assert TaskResultMeta.objects.filter(task_id__in=[first.id, second.id]).count() == 2


def test_a_refused_write_is_tried_again(parked: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stands in for a database that refuses writes for a moment (a failover):
    # the first two tries fail, the third is the real write.
    real, calls = publish.write_records, []

    def flaky(rows: Any, using: str | None = None) -> None:
        calls.append(len(rows))
        if len(calls) <= 2:
            raise OperationalError("server closed the connection unexpectedly")
        real(rows, using)

    monkeypatch.setattr(publish, "write_records", flaky)
    monkeypatch.setattr(publish.BackgroundWriter, "RETRY_DELAYS", (0.01, 0.01, 0.01))
    result = tasks.add.apply_async((1, 2), queue=parked)
    assert publish.flush(timeout=10)
    assert len(calls) == 3
    assert TaskResultMeta.objects.filter(task_id=result.id).exists()


def test_a_write_that_never_succeeds_is_logged_with_the_ids_and_publishing_goes_on(
    parked: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(rows: Any, using: str | None = None) -> None:
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(publish, "write_records", refuse)
    monkeypatch.setattr(publish.BackgroundWriter, "RETRY_DELAYS", (0.01,))
    with caplog.at_level(logging.WARNING, logger="django_celery_fulldbresult.publish"):
        result = tasks.add.apply_async((1, 2), queue=parked)
        assert result.id
        assert publish.flush(timeout=10), "a failing database never holds flush() forever"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert result.id in errors[0].getMessage()


def test_rows_past_the_limit_are_logged_and_dropped_not_queued(
    parked: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(publish.BackgroundWriter, "MAX_QUEUED", 0)
    with caplog.at_level(logging.ERROR, logger="django_celery_fulldbresult.publish"):
        result = tasks.add.apply_async((1, 2), queue=parked)
    assert publish.flush(timeout=1)
    assert result.id in caplog.text
    assert not TaskResultMeta.objects.filter(task_id=result.id).exists()


def test_a_script_that_exits_right_after_publishing_leaves_the_records(parked: str) -> None:
    script = textwrap.dedent(f"""
        import django
        django.setup()
        from testcelery import tasks
        ids = [tasks.add.apply_async((i, i), queue={parked!r}).id for i in range(50)]
        print(" ".join(ids))
    """)  # no flush(): the interpreter's exit writes them
    env = worker_env(PUBLISH_IN_BACKGROUND=True)
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 50
    assert TaskResultMeta.objects.filter(task_id__in=ids, status=states.PENDING).count() == 50


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_writes_its_own_records(parked: str) -> None:
    tasks.add.apply_async((0, 0), queue=parked)  # the parent's writer is running

    def publish_and_flush() -> str:  # in the child, where the parent's thread is not
        task_id = tasks.add.apply_async((1, 1), queue=parked).id
        assert publish.flush(timeout=10)
        return task_id

    task_id = in_a_forked_child(publish_and_flush)
    assert TaskResultMeta.objects.filter(task_id=task_id).exists()


def test_a_worker_writes_what_its_tasks_published_before_their_next_task(start_worker: Any) -> None:
    start_worker(PUBLISH_IN_BACKGROUND=True)
    result = chain(tasks.add.s(1, 2), tasks.add.s(3), tasks.add.s(4)).apply_async()
    assert result.get(timeout=30) == 10
    records = wait_for(
        lambda: list(TaskResultMeta.objects.filter(root_id=result.parent.parent.id)), message="the chain's records"
    )
    assert len(records) == 3
    assert all(r.status == states.SUCCESS for r in records)
    assert all(r.date_submitted is not None for r in records), "each link's publish record was written"


def test_a_task_retry_keeps_its_eta_and_is_not_stale(start_worker: Any) -> None:
    """``raise self.retry(countdown=3600)``: the re-publish (retry count n + 1, the new ETA) and the worker's
    RETRY write (n + 1, keeps the stored ETA) race. Queued for the writer, the re-publish landed second and
    was refused by the count's order: the ETA was lost, and the waiting retry looked stale (a retry of it would
    run the task twice). A re-publish is written at once."""
    start_worker(PUBLISH_IN_BACKGROUND=True)
    result = tasks.flaky.apply_async(kwargs={"fail_times": 1, "countdown": 3600})
    wait_for(lambda: TaskResultMeta.objects.filter(task_id=result.id, status=states.RETRY).exists())
    time.sleep(1)  # well past the writer's gathering
    record = TaskResultMeta.objects.get(task_id=result.id)
    result.revoke()
    assert record.retries == 1
    assert record.eta is not None and record.eta > record.date_done + timedelta(minutes=55)
    assert not TaskResultMeta.objects.get_stale_tasks(timedelta(seconds=1)).filter(task_id=result.id).exists()


def test_flush_waits_for_the_rows_queued_before_it_not_for_later_ones(parked: str) -> None:
    import threading

    tasks.add.apply_async((0, 0), queue=parked)
    publish.flush(timeout=10)
    stop = threading.Event()

    def keep_publishing() -> None:  # another thread of a busy process
        while not stop.is_set():
            tasks.add.apply_async((1, 1), queue=parked)

    other = threading.Thread(target=keep_publishing)
    other.start()
    try:
        time.sleep(0.1)
        mine = tasks.add.apply_async((2, 2), queue=parked)
        started = time.monotonic()
        assert publish.flush(timeout=20)
        waited = time.monotonic() - started
        assert TaskResultMeta.objects.filter(task_id=mine.id).exists()
    finally:
        stop.set()
        other.join()
    assert waited < 2, f"flush() waited {waited:.1f} s: it waited for the other thread's rows too"


def test_rows_handed_to_a_stopped_writer_are_written_at_once(parked: str) -> None:
    writer = publish._background()
    assert writer is not None
    writer.stop(timeout=10)  # what the interpreter's exit, or a thread that died, leaves
    assert not writer.put([{"task_id": "x"}]), "a stopped writer takes no rows"
    result = tasks.add.apply_async((1, 2), queue=parked)  # a new writer is started
    assert publish.flush(timeout=10)
    assert TaskResultMeta.objects.filter(task_id=result.id).exists()
    publish._exiting, exiting = True, publish._exiting
    try:  # after the interpreter's exit began: written by the caller
        late = tasks.add.apply_async((3, 4), queue=parked)
        publish.stop_background_writer()
        assert TaskResultMeta.objects.filter(task_id=late.id).exists()
    finally:
        publish._exiting = exiting


def test_a_writer_inherited_from_another_process_is_replaced(parked: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # uWSGI's prefork runs no fork hooks: the child finds the parent's writer, without its thread.
    writer = publish._background()
    assert writer is not None
    monkeypatch.setattr(writer, "pid", -1)
    result = tasks.add.apply_async((1, 2), queue=parked)
    assert publish._writer is not writer
    assert publish.flush(timeout=10)
    assert TaskResultMeta.objects.filter(task_id=result.id).exists()


def wait_until_idle(writer: publish.BackgroundWriter) -> None:
    wait_for(lambda: writer._idle, timeout=10, message="the writer waiting for rows")


def test_the_writer_is_woken_once_the_message_is_sent(parked: str) -> None:
    """Not while apply_async waits for the broker: woken then, its thread would hold up the call."""
    from celery.signals import before_task_publish

    tasks.add.apply_async((0, 0), queue=parked)
    assert publish.flush(timeout=10)
    writer = publish._writer
    assert writer is not None
    wait_until_idle(writer)
    during: list[bool] = []

    def look(**kwargs: Any) -> None:  # connected after the app's handler: runs after it
        during.append(writer._wake_due)

    before_task_publish.connect(look, weak=False)
    try:
        result = tasks.add.apply_async((1, 2), queue=parked)
    finally:
        before_task_publish.disconnect(look)
    assert during == [True], "queued, not woken, before the message is sent"
    assert not writer._wake_due, "woken once it is sent"
    # Written without a flush, well before the writer's idle timeout (10 s).
    wait_for(lambda: TaskResultMeta.objects.filter(task_id=result.id).exists(), timeout=5)


def test_a_row_whose_message_was_not_sent_is_written_all_the_same(parked: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker refused the message after the handler queued its row: no wake-up comes, the writer finds it."""
    from celery.signals import after_task_publish, before_task_publish

    publish.stop_background_writer()
    monkeypatch.setattr(publish.BackgroundWriter, "IDLE_SECONDS", 2.0)
    tasks.add.apply_async((0, 0), queue=parked)  # a writer with the short idle time
    assert publish.flush(timeout=10)
    writer = publish._writer
    assert writer is not None
    wait_until_idle(writer)
    during: list[bool] = []

    def look(**kwargs: Any) -> None:
        during.append(writer._wake_due)

    after_task_publish.disconnect(dispatch_uid="django_celery_fulldbresult")  # as if sending had failed
    before_task_publish.connect(look, weak=False)
    try:
        result = tasks.add.apply_async((1, 2), queue=parked)
        assert during == [True], "queued, unwoken"
        wait_for(lambda: TaskResultMeta.objects.filter(task_id=result.id).exists(), timeout=8)
    finally:
        before_task_publish.disconnect(look)
        after_task_publish.connect(publish.on_after_task_publish, weak=False, dispatch_uid="django_celery_fulldbresult")


async def publish_from_an_event_loop(queue: str) -> None:
    tasks.add.apply_async((2, 2), queue=queue)  # written by the app's thread for event loops


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_leaves_the_parents_connections_open(parked: str) -> None:
    """The child inherits the app's threads' connection objects, not the threads: freeing them must end no session.

    mysqlclient and psycopg2 say goodbye to the server when their connection
    object is freed, in whichever process frees it (psycopg 3 checks the
    process: on PostgreSQL this passes either way).
    """
    if connection.vendor == "sqlite":
        pytest.skip("no server session")
    first = tasks.add.apply_async((0, 0), queue=parked)
    assert publish.flush(timeout=10)  # the parent's writer has its connection open
    writer = publish._writer
    assert writer is not None
    writers = session_of(writer._thread.ident)
    with override_settings(DJANGO_CELERY_FULLDBRESULT_PUBLISH_IN_BACKGROUND=False):
        asyncio.run(publish_from_an_event_loop(parked))
    executors = session_of(publish._executor_thread)
    # The child frees its copy of the parent's threads' storage at the fork,
    # and what cycles kept of it at its next collection (or at its exit).
    # (The test holds no connection object: this frame is the child's too.)
    in_a_forked_child(lambda: str(gc.collect()))
    time.sleep(0.2)  # (the server ends a session a moment after its goodbye)
    assert {writers, executors} <= server_sessions(), "the parent's sessions are still open"
    second = tasks.add.apply_async((1, 1), queue=parked)
    assert publish.flush(timeout=10)
    assert session_of(writer._thread.ident) == writers, "the writer wrote on its connection, not on a new one"
    with override_settings(DJANGO_CELERY_FULLDBRESULT_PUBLISH_IN_BACKGROUND=False):
        asyncio.run(publish_from_an_event_loop(parked))
    assert session_of(publish._executor_thread) == executors, "and so did the thread for event loops"
    assert TaskResultMeta.objects.filter(task_id__in=[first.id, second.id]).count() == 2
