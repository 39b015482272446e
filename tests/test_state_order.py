"""The order of state writes (see :mod:`django_celery_fulldbresult.upsert`): what a late write may replace.

Each test drives the backend as worker processes do, in the order their
writes land: ``a`` is attempt n's request (the one that retries), ``b`` the
request of attempt n + 1, run by another process.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import states
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_celery_fulldbresult import result_backends, upsert
from django_celery_fulldbresult.models import TaskResultMeta
from testcelery.celery import app

pytestmark = pytest.mark.django_db(transaction=True)

backend = app.backend
TASK_ID = "order-1"


class Request:
    """What a worker passes to the backend: one object per attempt, as Celery's task request."""

    def __init__(self, retries: int, hostname: str) -> None:
        self.id = TASK_ID
        self.task = "app.tasks.work"
        self.args = [1]
        self.kwargs: dict[str, Any] = {}
        self.hostname = hostname
        self.delivery_info = {"exchange": "", "routing_key": "celery", "priority": 0}
        self.retries = retries
        self.eta = self.expires = None
        self.parent_id = self.root_id = self.group = None
        self.children: list[Any] = []


@pytest.fixture(params=["sql", "function", "prepared", "portable"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each way of writing.

    The one-statement upsert; on PostgreSQL, the same in the PL/pgSQL function
    (the default there) and prepared; the other databases' two statements.
    """
    if request.param == "sql":
        # The statement itself, as a process that found no function writes it.
        monkeypatch.setattr(upsert, "_state_function_usable", lambda connection: False)
    if request.param == "function":
        if connection.vendor != "postgresql":
            pytest.skip("PostgreSQL's function")
        # On Django's default connection (with prepared statements on, the statement itself is prepared).
        monkeypatch.delitem(connection.settings_dict["OPTIONS"], "prepare_threshold", raising=False)
        monkeypatch.setattr(upsert, "_STATE_FUNCTION", {})
        connection.close()
        yield request.param
        assert upsert._STATE_FUNCTION == {upsert._state_function_key(connection): True}, "it was used"
        connection.close()
        return
    if request.param == "portable":
        monkeypatch.setattr(
            result_backends,
            "store_state",
            lambda connection, row, synchronous=True: upsert._store_state_portable(connection, row),
        )
    if request.param == "prepared":
        if connection.vendor != "postgresql":
            pytest.skip("psycopg's prepared statements")
        # Django's option, prepared from the first run: a new connection with it.
        monkeypatch.setitem(connection.settings_dict["OPTIONS"], "prepare_threshold", 0)
        connection.close()
        yield request.param
        connection.close()
        return
    yield request.param


def started(request: Request) -> None:
    backend.store_result(TASK_ID, {"pid": 1, "hostname": request.hostname}, states.STARTED, request=request)


def progress(request: Request, step: int) -> None:
    backend.store_result(TASK_ID, {"step": step}, "PROGRESS", request=request)


def retry(request: Request) -> None:
    backend.mark_as_retry(TASK_ID, ValueError("again"), "Traceback: again", request=request)


def republished(retries: int) -> None:
    """The TRACK_PUBLISH write of ``Task.retry()``'s re-publish, which counts the retry in the record."""
    now = timezone.now()
    row = {"task_id": TASK_ID, "task": "app.tasks.work", "status": states.PENDING, "retries": retries}
    row.update(eta=now + timedelta(seconds=30), date_submitted=now, date_done=now)
    upsert.record_published(connection, [row])


def stored() -> TaskResultMeta:
    return TaskResultMeta.objects.get(task_id=TASK_ID)


@pytest.mark.parametrize("publish", [True, False], ids=["track-publish", "no-publish-record"])
def test_a_late_retry_leaves_the_next_attempt_started(writer: str, publish: bool) -> None:
    a, b = Request(0, "a@host"), Request(1, "b@host")
    started(a)
    if publish:
        republished(1)
    started(b)  # attempt 1, picked up by another process before attempt 0's RETRY write
    begun = stored().date_started
    retry(a)
    record = stored()
    assert (record.status, record.retries, record.hostname) == (states.STARTED, 1, "b@host")
    assert record.date_started == begun
    assert record.result == {"pid": 1, "hostname": "b@host"}
    assert record.traceback is None


def test_a_late_retry_leaves_the_next_attempts_progress(writer: str) -> None:
    a, b = Request(0, "a@host"), Request(1, "b@host")
    started(a)
    republished(1)
    started(b)
    progress(b, 1)
    retry(a)
    record = stored()
    assert (record.status, record.retries, record.result) == ("PROGRESS", 1, {"step": 1})


@pytest.mark.parametrize("publish", [True, False], ids=["track-publish", "no-publish-record"])
def test_in_the_usual_order_retry_then_the_next_start_apply(writer: str, publish: bool) -> None:
    a, b = Request(0, "a@host"), Request(1, "b@host")
    started(a)
    first_start = stored().date_started
    if publish:
        republished(1)  # counts the retry in the STARTED record of attempt 0: RETRY must still apply
    retry(a)
    record = stored()
    assert (record.status, record.retries, record.hostname) == (states.RETRY, 1, "a@host")
    assert record.traceback == "Traceback: again"
    assert isinstance(record.result, ValueError)
    assert record.date_started == first_start
    started(b)
    record = stored()
    assert (record.status, record.retries, record.hostname) == (states.STARTED, 1, "b@host")
    assert record.date_started > first_start
    assert record.traceback is None


def test_a_retry_after_its_own_attempts_progress_applies(writer: str) -> None:
    a = Request(0, "a@host")
    started(a)
    progress(a, 1)
    republished(1)
    retry(a)
    assert (stored().status, stored().retries) == (states.RETRY, 1)


def test_without_track_started_a_retry_after_its_own_progress_applies(writer: str) -> None:
    """No STARTED write: neither the record nor the RETRY write knows a start, the retry applies."""
    a = Request(0, "a@host")
    progress(a, 1)
    republished(1)
    retry(a)
    record = stored()
    assert (record.status, record.retries, record.date_started) == (states.RETRY, 1, None)


def test_a_retry_written_where_the_start_was_not_seen_applies(writer: str) -> None:
    """A worker lost with retry_on_worker_lost: its main process re-publishes, then writes RETRY with a request
    of its own, which never saw the child's STARTED."""
    a = Request(0, "a@host")
    started(a)
    republished(1)
    retry(Request(0, "a@host"))
    assert (stored().status, stored().retries) == (states.RETRY, 1)


def test_a_task_cancelled_on_connection_loss_is_started_again_by_its_redelivery(writer: str) -> None:
    """The worker lost the broker and cancelled the task: RETRY without a re-publish, then the same message again."""
    from celery.exceptions import Retry

    a = Request(0, "a@host")
    started(a)
    backend.mark_as_retry(TASK_ID, Retry(message="cancelled by Celery"), request=a)
    assert (stored().status, stored().retries) == (states.RETRY, 0), "nothing was re-published: the same count"
    started(Request(0, "b@host"))
    assert (stored().status, stored().retries, stored().hostname) == (states.STARTED, 0, "b@host")


@pytest.mark.parametrize("later", [states.STARTED, "PROGRESS"])
def test_between_equals_the_later_write_wins(writer: str, later: str) -> None:
    a = Request(2, "a@host")
    started(a)
    progress(a, 1)
    backend.store_result(TASK_ID, {"step": 2}, later, request=a)
    record = stored()
    assert (record.status, record.retries, record.result) == (later, 2, {"step": 2})


def test_a_retry_after_a_retry_of_the_same_attempt_applies(writer: str) -> None:
    a = Request(0, "a@host")
    retry(a)
    backend.mark_as_retry(TASK_ID, ValueError("twice"), "Traceback: twice", request=a)
    record = stored()
    assert (record.status, record.retries, record.traceback) == (states.RETRY, 1, "Traceback: twice")


def test_an_old_attempts_start_never_replaces_its_retry(writer: str) -> None:
    """A STARTED of attempt 0 after its RETRY: the message of attempt 0 redelivered, a duplicate run."""
    a = Request(0, "a@host")
    started(a)
    retry(a)
    started(Request(0, "redelivered@host"))
    progress(Request(0, "redelivered@host"), 1)
    record = stored()
    assert (record.status, record.retries, record.hostname) == (states.RETRY, 1, "a@host")


def test_an_old_attempts_start_never_replaces_a_later_attempts(writer: str) -> None:
    started(Request(1, "b@host"))
    begun = stored().date_started
    started(Request(0, "redelivered@host"))
    record = stored()
    assert (record.status, record.retries, record.hostname, record.date_started) == (
        states.STARTED,
        1,
        "b@host",
        begun,
    )


def test_a_waiting_state_of_a_later_attempt_replaces_a_running_one(writer: str) -> None:
    """Every column follows, status and retries included (MySQL assigns them one after the other)."""
    started(Request(0, "a@host"))
    backend.store_result(TASK_ID, None, states.PENDING, request=Request(1, "b@host"))
    record = stored()
    assert (record.status, record.retries, record.hostname, record.result) == (states.PENDING, 1, "b@host", None)


@pytest.mark.parametrize(
    "before",
    ["started-later-attempt", "progress", "retry", "retry-then-next-started", "pending"],
)
@pytest.mark.parametrize("final", [states.SUCCESS, states.FAILURE, states.REVOKED])
def test_a_finished_state_applies_over_anything_whatever_its_retry_count(writer: str, before: str, final: str) -> None:
    a, b = Request(0, "a@host"), Request(1, "b@host")
    if before == "started-later-attempt":
        started(Request(3, "c@host"))
    elif before == "progress":
        progress(b, 1)
    elif before == "retry":
        retry(a)
    elif before == "retry-then-next-started":
        retry(a)
        started(b)
    else:
        republished(1)
    result: Any = ValueError("x") if final == states.FAILURE else 42
    backend.store_result(TASK_ID, result, final, traceback="tb" if final == states.FAILURE else None, request=a)
    record = stored()
    assert record.status == final
    assert record.hostname == "a@host"
    assert record.retries == (3 if before == "started-later-attempt" else 1)  # the count only grows
    started(Request(5, "late@host"))  # and no unfinished write replaces it
    assert stored().status == final


def test_each_write_is_one_round_trip_applied_or_not() -> None:
    a, b = Request(0, "a@host"), Request(1, "b@host")
    for write in (lambda: started(a), lambda: started(b), lambda: retry(a), lambda: progress(b, 1)):
        with CaptureQueriesContext(connection) as queries:
            write()
        assert len(queries) == 1, queries.captured_queries
    assert (stored().status, stored().retries) == ("PROGRESS", 1)
