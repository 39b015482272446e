"""Stale detection: ``get_stale_tasks()`` and ``with_stale_kind()``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from celery import states
from django.db import connection
from django.test.utils import override_settings
from django.utils import timezone

from django_celery_fulldbresult.managers import (
    NEVER_STARTED,
    OTHER,
    RUNNING,
    STARTED_UNKNOWN,
    WAITING_ETA,
    WAITING_RETRY,
    WORKER_GONE,
    live_worker_hostnames,
)
from django_celery_fulldbresult.models import TaskResultMeta
from testcelery import tasks

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def make(task_id: str, status: str, age: timedelta, **fields: Any) -> TaskResultMeta:
    return TaskResultMeta.objects.create(
        task_id=task_id, task="app.tasks.work", status=status, date_done=timezone.now() - age, **fields
    )


def ids(queryset: Any) -> set[str]:
    return set(queryset.values_list("task_id", flat=True))


def test_unfinished_tasks_older_than_the_window_are_stale() -> None:
    hour = timedelta(hours=1)
    for state in (states.PENDING, states.STARTED, states.RETRY, "PROGRESS"):
        make(f"old-{state}", state, 2 * hour)
        make(f"new-{state}", state, hour / 2)
    for state in (states.SUCCESS, states.FAILURE, states.REVOKED):
        make(f"old-{state}", state, 2 * hour)
    stale = TaskResultMeta.objects.get_stale_tasks(hour)
    assert ids(stale) == {"old-PENDING", "old-STARTED", "old-RETRY", "old-PROGRESS"}


def test_revoked_tasks_are_not_stale_by_default_but_acceptable_states_can_say_otherwise() -> None:
    make("revoked", states.REVOKED, timedelta(days=1))
    make("started", states.STARTED, timedelta(days=1))
    assert ids(TaskResultMeta.objects.get_stale_tasks(timedelta(hours=1))) == {"started"}
    custom = TaskResultMeta.objects.get_stale_tasks(
        timedelta(hours=1), acceptable_states=[states.SUCCESS, states.STARTED]
    )
    assert ids(custom) == {"revoked"}


def test_a_task_is_not_stale_before_its_eta_plus_the_window() -> None:
    now = timezone.now()
    window = timedelta(hours=1)
    make("eta-ahead", states.PENDING, timedelta(days=1), eta=now + timedelta(hours=5))
    make("eta-just-passed", states.PENDING, timedelta(days=1), eta=now - timedelta(minutes=30))
    make("eta-long-passed", states.PENDING, timedelta(days=1), eta=now - timedelta(hours=2))
    assert ids(TaskResultMeta.objects.get_stale_tasks(window)) == {"eta-long-passed"}


def test_the_default_window_is_the_stale_after_setting() -> None:
    make("two-hours", states.PENDING, timedelta(hours=2))
    make("ten-minutes", states.PENDING, timedelta(minutes=10))
    assert ids(TaskResultMeta.objects.get_stale_tasks()) == {"two-hours"}
    with override_settings(DJANGO_CELERY_FULLDBRESULT_STALE_AFTER=timedelta(minutes=5)):
        assert ids(TaskResultMeta.objects.get_stale_tasks()) == {"two-hours", "ten-minutes"}


def test_it_is_a_queryset_that_chains() -> None:
    make("a", states.PENDING, timedelta(days=1), queue="mail")
    make("b", states.PENDING, timedelta(days=1), queue="reports")
    stale = TaskResultMeta.objects.filter(queue="mail").get_stale_tasks(timedelta(hours=1)).order_by("date_done")
    assert list(stale.values_list("task_id", flat=True)) == ["a"]


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        TaskResultMeta.objects.get_stale_tasks(timedelta(hours=-1))


def test_each_stale_record_says_why() -> None:
    day = timedelta(days=1)
    now = timezone.now()
    make("never", states.PENDING, day)
    make("eta", states.PENDING, day, eta=now - day)
    make("retry", states.RETRY, day)
    make("gone", states.STARTED, day, hostname="w1@dead-host")
    make("alive", states.STARTED, day, hostname="w2@live-host")
    make("custom", "PROGRESS", day)
    kinds = dict(
        TaskResultMeta.objects.get_stale_tasks(timedelta(hours=1))
        .with_stale_kind(live_workers={"w2@live-host"})
        .values_list("task_id", "stale_kind")
    )
    assert kinds == {
        "never": NEVER_STARTED,
        "eta": WAITING_ETA,
        "retry": WAITING_RETRY,
        "gone": WORKER_GONE,
        "alive": RUNNING,
        "custom": OTHER,
    }
    unknown = dict(TaskResultMeta.objects.with_stale_kind(live_workers=None).values_list("task_id", "stale_kind"))
    assert unknown["gone"] == unknown["alive"] == STARTED_UNKNOWN


@pytest.mark.worker
def test_the_workers_are_asked_which_tasks_they_run(worker: Any) -> None:
    """A STARTED record is running if a worker that answers runs it. One on a worker's name that answers but
    does not run it was started by a worker of that name that is gone: killed with it and started again under
    the same name (``celery@%h`` after a reboot, a container restart). It used to count as running, for good,
    and was never retried."""
    assert worker.hostname in (live_worker_hostnames(timeout=5) or set())
    slow = tasks.sleep.delay(15)
    wait_for(lambda: TaskResultMeta.objects.filter(task_id=slow.id, status=states.STARTED).exists())
    TaskResultMeta.objects.filter(task_id=slow.id).update(date_done=timezone.now() - timedelta(days=1))
    make("on-a-restarted-worker", states.STARTED, timedelta(days=1), hostname=worker.hostname)
    make("on-dead-worker", states.STARTED, timedelta(days=1), hostname="w9@nowhere")
    with override_settings(DJANGO_CELERY_FULLDBRESULT_WORKER_PING_TIMEOUT=5):
        kinds = dict(TaskResultMeta.objects.with_stale_kind().values_list("task_id", "stale_kind"))
    slow.revoke(terminate=True)
    assert kinds == {slow.id: RUNNING, "on-a-restarted-worker": WORKER_GONE, "on-dead-worker": WORKER_GONE}


def test_stale_detection_uses_an_index_on_postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("EXPLAIN plans are PostgreSQL's; the partial index exists on PostgreSQL and SQLite")
    table = TaskResultMeta._meta.db_table
    with connection.cursor() as cursor:
        # A realistic table: nearly every record finished, a few not.
        cursor.execute(
            f"""INSERT INTO {table} (task_id, task, status, content_type, content_encoding, not_retryable_reason,
                retries, date_done)
            SELECT 'bulk-' || i, 'app.tasks.work', CASE WHEN i % 1000 = 0 THEN 'STARTED' ELSE 'SUCCESS' END,
                'application/json', 'utf-8', '', 0, now() - (i || ' seconds')::interval
            FROM generate_series(1, 50000) AS i"""
        )
        cursor.execute(f"ANALYZE {table}")
    stale = TaskResultMeta.objects.get_stale_tasks(timedelta(hours=1))
    plan = stale.explain()
    assert "fulldbresult_unfinished_idx" in plan, plan
    assert "Seq Scan" not in plan, plan
    count_plan = stale.order_by().values("pk").explain()
    assert "fulldbresult_unfinished_idx" in count_plan, count_plan
    assert stale.count() == 50 - 3  # the rows younger than an hour are not stale


def test_stale_detection_uses_the_partial_index_on_sqlite() -> None:
    """SQLite takes a partial index only when the query has its condition word for word, with the states written
    in (Django binds them as parameters): without that it read every record older than the window, finished ones
    included (71 ms against 1 ms at 300,000 records)."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's query plans")
    make("lost", states.STARTED, timedelta(days=1))
    make("done", states.SUCCESS, timedelta(days=1))
    old = timezone.now() - timedelta(days=2)
    TaskResultMeta.objects.bulk_create(  # a table as they are: nearly every record finished
        [TaskResultMeta(task_id=f"ok-{i}", task="app.other", status=states.SUCCESS, date_done=old) for i in range(2000)]
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # (which index is cheaper, SQLite decides from statistics)
    stale = TaskResultMeta.objects.get_stale_tasks(timedelta(hours=1))
    assert "fulldbresult_unfinished_idx" in stale.explain()
    assert "fulldbresult_unfinished_idx" in stale.order_by().values("pk").explain()  # a count
    assert ids(stale) == {"lost"}
    assert ids(stale.with_stale_kind(live_workers=())) == {"lost"}
    custom = TaskResultMeta.objects.get_stale_tasks(timedelta(hours=1), acceptable_states=[states.SUCCESS])
    assert ids(custom) == {"lost"}  # other states: the ORM's condition alone
    # As a subquery, the condition is on the subquery's rows, not the outer query's.
    assert ids(TaskResultMeta.objects.filter(task__in=stale.values("task"))) == {"lost", "done"}
    assert ids(TaskResultMeta.objects.filter(task_id__in=stale.values("task_id"))) == {"lost"}
