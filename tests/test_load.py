"""Load: 10,000 tasks on two workers of four processes each, on Redis and on RabbitMQ, PostgreSQL.

Slow: ``pytest -m load`` selects these tests, ``-m "not load"`` skips them.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from celery import Celery, chord, group, states

from django_celery_fulldbresult.models import TaskResultMeta

from .conftest import wait_for
from .faults_helpers import broker_app, postgres_only, vhost_url

pytestmark = [pytest.mark.worker, pytest.mark.services, pytest.mark.load]

TASKS = 10_000
MEMBERS = 100
SUCCEEDED = re.compile(r"Task testcelery\.tasks\.add\[([0-9a-f-]+)\] succeeded")


def _publish(app: Celery) -> list[str]:
    with app.producer_or_acquire() as producer:
        return [app.send_task("testcelery.tasks.add", (number, 1), producer=producer).id for number in range(TASKS)]


def _finished() -> int:
    return TaskResultMeta.objects.filter(status=states.SUCCESS).count()


def _run_load(start_worker: Any, url: str) -> None:
    postgres_only()
    app = broker_app(url)
    app.control.purge()
    workers = [start_worker(name, concurrency=4, FULLDBRESULT_BROKER=url) for name in ("load-a", "load-b")]
    ids = _publish(app)
    wait_for(lambda: _finished() >= TASKS, timeout=150, interval=1, message="not every task finished")

    assert TaskResultMeta.objects.count() == TASKS
    assert set(TaskResultMeta.objects.values_list("task_id", flat=True)) == set(ids)
    wrong = [
        task_id
        for task_id, args, result in TaskResultMeta.objects.values_list("task_id", "args", "encoded_result")
        if int(result) != int(args.strip("[]").split(",")[0]) + 1
    ]
    assert not wrong
    hosts = Counter(TaskResultMeta.objects.values_list("hostname", flat=True))
    assert set(hosts) == {worker.hostname for worker in workers}

    header = group(app.signature("testcelery.tasks.add", (i, i)) for i in range(MEMBERS)).apply_async()
    assert header.get(timeout=60) == [2 * i for i in range(MEMBERS)]
    summed = chord(app.signature("testcelery.tasks.add", (i, i)) for i in range(MEMBERS))(
        app.signature("testcelery.tasks.tsum")
    )
    assert summed.get(timeout=60) == sum(2 * i for i in range(MEMBERS))
    assert TaskResultMeta.objects.filter(group_id=header.id, status=states.SUCCESS).count() == MEMBERS
    assert TaskResultMeta.objects.exclude(status=states.SUCCESS).count() == 0

    # No task ran twice: the workers' own logs name each task once.
    for worker in workers:
        worker.stop()
    ran = Counter(match for worker in workers for match in SUCCEEDED.findall(worker.output()))
    assert len(ran) == TASKS + 2 * MEMBERS
    assert set(ran.values()) == {1}


def test_10000_tasks_on_redis(start_worker: Any, redis_url: str) -> None:
    _run_load(start_worker, redis_url)


def test_10000_tasks_on_rabbitmq(start_worker: Any, rabbitmq_url: str) -> None:
    _run_load(start_worker, vhost_url(rabbitmq_url, "fdr_faults"))
