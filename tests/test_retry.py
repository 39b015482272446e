"""Sending stored tasks again: lineage, refusals, routing, and the seed's own way."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery, states
from django.utils import timezone

from django_celery_fulldbresult.models import TaskResultMeta
from testcelery import tasks
from testcelery.celery import app

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def stored(task_id: str, task: str = "testcelery.tasks.add", args: str = "[1, 2]", **fields: Any) -> TaskResultMeta:
    return TaskResultMeta.objects.create(
        task_id=task_id, task=task, status=states.FAILURE, args=args, kwargs="{}", date_done=timezone.now(), **fields
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
