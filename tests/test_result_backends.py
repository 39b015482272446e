"""The result backend with a real worker process: what a user finds in the table."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from celery import chord, group, states
from django.db import connection
from django.test import SimpleTestCase, override_settings

from django_celery_fulldbresult.models import TaskResultMeta
from django_celery_fulldbresult.upsert import GUARD_VARIABLE, STATE_FUNCTION
from testcelery import tasks
from testcelery.celery import app

from .conftest import wait_for

pytestmark = pytest.mark.worker


def test_success_failure_and_retry_are_recorded_with_real_arguments(worker: Any) -> None:
    when = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    ok = tasks.echo.delay(1, "two", when, Decimal("3.50"), flag=True, nested={"a": [1, 2]})
    bad = tasks.fail.delay("it broke")
    flaky = tasks.flaky.delay(fail_times=1)

    assert ok.get(timeout=30) == {
        "args": [1, "two", when, Decimal("3.50")],
        "kwargs": {"flag": True, "nested": {"a": [1, 2]}},
    }
    with pytest.raises(ValueError, match="it broke"):
        bad.get(timeout=30)
    assert flaky.get(timeout=30) == 1

    record = TaskResultMeta.objects.get(task_id=ok.id)
    assert record.task == "testcelery.tasks.echo"
    assert record.status == states.SUCCESS
    args = json.loads(record.args)
    assert args[:2] == [1, "two"]
    assert json.loads(record.kwargs) == {"flag": True, "nested": {"a": [1, 2]}}
    assert record.decoded_args == [1, "two", when, Decimal("3.50")]
    assert record.hostname == worker.hostname
    assert record.queue == "celery"
    assert record.routing_key == "celery"
    assert record.date_started is not None and record.date_done >= record.date_started
    assert record.result == {
        "args": [1, "two", when, Decimal("3.50")],
        "kwargs": {"flag": True, "nested": {"a": [1, 2]}},
    }

    failed = TaskResultMeta.objects.get(task_id=bad.id)
    assert failed.status == states.FAILURE
    assert json.loads(failed.args) == ["it broke"]
    assert "ValueError: it broke" in failed.traceback
    assert isinstance(failed.result, ValueError)

    retried = TaskResultMeta.objects.get(task_id=flaky.id)
    assert retried.status == states.SUCCESS
    assert retried.retries == 1
    assert TaskResultMeta.objects.count() == 3


def test_async_result_reads_name_args_and_state_through_the_backend(worker: Any) -> None:
    result = tasks.add.delay(2, 3)
    assert result.get(timeout=30) == 5
    fresh = app.AsyncResult(result.id)
    assert fresh.state == states.SUCCESS
    assert fresh.name == "testcelery.tasks.add"
    assert fresh.args == [2, 3]
    assert fresh.kwargs == {}
    assert fresh.result == 5


def test_custom_states_are_recorded(worker: Any) -> None:
    result = tasks.progress.delay()
    assert result.get(timeout=30) == "finished"
    record = TaskResultMeta.objects.get(task_id=result.id)
    assert record.status == states.SUCCESS
    assert record.task == "testcelery.tasks.progress"


def test_update_state_of_another_task_does_not_write_the_callers_name_arguments_or_count(worker: Any) -> None:
    """Celery passes the calling task's request with ``update_state(task_id=other)``: none of it describes the
    other task (it used to give that record the caller's name, arguments, worker and retry count, and a count
    that only grows then refused the other task's own STARTED)."""
    other = str(uuid.uuid4())
    assert tasks.progress_of.delay(other).get(timeout=30) == other
    record = TaskResultMeta.objects.get(task_id=other)
    assert record.status == "PROGRESS" and record.result == {"done": 1}
    assert (record.task, record.args, record.hostname, record.retries) == (None, None, None, 0)
    assert tasks.add.apply_async((1, 2), task_id=other).get(timeout=30) == 3
    record.refresh_from_db()
    assert (record.status, record.task, record.decoded_args) == (states.SUCCESS, "testcelery.tasks.add", [1, 2])


def test_a_chord_of_ten_completes(worker: Any) -> None:
    result = chord(tasks.add.s(i, i) for i in range(10))(tasks.tsum.s())
    assert result.get(timeout=60) == 90
    members = TaskResultMeta.objects.filter(task="testcelery.tasks.add")
    assert members.count() == 10
    assert set(members.values_list("status", flat=True)) == {states.SUCCESS}
    assert len(set(members.values_list("group_id", flat=True))) == 1


def test_a_group_result_is_saved_and_restored(worker: Any) -> None:
    result = group(tasks.add.s(i, 1) for i in range(5)).apply_async()
    result.save()
    assert sorted(result.get(timeout=30)) == [1, 2, 3, 4, 5]
    restored = app.GroupResult.restore(result.id)
    assert sorted(restored.get(timeout=30)) == [1, 2, 3, 4, 5]


def test_revoked_task_is_recorded_revoked(worker: Any) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=15)
    result = tasks.add.apply_async((1, 1), eta=eta)
    wait_for(lambda: TaskResultMeta.objects.filter(task_id=result.id).exists())
    result.revoke()
    # A worker that holds the message already marks it REVOKED only when its
    # ETA comes (one that receives it after the revoke, at once): wait past it.
    wait_for(lambda: TaskResultMeta.objects.get(task_id=result.id).status == states.REVOKED, timeout=60)
    record = TaskResultMeta.objects.get(task_id=result.id)
    assert record.eta is not None and abs((record.eta - eta).total_seconds()) < 1


