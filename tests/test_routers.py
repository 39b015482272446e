"""Records in a database of their own: every read and write follows DATABASE_ROUTERS.

The router sends the app's and django-celery-results' models to the
``results`` alias (``testcelery/settings.py``); each test checks the record is
there and not in ``default``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from celery import states
from django.core.management import call_command
from django.db import transaction
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from django_celery_fulldbresult.models import TaskResultMeta
from django_celery_fulldbresult.result_backends import DatabaseResultBackend
from testcelery import tasks
from testcelery.celery import app

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "results"])

RESULTS_APPS = {"django_celery_fulldbresult", "django_celery_results"}


class ResultsRouter:
    """The README's router: task records in the ``results`` database."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "results" if model._meta.app_label in RESULTS_APPS else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "results" if model._meta.app_label in RESULTS_APPS else None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if app_label in RESULTS_APPS:
            return db == "results"
        return db != "results"


@pytest.fixture(autouse=True)
def router() -> Iterator[None]:
    with override_settings(DATABASE_ROUTERS=[f"{__name__}.ResultsRouter"]):
        yield


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue no worker listens to; emptied at the end."""
    name = f"routers-{uuid.uuid4().hex[:8]}"
    yield name
    with app.connection_for_write() as connection:
        try:
            connection.default_channel.queue_purge(name)
        except connection.channel_errors:
            return  # RabbitMQ refuses to purge a queue nothing was sent to


def where(task_id: str) -> set[str]:
    return {alias for alias in ("default", "results") if TaskResultMeta.objects.using(alias).filter(task_id=task_id)}


def stale_record(queue: str) -> TaskResultMeta:
    task_id = str(uuid.uuid4())
    TaskResultMeta.objects.using("results").create(
        task_id=task_id,
        task="testcelery.tasks.add",
        status=states.PENDING,
        args="[1, 2]",
        kwargs="{}",
        queue=queue,
        date_done=timezone.now() - timedelta(hours=2),
    )
    return TaskResultMeta.objects.get(task_id=task_id)


def test_the_backend_stores_and_reads_in_the_routed_database() -> None:
    backend = DatabaseResultBackend(app=app)
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, {"answer": 42}, states.SUCCESS)
    assert where(task_id) == {"results"}
    assert backend.get_task_meta(task_id)["result"] == {"answer": 42}
    backend.forget(task_id)
    assert where(task_id) == set()


@pytest.mark.parametrize("in_transaction", [False, True])
def test_the_publish_write_goes_to_the_routed_database(queue: str, in_transaction: bool, settings: Any) -> None:
    settings.DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH = True
    if in_transaction:
        # The caller's transaction is on "default"; the record is not part of it.
        with transaction.atomic():
            result = tasks.add.apply_async((1, 2), queue=queue)
    else:
        result = tasks.add.apply_async((1, 2), queue=queue)
    assert where(result.id) == {"results"}
    assert TaskResultMeta.objects.get(task_id=result.id).status == states.PENDING


def test_stale_tasks_and_retry_use_the_routed_database(queue: str) -> None:
    old = stale_record(queue)
    stale = TaskResultMeta.objects.get_stale_tasks(timedelta(hours=1))
    assert stale.db == "results"
    assert [r.task_id for r in stale] == [old.task_id]
    report = stale.retry()
    new_id = report.sent[old.task_id]
    assert where(new_id) == {"results"}
    assert TaskResultMeta.objects.get(task_id=old.task_id).retried_as == new_id
    assert TaskResultMeta.objects.get(task_id=new_id).retry_of == old.task_id


def test_the_command_lists_from_the_routed_database(queue: str) -> None:
    old = stale_record(queue)
    out = StringIO()
    call_command("find_stale_tasks", "--hours", "1", stdout=out)
    assert old.task_id in out.getvalue()


def test_the_admin_lists_and_shows_records_of_the_routed_database(admin_client: Client, queue: str) -> None:
    old = stale_record(queue)
    response = admin_client.get(reverse("admin:django_celery_fulldbresult_taskresultmeta_changelist"))
    assert response.status_code == 200
    assert old.task_id in response.content.decode()
    response = admin_client.get(reverse("admin:django_celery_fulldbresult_taskresultmeta_change", args=[old.pk]))
    assert response.status_code == 200
    assert old.task_id in response.content.decode()


class ReplicaRouter:
    """Reads from a replica ("default" here), writes to the primary ("results")."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "default" if model._meta.app_label in RESULTS_APPS else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "results" if model._meta.app_label in RESULTS_APPS else None

    def allow_relation(self, *args: Any, **hints: Any) -> bool:
        return True


def replicated_stale_record(queue: str) -> str:
    """The same stale record on the primary and on its replica."""
    task_id = str(uuid.uuid4())
    when = timezone.now() - timedelta(days=3)  # (a replica's copy changed at the same time)
    for alias in ("results", "default"):
        TaskResultMeta.objects.using(alias).create(
            task_id=task_id,
            task="testcelery.tasks.add",
            status=states.SUCCESS,
            args="[1, 2]",
            kwargs="{}",
            queue=queue,
            date_done=when,
        )
    return task_id


@pytest.mark.parametrize("how", ["queryset", "record"])
def test_retry_writes_to_the_primary_when_reads_go_to_a_replica(queue: str, how: str) -> None:
    task_id = replicated_stale_record(queue)
    with override_settings(DATABASE_ROUTERS=[f"{__name__}.ReplicaRouter"]):
        if how == "queryset":
            report = TaskResultMeta.objects.filter(task_id=task_id).retry()
        else:
            report = TaskResultMeta.objects.get(task_id=task_id).retry()
    new_id = report.sent[task_id]
    assert where(new_id) == {"results"}
    assert TaskResultMeta.objects.using("results").get(task_id=task_id).retried_as == new_id


def test_a_replica_behind_the_primary_gets_no_retry_sent(queue: str) -> None:
    """Listed from a replica that has not seen the task's last change: refused, as a stale read."""
    task_id = replicated_stale_record(queue)
    TaskResultMeta.objects.using("results").filter(task_id=task_id).update(
        status=states.STARTED, date_done=timezone.now()
    )  # a worker took it again; the replica does not know yet
    with override_settings(DATABASE_ROUTERS=[f"{__name__}.ReplicaRouter"]):
        report = TaskResultMeta.objects.filter(task_id=task_id).retry()
    assert not report.sent
    assert report.refused[task_id] == "its state changed to STARTED since it was read"


def test_expired_records_are_deleted_on_the_primary() -> None:
    task_id = replicated_stale_record("unused")
    with override_settings(DATABASE_ROUTERS=[f"{__name__}.ReplicaRouter"]):
        assert TaskResultMeta.objects.delete_expired(timedelta(days=1)) == 1
    assert where(task_id) == {"default"}
