"""``find_stale_tasks --retry`` shows progress on a terminal and nothing of it when piped."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery import states
from django.utils import timezone

from django_celery_fulldbresult.models import TaskResultMeta
from testcelery.celery import app

from .conftest import ROOT, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

COUNT = 150  # progress shows from 100 records on


@pytest.fixture
def stale_queue() -> Iterator[str]:
    """COUNT stale records on a queue no worker listens to; the queue is emptied at the end."""
    queue = f"progress-{uuid.uuid4().hex[:8]}"
    old = timezone.now() - timedelta(hours=2)
    TaskResultMeta.objects.bulk_create(
        TaskResultMeta(
            task_id=str(uuid.uuid4()),
            task="testcelery.tasks.add",
            status=states.PENDING,
            args="[1, 2]",
            kwargs="{}",
            queue=queue,
            date_done=old,
        )
        for _ in range(COUNT)
    )
    yield queue
    with app.connection_for_write() as connection:
        try:
            connection.default_channel.queue_purge(queue)
        except connection.channel_errors:
            return  # RabbitMQ refuses to purge a queue nothing was sent to


def command(queue: str) -> list[str]:
    return [sys.executable, "manage.py", "find_stale_tasks", "--hours", "1", "--queue", queue, "--retry"]


def test_progress_on_a_terminal(stale_queue: str) -> None:
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        command(stale_queue), cwd=ROOT, env=worker_env(), stdout=subprocess.DEVNULL, stderr=follower
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes when the command exits
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert process.wait(120) == 0, seen
    assert f"Retrying: {COUNT}/{COUNT}".encode() in seen


def test_quiet_when_piped(stale_queue: str) -> None:
    done = subprocess.run(command(stale_queue), cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Retrying" not in done.stderr
    assert done.stdout.count("Retried ") == COUNT