def test_ignored_results_are_not_stored(start_worker: Any) -> None:
    start_worker()
    ignored = tasks.ignored.delay(1)
    per_call = tasks.add.apply_async((1, 2), ignore_result=True)
    kept = tasks.add.delay(2, 2)
    assert kept.get(timeout=30) == 4
    # Tasks run in order on the queue; give the ignored ones a moment.
    done = tasks.add.delay(0, 0)
    done.get(timeout=30)
    assert not TaskResultMeta.objects.filter(task_id__in=[ignored.id, per_call.id]).exists()


@pytest.mark.django_db(transaction=True)
def test_store_is_one_statement() -> None:
    """The store path: one round-trip per state change (counted, not timed)."""
    from django.test.utils import CaptureQueriesContext

    backend = app.backend
    with CaptureQueriesContext(connection) as queries:
        backend.store_result("one-trip", 42, states.SUCCESS)
    assert len(queries) == 1, [q["sql"] for q in queries]


@pytest.mark.django_db(transaction=True)
def test_the_writes_go_through_djangos_cursor_and_its_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instrumentation sees every write (execute_wrapper hooks); one driver cursor serves a connection's writes."""
    # Django's default cursors (the prepared path makes psycopg's server-binding ones itself).
    monkeypatch.delitem(connection.settings_dict["OPTIONS"], "prepare_threshold", raising=False)
    connection.close()
    app.backend.store_result("hooked", None, states.PENDING)  # the connection is open
    driver = connection.connection
    made = []
    create_cursor = connection.create_cursor

    def counted(*args: Any, **kwargs: Any) -> Any:
        made.append(connection.connection)
        return create_cursor(*args, **kwargs)

    monkeypatch.setattr(connection, "create_cursor", counted)
    seen = []

    def hook(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if TaskResultMeta._meta.db_table in sql or STATE_FUNCTION in sql:  # not a new connection's set-up
            seen.append(context["connection"].alias)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(hook):
        app.backend.store_result("hooked", None, states.STARTED)
        app.backend.store_result("hooked", {"step": 1}, "PROGRESS")
        assert made == [], "the connection's driver cursor serves every write"
        connection.close()  # what Celery's Django fix-up does to an old connection between tasks
        app.backend.store_result("hooked", 3, states.SUCCESS)
    assert seen == ["default"] * 3
    # A new driver connection gets a cursor of its own (SQLite's in-memory test database is never closed).
    assert made[-1:] == ([] if connection.connection is driver else [connection.connection])
    # A connection shared between threads (LiveServerTestCase) never shares a driver cursor: one per write.
    made.clear()
    connection.inc_thread_sharing()
    try:
        app.backend.store_result("shared-1", 1, states.SUCCESS)
        app.backend.store_result("shared-2", 2, states.SUCCESS)
    finally:
        connection.dec_thread_sharing()
    assert len(made) == 2
    record = TaskResultMeta.objects.get(task_id="hooked")
    assert (record.status, record.result) == (states.SUCCESS, 3)


@pytest.mark.django_db(transaction=True)
def test_the_arguments_are_sent_with_the_first_state_of_an_attempt_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A big argument is written once per attempt, not again with each state; the record keeps it."""
    from celery.app.task import Context
    from django.test.utils import CaptureQueriesContext

    # Measured on the statements' text: parameters bound on the client are in it.
    monkeypatch.delitem(connection.settings_dict["OPTIONS"], "prepare_threshold", raising=False)
    connection.close()

    big = "x" * 200_000
    attempt = Context(
        id="big-args", task="testcelery.tasks.echo", args=[big], kwargs={"n": 1}, hostname="w1@host",
        delivery_info={"routing_key": "celery"}, retries=0, children=[],
    )  # fmt: skip
    backend = app.backend
    with CaptureQueriesContext(connection) as queries:
        backend.store_result("big-args", {"pid": 1}, states.STARTED, request=attempt)
        backend.store_result("big-args", {"step": 1}, "PROGRESS", request=attempt)
        backend.store_result("big-args", "done", states.SUCCESS, request=attempt)
    sizes = [len(q["sql"]) for q in queries.captured_queries]
    assert len(sizes) == 3
    assert sizes[0] > len(big) > 10 * max(sizes[1:]), sizes
    record = TaskResultMeta.objects.get(task_id="big-args")
    assert (record.status, json.loads(record.args), json.loads(record.kwargs)) == (states.SUCCESS, [big], {"n": 1})
    assert record.not_retryable_reason == ""

    # Nothing of it is left on the request: Celery would copy it into the headers of the messages it sends.
    assert not [name for name in vars(attempt) if "fulldbresult" in name]
    assert attempt.as_execution_options().get("headers") in (None, {})

    # The next attempt (a new request: Task.retry() may change the arguments) writes its own.
    retried = Context({**vars(attempt), "args": ["changed"], "retries": 1})
    backend.store_result("big-args", "again", states.SUCCESS, request=retried)
    assert json.loads(TaskResultMeta.objects.get(task_id="big-args").args) == ["changed"]


@pytest.mark.django_db(transaction=True)
def test_a_write_assigns_what_it_has_and_the_record_keeps_the_rest() -> None:
    """A column a write has no value for is left out of its SET list (SQLite rewrites the index entry of
    every assigned column, whatever the value); the record keeps what was stored."""
    from celery.app.task import Context
    from django.test.utils import CaptureQueriesContext

    published = Context(
        id="kept", task="testcelery.tasks.echo", args=[1], kwargs={"a": 2}, group="g-1", parent_id="p-1",
        root_id="r-1", periodic_task_name="nightly", eta="2030-01-02T03:04:05+00:00", hostname="w1@host",
        delivery_info={"routing_key": "celery", "priority": 3}, retries=0, children=[],
    )  # fmt: skip
    with override_settings(DJANGO_CELERY_FULLDBRESULT_REDACT_KWARGS=["a"]):
        app.backend.store_result("kept", None, states.STARTED, request=published)
    with CaptureQueriesContext(connection) as queries:
        app.backend.store_result("kept", 7, states.SUCCESS)  # no request: none of it is known
    record = TaskResultMeta.objects.get(task_id="kept")
    assert (record.status, record.result, record.task, json.loads(record.args), json.loads(record.kwargs)) == (
        states.SUCCESS, 7, "testcelery.tasks.echo", [1], {"a": "[redacted]"},
    )  # fmt: skip
    lineage = (record.group_id, record.parent_id, record.root_id, record.periodic_task_name)
    assert lineage == ("g-1", "p-1", "r-1", "nightly")
    assert (record.hostname, record.queue, record.priority) == ("w1@host", "celery", 3)
    assert record.eta == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert record.date_started is not None
    assert record.not_retryable_reason == "keyword arguments redacted: a"  # it describes the kept arguments
    (sql,) = [q["sql"] for q in queries.captured_queries]
    if connection.vendor != "postgresql":  # (PostgreSQL's function and statement are whole)
        update = sql.split(" UPDATE ", 1)[1].split(" WHERE ")[0].removeprefix("SET ")
        assigned = [name.strip('"`') for name in re.findall(r'(?:^|, )([`"]\w+[`"]) = ', update)]
        assert "status" in assigned and "traceback" in assigned, assigned
        assert not {"group_id", "args", "not_retryable_reason", "date_started"} & set(assigned), assigned
        if connection.display_name == "MariaDB":
            # The guard's answer is kept by the first assignment, whichever it is now; the guard's own columns last.
            assert re.match(rf"`\w+` = IF\({GUARD_VARIABLE} := ", update) and update.count(f"{GUARD_VARIABLE} :=") == 1
            assert assigned[-2:] == ["status", "retries"]

    # Another task's write that has a group assigns it (each set of columns has its own text).
    app.backend.store_result("grouped", None, states.STARTED, request=Context(id="grouped", retries=0, children=[]))
    app.backend.store_result("grouped", 1, states.SUCCESS, request=Context(id="grouped", group="g-2", children=[]))
    assert TaskResultMeta.objects.get(task_id="grouped").group_id == "g-2"


def test_only_the_columns_a_write_keeps_when_it_has_no_value_are_left_out() -> None:
    from django_celery_fulldbresult import upsert

    left_out = {upsert.STATE_COLUMNS[i] for i in upsert._KEPT_WHEN_NONE}
    for name in upsert.STATE_COLUMNS[1:]:  # (not task_id, the key)
        kept = upsert._state_value("sqlite", name, "NEW", "OLD", "NEW_ARGS") == "COALESCE(NEW, OLD)"
        assert (name in left_out) == kept, name
    assert not left_out & (upsert.REPLACED | {"task_id", "retries", "not_retryable_reason"})


@pytest.mark.django_db(transaction=True)
def test_the_arguments_are_written_again_after_a_rolled_back_write() -> None:
    """A task's own atomic block: its first write rolls back with it, the next one brings the arguments."""
    from celery.app.task import Context
    from django.db import transaction

    attempt = Context(id="rolled", task="testcelery.tasks.echo", args=["keep me"], kwargs={}, retries=0, children=[])
    with pytest.raises(RuntimeError), transaction.atomic():
        app.backend.store_result("rolled", {"step": 1}, "PROGRESS", request=attempt)
        raise RuntimeError("the task fails inside its transaction")
    app.backend.store_result("rolled", None, states.FAILURE, request=attempt)
    assert json.loads(TaskResultMeta.objects.get(task_id="rolled").args) == ["keep me"]


@pytest.mark.django_db(transaction=True)
def test_unfinished_states_can_commit_without_waiting_for_the_flush() -> None:
    """UNFINISHED_SYNCHRONOUS_COMMIT = False: STARTED and PROGRESS skip the flush (PostgreSQL), a result never does."""
    from celery.app.task import Context
    from django.test.utils import CaptureQueriesContext, override_settings

    from django_celery_fulldbresult.upsert import ASYNCHRONOUS_COMMIT

    attempt = Context(id="fast-start", task="testcelery.tasks.echo", args=[1], kwargs={}, retries=0, children=[])
    with (
        override_settings(DJANGO_CELERY_FULLDBRESULT_UNFINISHED_SYNCHRONOUS_COMMIT=False),
        CaptureQueriesContext(connection) as queries,
    ):
        app.backend.store_result("fast-start", None, states.STARTED, request=attempt)
        app.backend.store_result("fast-start", {"step": 1}, "PROGRESS", request=attempt)
        app.backend.store_result("fast-start", 2, states.SUCCESS, request=attempt)
    sql = [q["sql"] for q in queries.captured_queries]
    assert len(sql) == 3, "still one round-trip each"
    asynchronous = connection.vendor == "postgresql"  # elsewhere the setting changes nothing
    assert [s.startswith(ASYNCHRONOUS_COMMIT) for s in sql] == [asynchronous, asynchronous, False]
    record = TaskResultMeta.objects.get(task_id="fast-start")
    assert (record.status, record.result, json.loads(record.args)) == (states.SUCCESS, 2, [1])
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # the session itself is left as it was
        if connection.vendor == "postgresql":
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on"


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="psycopg's prepared statements")
def test_the_writes_are_prepared_when_the_project_turns_prepared_statements_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Django's OPTIONS["prepare_threshold"]: the state and publish writes are prepared, one round-trip, and logged."""
    from celery.app.task import Context
    from django.test.utils import CaptureQueriesContext, override_settings

    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "prepare_threshold", 2)
    connection.close()
    try:
        for n in range(3):
            attempt = Context(id=f"prepared-{n}", task="testcelery.tasks.echo", args=[n], kwargs={}, retries=0)
            with CaptureQueriesContext(connection) as queries:
                app.backend.store_result(attempt.id, None, states.STARTED, request=attempt)
                app.backend.store_result(attempt.id, n, states.SUCCESS, request=attempt)
            assert len(queries) == 2
            # Logged as Django logs its own (DEBUG, CaptureQueriesContext): the statement, with its values.
            assert all(f"'{attempt.id}'" in (query["sql"] or "") for query in queries), queries
        with override_settings(DJANGO_CELERY_FULLDBRESULT_UNFINISHED_SYNCHRONOUS_COMMIT=False):
            app.backend.store_result("prepared-3", None, states.STARTED)  # two statements: not prepared
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement FROM pg_prepared_statements")
            prepared = [row[0] for row in cursor.fetchall()]
        table = TaskResultMeta._meta.db_table
        assert any(sql.startswith(f'INSERT INTO "{table}"') for sql in prepared), prepared
        records = TaskResultMeta.objects.filter(task_id__startswith="prepared-").order_by("task_id")
        assert [(r.status, r.result) for r in records] == [
            (states.SUCCESS, 0), (states.SUCCESS, 1), (states.SUCCESS, 2), (states.STARTED, None),
        ]  # fmt: skip
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_write_is_refused_in_a_django_test_case_without_the_database() -> None:
    """A ``SimpleTestCase`` refuses queries to the databases it leaves out: the writes too, on an open connection."""
    import unittest

    class NoDatabase(SimpleTestCase):
        def test_a_state_write(self) -> None:
            with self.assertRaisesMessage(AssertionError, "Database queries to 'default' are not allowed"):
                app.backend.store_result("refused", 1, states.SUCCESS)

    app.backend.store_result("refused", None, states.PENDING)  # the connection is open, its cursor kept
    outcome = unittest.TestResult()
    unittest.TestSuite([NoDatabase("test_a_state_write")]).run(outcome)  # as a project's test runner runs it
    assert outcome.wasSuccessful(), outcome.failures + outcome.errors
    assert TaskResultMeta.objects.get(task_id="refused").status == states.PENDING
    app.backend.store_result("refused", 1, states.SUCCESS)  # allowed again after it
    assert TaskResultMeta.objects.get(task_id="refused").status == states.SUCCESS
