"""``manage.py find_stale_tasks``: the seed's output, and what operations need beyond it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from celery import states
from django.core.management import CommandError, call_command
from django.test.utils import override_settings
from django.utils import timezone

from django_celery_fulldbresult.managers import NEVER_STARTED
from django_celery_fulldbresult.models import TaskResultMeta
from testcelery import tasks

from .conftest import ROOT, wait_for, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


def make(
    task_id: str, task: str, status: str = states.PENDING, age: timedelta = timedelta(hours=2), **fields: Any
) -> TaskResultMeta:
    when = timezone.now() - age
    return TaskResultMeta.objects.create(
        task_id=task_id,
        task=task,
        status=status,
        date_submitted=when,
        date_done=when,
        args="[1, 2]",
        kwargs="{}",
        **fields,
    )


def run(*args: str) -> str:
    out = StringIO()
    call_command("find_stale_tasks", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_seeds_output_format() -> None:
    record = make("cf738350-afe8-44f8-9eac-34721581eb61", "email_workers.tasks.send_email")
    record.date_submitted = datetime(2015, 5, 27, 14, 17, 37, 96366, tzinfo=timezone.get_current_timezone())
    record.save()
    make("fresh", "email_workers.tasks.send_email", age=timedelta(minutes=5))
    assert run("--hours", "1") == (
        "Stale tasks:\n"
        "  2015-05-27 14:17:37.096366+00:00 - cf738350-afe8-44f8-9eac-34721581eb61: email_workers.tasks.send_email\n"
    )


def test_nothing_stale_prints_the_header_only() -> None:
    assert run("--hours", "1") == "Stale tasks:\n"


@pytest.mark.parametrize(
    ("option", "value", "stale"),
    [
        ("--weeks", "1", False),
        ("--days", "1", False),
        ("--hours", "1", True),
        ("--minutes", "90", True),
        ("--seconds", "7000", True),
        ("--microseconds", "7300000000", False),
    ],
)
def test_every_unit_of_the_seed_is_accepted(option: str, value: str, stale: bool) -> None:
    make("two-hours-old", "app.work")
    assert ("two-hours-old" in run(option, value)) is stale


def test_units_add_up() -> None:
    make("two-hours-old", "app.work")
    assert "two-hours-old" not in run("--hours", "1", "--minutes", "61")
    assert "two-hours-old" in run("--hours", "1", "--minutes", "59")


def test_terminal_states_are_repeatable() -> None:
    make("started", "app.work", states.STARTED)
    make("revoked", "app.work", states.REVOKED)
    output = run("--hours", "1", "--terminal-state", "SUCCESS", "--terminal-state", "STARTED")
    assert "revoked" in output and "started" not in output


def test_filter_by_task_name_and_queue() -> None:
    make("mail", "app.send_mail", queue="mail")
    make("report", "app.build_report", queue="reports")
    assert "mail" in run("--task", "app.send_mail") and "report" not in run("--task", "app.send_mail")
    assert "report" in run("--queue", "reports") and "mail:" not in run("--queue", "reports")


def test_json_output_is_one_document_with_the_kind() -> None:
    make("lost", "app.work")
    document = json.loads(run("--hours", "1", "--format", "json"))
    assert document["count"] == 1
    task = document["tasks"][0]
    assert task["task_id"] == "lost"
    assert task["task"] == "app.work"
    assert task["status"] == states.PENDING
    assert task["kind"] == NEVER_STARTED
    assert document["window_seconds"] == 3600


def test_a_window_of_zero_is_zero_not_the_default() -> None:
    make("a-minute-old", "app.work", age=timedelta(minutes=1))
    document = json.loads(run("--hours", "0", "--format", "json"))
    assert document["window_seconds"] == 0
    assert [task["task_id"] for task in document["tasks"]] == ["a-minute-old"]
    assert json.loads(run("--format", "json"))["window_seconds"] == 3600  # no unit given: the default


def test_text_output_can_name_the_kind() -> None:
    make("lost", "app.work")
    assert run("--kind").endswith(": app.work [never_started]\n")


@pytest.mark.parametrize(
    "args",
    [
        ["--hours", "-1"],
        ["--days", "abc"],
        ["--weeks", "1e300"],
        ["--weeks", "100000"],
        ["--seconds", "nan"],
        ["--seconds", "inf"],
        ["--limit", "0"],
        ["--format", "xml"],
    ],
)
def test_bad_options_are_a_clear_command_error(args: list[str]) -> None:
    with pytest.raises(CommandError):
        call_command("find_stale_tasks", *args, stdout=StringIO(), stderr=StringIO())


def test_fail_if_found_exits_1_for_cron_jobs_and_probes() -> None:
    env = worker_env()
    command = [sys.executable, "manage.py", "find_stale_tasks", "--hours", "1", "--fail-if-found"]
    clean = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout == "Stale tasks:\n"
    make("lost", "app.work")
    found = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert found.returncode == 1
    assert "lost: app.work" in found.stdout
    assert "1 stale task found." in found.stderr


@pytest.mark.worker
def test_retry_sends_each_stale_task_once(worker: Any) -> None:
    make("lost-1", "testcelery.tasks.add", queue="celery")
    make("lost-2", "testcelery.tasks.add", queue="celery")
    # A task the live worker runs (slow, not lost), and one it does not run: STARTED under its name by a worker
    # killed with it and started again as the same name.
    running = tasks.sleep.delay(120)  # (revoked at the end)
    wait_for(lambda: TaskResultMeta.objects.filter(task_id=running.id, status=states.STARTED).exists())
    TaskResultMeta.objects.filter(task_id=running.id).update(date_done=timezone.now() - timedelta(hours=2))
    make("restarted", "testcelery.tasks.add", states.STARTED, hostname=worker.hostname, queue="celery")
    with override_settings(DJANGO_CELERY_FULLDBRESULT_WORKER_PING_TIMEOUT=5):
        output = run("--hours", "1", "--retry")
    assert f"Retried {running.id}" not in output
    assert not TaskResultMeta.objects.filter(retry_of=running.id).exists()
    assert "Retried restarted as " in output
    assert "Retried lost-1 as " in output and "Retried lost-2 as " in output
    new_ids = TaskResultMeta.objects.filter(retry_of__in=["lost-1", "lost-2", "restarted"]).values_list(
        "task_id", flat=True
    )
    assert len(new_ids) == 3
    wait_for(lambda: TaskResultMeta.objects.filter(task_id__in=new_ids, status=states.SUCCESS).count() == 3)
    assert {r.result for r in TaskResultMeta.objects.filter(task_id__in=new_ids)} == {3}

    err, out = StringIO(), StringIO()
    with override_settings(DJANGO_CELERY_FULLDBRESULT_WORKER_PING_TIMEOUT=5):
        call_command("find_stale_tasks", "--hours", "1", "--retry", stdout=out, stderr=err)
    assert "lost-1" not in out.getvalue() + err.getvalue(), "retried already: left out"
    assert running.id not in out.getvalue() + err.getvalue(), "running: left out"
    assert running.id in run("--hours", "1", "--kind"), "listed without --retry"
    assert TaskResultMeta.objects.filter(retry_of__in=["lost-1", "lost-2"]).count() == 2

    # A probe after the retry: the originals were dealt with; only what is still lost counts.
    assert "lost-1" in run("--hours", "1")
    with pytest.raises(CommandError, match="1 stale task found"):
        run("--hours", "1", "--not-retried", "--fail-if-found")  # the slow one, still running
    running.revoke(terminate=True)


def test_retry_with_a_limit_moves_on_to_the_tasks_not_retried_yet(parked: str) -> None:
    """A cron job's ``--retry --limit 2``: the oldest two are sent, and the next run sends the next two (the
    originals stay unfinished, oldest first: they took the limit's places at every run, for good)."""
    make("redacted", "testcelery.tasks.add", queue=parked, age=timedelta(hours=4), not_retryable_reason="redacted")
    for i in range(4):
        make(f"old-{i}", "testcelery.tasks.add", queue=parked, age=timedelta(hours=3, minutes=-i))
    first = run("--hours", "1", "--retry", "--limit", "2")
    second = run("--hours", "1", "--retry", "--limit", "2")
    assert "Retried old-0 as " in first and "Retried old-1 as " in first
    assert "Retried old-2 as " in second and "Retried old-3 as " in second
    assert TaskResultMeta.objects.filter(retry_of__startswith="old-").count() == 4


def test_retry_exits_1_when_the_broker_fails_the_sends() -> None:
    """Nothing could be sent (the broker is down): a cron job must see a failure, not "done"."""
    make("lost-while-down", "testcelery.tasks.add", queue="celery")
    env = worker_env(FULLDBRESULT_BROKER="redis://127.0.0.1:1/0", WORKER_PING_TIMEOUT=0.5)
    command = [sys.executable, "manage.py", "find_stale_tasks", "--hours", "1", "--retry"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Not retried lost-while-down: could not be sent" in done.stderr
    assert "1 stale task could not be sent again" in done.stderr
    record = TaskResultMeta.objects.get(task_id="lost-while-down")
    assert record.retried_as is None, "its claim was given back: the next run sends it"
