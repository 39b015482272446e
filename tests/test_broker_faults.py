"""The broker down at publish time: the caller gets the error, the record is there, a retry sends it.

The shared Redis and RabbitMQ are never stopped: Redis is a ``redis-server``
of the test's own, and a stopped RabbitMQ is a URL to a closed port.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, states
from django.core.management import call_command
from django.test import override_settings
from kombu.exceptions import OperationalError

from django_celery_fulldbresult.managers import NEVER_STARTED
from django_celery_fulldbresult.models import TaskResultMeta

from .conftest import IN_CI, wait_for
from .faults_helpers import RedisServer, broker_app, free_port, status, vhost_url

pytestmark = [pytest.mark.worker, pytest.mark.faults, pytest.mark.services]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if not shutil.which("redis-server"):
        if IN_CI:
            pytest.fail("redis-server is not installed (required in CI)")
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def _publish_fails(app: Celery) -> str:
    """Publish ``add(2, 3)`` to a broker that is down; return the task id the caller was given."""
    task_id = str(uuid.uuid4())
    with override_settings(DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH=True), pytest.raises(OperationalError):
        app.send_task("testcelery.tasks.add", args=(2, 3), task_id=task_id)
    return task_id


def _assert_reported_stale(task_id: str) -> TaskResultMeta:
    record = TaskResultMeta.objects.get(task_id=task_id)
    assert record.status == states.PENDING
    assert record.task == "testcelery.tasks.add"
    assert record.decoded_args == [2, 3]
    stale = TaskResultMeta.objects.get_stale_tasks(timedelta(0)).with_stale_kind(live_workers=[])
    assert stale.get(task_id=task_id).stale_kind == NEVER_STARTED
    out = io.StringIO()
    call_command("find_stale_tasks", "--microseconds", "1", "--format", "json", stdout=out, stderr=io.StringIO())
    listed = {task["task_id"]: task["kind"] for task in json.loads(out.getvalue())["tasks"]}
    assert listed == {task_id: NEVER_STARTED}
    return record


def _retry_succeeds(task_id: str, app: Celery) -> None:
    report = TaskResultMeta.objects.filter(task_id=task_id).retry(app=app)
    assert list(report.sent) == [task_id], report.refused
    new_id = report.sent[task_id]
    wait_for(lambda: status(new_id) == states.SUCCESS, timeout=60, message="the retry did not run")
    assert TaskResultMeta.objects.get(task_id=new_id).result == 5
    assert TaskResultMeta.objects.get(task_id=task_id).retried_as == new_id


def _retry_refused_while_down(task_id: str, app: Celery) -> None:
    report = TaskResultMeta.objects.filter(task_id=task_id).retry(app=app)
    assert not report.sent
    assert "could not be sent" in report.refused[task_id]
    # The claim is undone: the record can be retried once the broker is back.
    assert TaskResultMeta.objects.get(task_id=task_id).retried_as is None
    assert not TaskResultMeta.objects.filter(retry_of=task_id).exists()


def test_redis_stopped_at_publish_then_restarted(start_worker: Any, own_redis: RedisServer) -> None:
    app = broker_app(own_redis.url)
    own_redis.stop()
    task_id = _publish_fails(app)
    _assert_reported_stale(task_id)
    _retry_refused_while_down(task_id, app)

    own_redis.start()
    app = broker_app(own_redis.url)
    start_worker("redis-back", concurrency=1, FULLDBRESULT_BROKER=own_redis.url)
    _retry_succeeds(task_id, app)


def test_rabbitmq_stopped_at_publish_then_back(start_worker: Any, rabbitmq_url: str) -> None:
    down = broker_app(f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    task_id = _publish_fails(down)
    _assert_reported_stale(task_id)
    _retry_refused_while_down(task_id, down)

    url = vhost_url(rabbitmq_url, "fdr_faults")
    start_worker("rabbit-back", concurrency=1, FULLDBRESULT_BROKER=url)
    _retry_succeeds(task_id, broker_app(url))
