"""DJANGO_CELERY_FULLDBRESULT_OVERRIDE_DJCELERY_ADMIN: django-celery-beat's PeriodicTask admin with "Trigger"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from celery import states
from django.contrib.admin import AdminSite
from django.test import Client
from django.urls import path, reverse
from django.utils.html import escape

from django_celery_fulldbresult.models import TaskResultMeta
from testcelery.celery import app
from tests.conftest import ROOT, wait_for

# Without django-celery-beat (CI's Django 6.1 end) only the system check
# applies: tests/test_admin.py runs that case.
pytest.importorskip("django_celery_beat", reason="the [beat] extra is not installed")

from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from django_celery_fulldbresult.admin_beat import PeriodicTaskAdmin, beat_options, install

# An admin site of this module's own, with the override installed, served by
# ``urlpatterns`` below (``pytest.mark.urls``): the project's admin.site is
# built once at start-up, with the setting off.
site = AdminSite(name="beat_override")
install(site)
urlpatterns = [path("admin/", site.urls)]
CHANGELIST = "beat_override:django_celery_beat_periodictask_changelist"


def periodic_task(name: str = "every minute", **fields: Any) -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    values: dict[str, Any] = {"task": "testcelery.tasks.add", "args": "[20, 22]", "kwargs": "{}", "interval": every}
    values.update(fields)
    return PeriodicTask.objects.create(name=name, **values)


def trigger(client: Client, *tasks: PeriodicTask) -> list[str]:
    data = {"action": "trigger_periodic_tasks", "_selected_action": [str(t.pk) for t in tasks], "index": "0"}
    response = client.post(reverse(CHANGELIST), data, follow=True)
    return [str(message) for message in response.context["messages"]]


@pytest.fixture
def purge_broker() -> Any:
    yield
    app.control.purge()


@pytest.mark.django_db
def test_options_are_the_ones_beat_sends() -> None:
    full = periodic_task(
        "full",
        queue="reports",
        exchange="reports-x",
        routing_key="reports.daily",
        priority=3,
        expire_seconds=300,
        headers=json.dumps({"tenant": "acme"}),
    )
    bare = periodic_task("bare")
    for task in (full, bare):
        entry = ModelEntry(PeriodicTask.objects.get(pk=task.pk), app=app)
        expected = dict(entry.options, headers=dict(entry.options["headers"], celery_beat_task=True))
        assert beat_options(task) == expected
    assert beat_options(full) == {
        "queue": "reports",
        "exchange": "reports-x",
        "routing_key": "reports.daily",
        "priority": 3,
        "expires": 300,
        "headers": {"tenant": "acme", "periodic_task_name": "full", "celery_beat_task": True},
    }


@pytest.mark.urls("tests.test_admin_beat")
@pytest.mark.django_db(transaction=True)
def test_trigger_sends_with_beat_options_and_reports_ids(admin_client: Client, purge_broker: None) -> None:
    first = periodic_task("nightly report", queue="reports", priority=5, expire_seconds=600)
    second = periodic_task("cleanup", task="testcelery.tasks.echo", args='["a"]', kwargs='{"b": 1}')
    [message] = trigger(admin_client, first, second)
    assert message.startswith("Sent 2 periodic tasks, as: ")
    ids = message.split(": ", 1)[1].split(", ")
    records = {r.periodic_task_name: r for r in TaskResultMeta.objects.filter(task_id__in=ids)}
    report, cleanup = records["nightly report"], records["cleanup"]
    assert (report.task, report.queue, report.priority, report.status) == (
        "testcelery.tasks.add",
        "reports",
        5,
        states.PENDING,
    )
    assert report.expires is not None and json.loads(report.args) == [20, 22]
    assert (cleanup.task, json.loads(cleanup.args), json.loads(cleanup.kwargs)) == (
        "testcelery.tasks.echo",
        ["a"],
        {"b": 1},
    )


@pytest.mark.worker
@pytest.mark.urls("tests.test_admin_beat")
@pytest.mark.django_db(transaction=True)
def test_triggered_task_runs_on_a_real_worker(admin_client: Client, start_worker: Any) -> None:
    start_worker()
    [message] = trigger(admin_client, periodic_task("answer"))
    task_id = message.rsplit(" ", 1)[1]
    done = wait_for(lambda: TaskResultMeta.objects.filter(task_id=task_id, status=states.SUCCESS).first())
    assert (done.result, done.periodic_task_name) == (42, "answer")


@pytest.mark.urls("tests.test_admin_beat")
@pytest.mark.django_db
def test_a_task_that_cannot_be_sent_is_reported(admin_client: Client) -> None:
    broken = periodic_task("broken", args="[1, 2")
    assert trigger(admin_client, broken)[0].startswith("1 periodic task was not sent: broken: ")


@pytest.mark.urls("tests.test_admin_beat")
@pytest.mark.django_db
def test_list_truncates_arguments_filters_by_task_and_searches_them(admin_client: Client) -> None:
    long_args = json.dumps(["x" * 200])
    periodic_task("long", args=long_args)
    periodic_task("other", task="testcelery.tasks.echo", kwargs='{"needle": "<b>hay</b>"}')
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert escape(long_args) not in page and escape(long_args[:50]) in page and "…" in page
    assert "&lt;b&gt;hay&lt;/b&gt;" in page and "<b>hay</b>" not in page

    def names(**params: str) -> set[str]:
        return {t.name for t in admin_client.get(reverse(CHANGELIST), params).context["cl"].result_list}

    assert names(task="testcelery.tasks.echo") == {"other"}
    assert names(q="needle") == {"other"}
    assert names(q="xxxx") == {"long"}
    assert names(q="long") == {"long"}
    assert "trigger_periodic_tasks" in dict(
        admin_client.get(reverse(CHANGELIST)).context["action_form"].fields["action"].choices
    )


def run_django(tmp_path: Path, settings_body: str, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "override_settings.py").write_text(textwrap.dedent(settings_body))
    environment = dict(
        os.environ, DJANGO_SETTINGS_MODULE="override_settings", PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", **env
    )
    environment["FULLDBRESULT_VAR"] = str(tmp_path / "var")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_setting_on_replaces_beats_admin_at_start_up(tmp_path: Path) -> None:
    result = run_django(
        tmp_path,
        """
        from testcelery.settings import *
        DJANGO_CELERY_FULLDBRESULT_OVERRIDE_DJCELERY_ADMIN = True
        """,
        """
        import django
        django.setup()
        from django.contrib import admin
        from django_celery_beat.models import PeriodicTask
        print(type(admin.site._registry[PeriodicTask]).__module__)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == PeriodicTaskAdmin.__module__


def test_setting_off_keeps_beats_admin(tmp_path: Path) -> None:
    result = run_django(
        tmp_path,
        "from testcelery.settings import *\n",
        """
        import django
        django.setup()
        from django.contrib import admin
        from django_celery_beat.models import PeriodicTask
        print(type(admin.site._registry[PeriodicTask]).__module__)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "django_celery_beat.admin"
