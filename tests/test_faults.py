"""Faults on real processes: a worker killed, a pool process killed, the database connection lost.

What each test shows is listed in the README's "Guarantees".
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import states
from django.core.management import call_command
from django.db import DatabaseError, connection

from django_celery_fulldbresult.managers import WORKER_GONE, live_worker_hostnames
from django_celery_fulldbresult.models import TaskResultMeta
from testcelery import tasks

from .conftest import IN_CI, wait_for
from .faults_helpers import all_final, count_in, postgres_only, status

pytestmark = [pytest.mark.worker, pytest.mark.faults]


def test_a_killed_worker_leaves_a_stale_record_that_a_retry_finishes(start_worker: Any) -> None:
    doomed = start_worker("doomed", concurrency=1)
    result = tasks.sleep.delay(3)
    wait_for(lambda: status(result.id) == states.STARTED, message="the task never started")
    survivor = start_worker("survivor", concurrency=1)
    doomed.kill()

    record = TaskResultMeta.objects.get(task_id=result.id)
    assert record.status == states.STARTED
    assert record.hostname == doomed.hostname
    live = wait_for(
        lambda: (live_worker_hostnames() or set()) & {survivor.hostname}, message="the survivor does not answer"
    )
    assert doomed.hostname not in live
    stale = TaskResultMeta.objects.get_stale_tasks(timedelta(0)).with_stale_kind()
    assert stale.get(task_id=result.id).stale_kind == WORKER_GONE

    out, err = io.StringIO(), io.StringIO()
    call_command("find_stale_tasks", "--microseconds", "1", "--retry", stdout=out, stderr=err)
    assert result.id in out.getvalue()
    new_id = TaskResultMeta.objects.get(task_id=result.id).retried_as
    assert new_id, err.getvalue()
    wait_for(lambda: status(new_id) == states.SUCCESS, timeout=60, message="the retry did not succeed")
    retried = TaskResultMeta.objects.get(task_id=new_id)
    assert retried.hostname == survivor.hostname
    assert retried.retry_of == result.id
    assert retried.result == 3

    # Running the command again sends nothing twice.
    call_command("find_stale_tasks", "--microseconds", "1", "--retry", stdout=io.StringIO(), stderr=io.StringIO())
    assert TaskResultMeta.objects.filter(retry_of=result.id).count() == 1


def test_a_killed_pool_process_is_recorded_as_failure(start_worker: Any) -> None:
    worker = start_worker("pool", concurrency=1)
    result = tasks.kill_own_worker.delay()
    wait_for(lambda: status(result.id) == states.FAILURE, message="the lost task was not recorded")
    record = TaskResultMeta.objects.get(task_id=result.id)
    assert "WorkerLostError" in (record.traceback or "") + repr(record.result)
    # The worker goes on with a new pool process.
    assert tasks.add.delay(1, 2).get(timeout=30) == 3
    assert worker.process is not None and worker.process.poll() is None


def test_acks_late_with_reject_on_worker_lost_requeues_and_finishes(start_worker: Any, tmp_path: Path) -> None:
    start_worker("requeue", concurrency=1)
    marker = tmp_path / "died-once"
    result = tasks.kill_once.delay(str(marker))
    wait_for(lambda: status(result.id) == states.SUCCESS, timeout=60, message="the requeued task did not finish")
    assert marker.exists()
    record = TaskResultMeta.objects.get(task_id=result.id)
    assert record.result == "survived"
    assert TaskResultMeta.objects.filter(task="testcelery.tasks.kill_once").count() == 1


def _terminate_other_backends() -> int:
    """Kill every connection to the test database but this one; how many were killed."""
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute(
                "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            )
            ids = [row[0] for row in cursor.fetchall()]
            for thread_id in ids:
                with contextlib.suppress(DatabaseError):  # it closed on its own meanwhile
                    cursor.execute("KILL CONNECTION %s", [thread_id])
            return len(ids)
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


@pytest.mark.parametrize("always_retry", [False, True], ids=["default", "always_retry"])
def test_worker_connections_killed_while_tasks_run_lose_nothing(start_worker: Any, always_retry: bool) -> None:
    """Every store after a dropped connection is written again on a new one (PostgreSQL, MariaDB)."""
    if connection.vendor not in ("postgresql", "mysql"):
        pytest.skip("PostgreSQL and MariaDB/MySQL only: SQLite has no connections to kill")
    settings = {"FULLDBRESULT_CELERY_RESULT_BACKEND_ALWAYS_RETRY": "true"} if always_retry else {}
    worker = start_worker("dbfault", concurrency=2, **settings)
    sent = [tasks.add.delay(i, i) for i in range(20)]
    wait_for(lambda: all_final([r.id for r in sent]))
    killed = 0
    for round_ in range(10):
        batch = [tasks.add.delay(i, round_) for i in range(20)]
        sent += batch
        # Kill while the batch runs; without always_retry, each store retries
        # once, so the connections are killed once per batch.
        time.sleep(0.05)
        killed += _terminate_other_backends()
        wait_for(lambda batch=batch: all_final([r.id for r in batch]), timeout=60, message="a batch did not finish")
    ids = [r.id for r in sent]
    assert killed > 0
    assert count_in(ids, states.SUCCESS) == len(ids)
    assert TaskResultMeta.objects.filter(task_id__in=ids).count() == len(ids)
    assert worker.process is not None and worker.process.poll() is None


def _restart_postgres() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
    restarted = subprocess.run([*command, "restart"], capture_output=True, text=True)
    if restarted.returncode != 0:
        # Never leave the server down for the tests that follow.
        subprocess.run([*command, "start"], capture_output=True)
        pytest.fail(f"could not restart PostgreSQL: {restarted.stderr}")


@pytest.mark.pg_restart
def test_postgres_restarted_while_a_worker_runs_loses_nothing(start_worker: Any) -> None:
    """With ``result_backend_always_retry``, the worker waits out the restart."""
    postgres_only()
    if not (IN_CI or os.environ.get("FULLDBRESULT_ALLOW_PG_RESTART")) or not os.path.isdir("/etc/postgresql"):
        pytest.skip("restarts the PostgreSQL server: CI only, or FULLDBRESULT_ALLOW_PG_RESTART=1")
    worker = start_worker("pgrestart", concurrency=2, FULLDBRESULT_CELERY_RESULT_BACKEND_ALWAYS_RETRY="true")
    sent = [tasks.sleep.delay(0.05) for _ in range(100)]
    wait_for(lambda: count_in([r.id for r in sent], states.SUCCESS) >= 10)
    try:
        _restart_postgres()
    finally:
        connection.close()  # the test's own connection died with the server
    ids = [r.id for r in sent]
    wait_for(lambda: all_final(ids), timeout=120, interval=0.5, message="results were lost in the restart")
    assert count_in(ids, states.SUCCESS) == len(ids)
    assert worker.process is not None and worker.process.poll() is None


@pytest.mark.django_db(transaction=True)
def test_a_write_that_would_fail_again_is_raised_not_retried() -> None:
    """Code deployed before ``migrate`` (here, a column missing): the error comes back at every try. Under
    ``result_backend_always_retry``, whose default is to retry without limit, a worker was held on that one write
    for good (the backend called every ``OperationalError`` a dropped connection). It is raised at once, and the
    connection, which works, is kept."""
    from django_celery_fulldbresult.result_backends import DatabaseResultBackend
    from testcelery.celery import app

    backend = DatabaseResultBackend(app=app)
    backend.always_retry, backend.max_retries = True, 5
    backend.base_sleep_between_retries_ms = backend.max_sleep_between_retries_ms = 1
    table = connection.ops.quote_name(TaskResultMeta._meta.db_table)
    attempts: list[str] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        attempts.append(sql)
        return execute(sql, params, many, context)

    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME COLUMN hostname TO hostname_gone")
    try:
        with connection.execute_wrapper(count), pytest.raises(DatabaseError) as raised:
            backend.store_result("not-migrated", 1, states.SUCCESS)
        kept = connection.connection
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table} RENAME COLUMN hostname_gone TO hostname")
    assert "hostname" in str(raised.value)
    assert len(attempts) == 1, "tried again on a new connection, or by Celery's retries"
    assert kept is not None and connection.connection is kept
    assert not backend.exception_safe_to_retry(raised.value)
    backend.store_result("not-migrated", 1, states.SUCCESS)  # migrated: written
    assert TaskResultMeta.objects.get(task_id="not-migrated").status == states.SUCCESS


def test_the_guarantees_name_only_tests_that_exist() -> None:
    """The README's "Guarantees" cites each promise's test by name."""
    text = (Path(__file__).resolve().parent.parent / "README.rst").read_text()
    cited = re.findall(r"``(test_\w+\.py)::(test_\w+)``", text)
    assert len(cited) >= 20
    for module, name in cited:
        source = (Path(__file__).resolve().parent / module).read_text()
        assert f"def {name}(" in source, f"{module}::{name}"
