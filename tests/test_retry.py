"""Sending stored tasks again: lineage, refusals, routing, and the seed's own way."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery, states
from django.utils import timezone

from django_celery_fulldbresult.models import TaskResultMeta
from django_celery_fulldbresult.retry import retry_records
from testcelery import tasks
from testcelery.celery import app

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def stored(task_id: str, task: str = "testcelery.tasks.add", args: str = "[1, 2]", **fields: Any) -> TaskResultMeta:
    fields.setdefault("status", states.FAILURE)
    return TaskResultMeta.objects.create(
        task_id=task_id, task=task, args=args, kwargs="{}", date_done=timezone.now(), **fields
    )


@pytest.mark.worker
def test_a_retry_records_its_lineage_and_runs(worker: Any) -> None:
    original = tasks.fail.delay("first")
    with pytest.raises(ValueError):
        original.get(timeout=30)
    record = TaskResultMeta.objects.get(task_id=original.id)

    report = record.retry()

    new_id = report.sent[original.id]
    record.refresh_from_db()
    assert record.retried_as == new_id
    copy = TaskResultMeta.objects.get(task_id=new_id)
    assert copy.retry_of == original.id
    assert copy.task == "testcelery.tasks.fail"
    assert json.loads(copy.args) == ["first"]
    wait_for(lambda: TaskResultMeta.objects.get(task_id=new_id).status == states.FAILURE)


def test_a_second_retry_is_refused_unless_forced(parked: str) -> None:
    record = stored("once", queue=parked)
    first = record.retry()
    assert list(first.sent) == ["once"]
    record.refresh_from_db()
    second = record.retry()
    assert not second.sent
    assert second.refused == {"once": f"already retried as {first.sent['once']}"}
    forced = record.retry(force=True)
    assert forced.sent["once"] not in (first.sent["once"], None)
    record.refresh_from_db()
    assert record.retried_as == forced.sent["once"]
    assert TaskResultMeta.objects.filter(retry_of="once").count() == 2


def test_a_queryset_retries_each_record_and_reports_refusals(parked: str) -> None:
    stored("a", queue=parked)
    stored("b", queue=parked)
    stored("unsendable", queue=parked, not_retryable_reason="arguments are not JSON-serializable: Foo")
    stored("broken", queue=parked, args="[1, 2")
    stored("nameless", task="", queue=parked)
    report = TaskResultMeta.objects.filter(task_id__in=["a", "b", "unsendable", "broken", "nameless"]).retry()
    assert set(report.sent) == {"a", "b"}
    assert report.refused["unsendable"] == "arguments are not JSON-serializable: Foo"
    assert report.refused["broken"].startswith("the stored arguments cannot be decoded")
    assert report.refused["nameless"] == "the task's name is not recorded"


def test_the_original_routing_is_kept(parked: str) -> None:
    stored("routed", queue=parked, priority=5)
    new_id = TaskResultMeta.objects.get(task_id="routed").retry().sent["routed"]
    with app.connection_for_write() as conn:
        message = conn.SimpleQueue(parked, no_ack=True).get(timeout=10)
    assert message.headers["id"] == new_id
    assert message.properties["priority"] == 5
    copy = TaskResultMeta.objects.get(task_id=new_id)
    assert copy.queue == parked
    assert copy.priority == 5


def test_task_routes_apply_where_the_original_had_no_routing(parked: str) -> None:
    stored("unrouted")  # no queue, exchange or routing key recorded
    routed = Celery("testcelery", set_as_current=False)
    routed.config_from_object("django.conf:settings", namespace="CELERY")
    routes = {"testcelery.tasks.add": {"queue": parked}}
    routed.conf.task_routes = routes
    if routed.conf.task_routes != routes:  # Celery 5.5 reads the namespaced name first
        routed.conf["CELERY_TASK_ROUTES"] = routes
    new_id = TaskResultMeta.objects.get(task_id="unrouted").retry(app=routed).sent["unrouted"]
    with app.connection_for_write() as conn:
        message = conn.SimpleQueue(parked, no_ack=True).get(timeout=10)
    assert message.headers["id"] == new_id


@pytest.mark.worker
def test_arguments_come_back_with_their_types(worker: Any) -> None:
    when = datetime(2021, 6, 1, 12, 0, tzinfo=UTC)
    original = tasks.echo.delay(when, b"bytes", note="x")
    first = original.get(timeout=30)
    new_id = TaskResultMeta.objects.get(task_id=original.id).retry().sent[original.id]
    assert app.AsyncResult(new_id).get(timeout=30) == first == {"args": [when, b"bytes"], "kwargs": {"note": "x"}}


@pytest.mark.worker
def test_the_seeds_way_of_retrying_works(worker: Any) -> None:
    original = tasks.echo.delay(datetime(2021, 6, 1, tzinfo=UTC) + timedelta(hours=1), n=1)
    expected = original.get(timeout=30)

    # The seed README's code, as written there.
    import json

    from django_celery_fulldbresult.models import TaskResultMeta
    from testcelery.celery import app as celery_app

    task = TaskResultMeta.objects.all()[0]
    task_name = task.task
    task_args = json.loads(task.args)
    task_kwargs = json.loads(task.kwargs)
    again = celery_app.send_task(task_name, args=task_args, kwargs=task_kwargs)

    assert again.get(timeout=30) == expected


def test_a_record_whose_state_changed_since_it_was_read_is_not_sent(parked: str) -> None:
    """A stale task a worker starts meanwhile (or a list read from a replica behind) must not run twice."""
    stored("lost", status=states.PENDING, queue=parked)
    listed = list(TaskResultMeta.objects.filter(task_id="lost"))  # what the operator's list shows
    time.sleep(0.01)  # (a later time of change, whatever the clock's resolution)
    app.backend.store_result("lost", None, states.STARTED)  # a worker took it meanwhile
    report = retry_records(listed)
    assert not report.sent
    assert report.refused["lost"] == "its state changed to STARTED since it was read"
    assert TaskResultMeta.objects.get(task_id="lost").retried_as is None
    assert not TaskResultMeta.objects.filter(retry_of="lost").exists()
    assert retry_records(TaskResultMeta.objects.filter(task_id="lost")).sent, "read again, it can be sent"


def test_a_task_started_again_since_it_was_read_is_not_sent(parked: str) -> None:
    """STARTED before and after: its worker died, and the broker gave the task to another worker meanwhile."""
    from celery.app.task import Context

    request = Context(id="redelivered", task="testcelery.tasks.add", args=[1, 2], kwargs={}, hostname="celery@gone")
    app.backend.store_result("redelivered", None, states.STARTED, request=request)
    listed = list(TaskResultMeta.objects.filter(task_id="redelivered"))
    request.hostname = "celery@alive"
    time.sleep(0.01)  # (a later time of change, whatever the clock's resolution)
    app.backend.store_result("redelivered", None, states.STARTED, request=request)  # the other worker's
    report = retry_records(listed)
    assert not report.sent
    assert report.refused["redelivered"] == "it changed since it was read (a new STARTED)"


def test_each_task_is_sent_once_and_a_vanished_record_is_said_so(parked: str) -> None:
    stored("twice", queue=parked)
    stored("gone", queue=parked)
    listed = list(TaskResultMeta.objects.filter(task_id__in=["twice", "gone"]).order_by("task_id"))
    TaskResultMeta.objects.filter(task_id="gone").delete()  # a clean-up meanwhile
    report = retry_records([*listed, listed[1]])  # "twice" listed twice
    assert list(report.sent) == ["twice"]
    assert report.refused == {"gone": "the record no longer exists"}
    assert TaskResultMeta.objects.filter(retry_of="twice").count() == 1


def test_arguments_kombu_cannot_rebuild_are_refused_and_the_rest_is_sent(parked: str) -> None:
    for task_id, value in [("decimal", '"x"'), ("uuid", "5"), ("bytes", "5")]:
        stored(f"bad-{task_id}", args='[{"__type__": "%s", "__value__": %s}]' % (task_id, value), queue=parked)
    stored("good", queue=parked)
    report = TaskResultMeta.objects.filter(task_id__in=["bad-decimal", "bad-uuid", "bad-bytes", "good"]).retry()
    assert list(report.sent) == ["good"]
    assert sorted(report.refused) == ["bad-bytes", "bad-decimal", "bad-uuid"]
    assert all(reason.startswith("the stored arguments cannot be decoded") for reason in report.refused.values())


def test_nothing_is_sent_when_its_new_record_cannot_be_written(parked: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db.utils import OperationalError

    from django_celery_fulldbresult import retry

    stored("lost", status=states.PENDING, queue=parked)
    sent: list[str] = []
    monkeypatch.setattr(app, "send_task", lambda *args, **kwargs: sent.append(kwargs["task_id"]))

    def refused_write(*args: Any, **kwargs: Any) -> None:  # (the database failing between the claim and the record)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(retry, "write_records", refused_write)
    report = TaskResultMeta.objects.filter(task_id="lost").retry()
    assert not report.sent and not sent
    assert report.refused["lost"].startswith("not sent: its new record could not be written: server closed")
    assert TaskResultMeta.objects.get(task_id="lost").retried_as is None, "the claim was given back"


@pytest.mark.parametrize("count", [3, 30])
def test_a_queryset_retry_reads_what_it_sends_not_the_results(parked: str, count: int) -> None:
    """Big results and tracebacks stay in the database; the statements do not grow with the records."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for n in range(count):
        stored(f"big-{n}", queue=parked, encoded_result='"' + "x" * 100_000 + '"', traceback="Traceback " * 1000)
    selection = TaskResultMeta.objects.filter(task_id__startswith="big-").defer("args")  # (as the admin's list does)
    with CaptureQueriesContext(connection) as queries:
        report = selection.retry()
    assert len(report.sent) == count
    read = queries.captured_queries[0]["sql"]
    assert '"args"' in read.replace("`", '"') and "traceback" not in read and '"result"' not in read.replace("`", '"')
    assert len(queries) == 4, "read, claim, claims read back, new records"


def test_any_queryset_of_records_can_be_retried(parked: str) -> None:
    """A union of selections, and a plain QuerySet (a ModelAdmin of a user's own, over a proxy model)."""
    from django.db.models import QuerySet

    from django_celery_fulldbresult.retry import retry_queryset

    for task_id in ("a", "b", "c"):
        stored(task_id, queue=parked)
    # (Unordered parts: SQLite takes no ORDER BY inside a union.)
    union = (
        TaskResultMeta.objects.filter(task_id="a")
        .order_by()
        .union(TaskResultMeta.objects.filter(task_id="b").order_by())
    )
    assert sorted(union.retry().sent) == ["a", "b"]
    assert list(retry_queryset(QuerySet(TaskResultMeta).filter(task_id="c")).sent) == ["c"]
