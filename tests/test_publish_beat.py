"""Beat's sends are recorded at publication, with the periodic task's name."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from celery import states

from django_celery_fulldbresult.models import TaskResultMeta
from testcelery.celery import app

from .conftest import ROOT, wait_for, worker_env

pytest.importorskip(
    "django_celery_beat", reason="the [beat] extra is not installed (Django 6.1: beat 2.9 declares Django<6.1)"
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_a_periodic_task_sent_by_a_real_beat_is_recorded(tmp_path: Any) -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="nightly-report", task="testcelery.tasks.add", args="[40, 2]", interval=every_second, queue="beat-parked"
    )
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "testcelery", "beat", "-l", "INFO",
         "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--pidfile", str(tmp_path / "beat.pid")],
        cwd=ROOT, env=worker_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        record = wait_for(
            lambda: TaskResultMeta.objects.filter(periodic_task_name="nightly-report").first(), timeout=60
        )
    finally:
        beat.terminate()
        beat.wait(15)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge("beat-parked")
    assert record.status == states.PENDING
    assert record.task == "testcelery.tasks.add"
    assert record.args == "[40, 2]"
    assert record.queue == "beat-parked"
    assert record.date_submitted is not None
