"""Races between processes: the publisher's write after the worker's, two retries at once."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import states
from celery.signals import before_task_publish
from django.db.models import F

from django_celery_fulldbresult.models import TaskResultMeta
from django_celery_fulldbresult.publish import already_recorded, published_row, write_records
from testcelery import tasks
from testcelery.celery import app

from .conftest import wait_for
from .faults_helpers import all_final, count_in, run_django, status

pytestmark = pytest.mark.worker

COUNT = 1000


@pytest.mark.load
def test_a_late_publish_write_never_sends_a_record_backwards(worker: Any) -> None:
    """1,000 tasks whose PENDING writes land while, or after, the worker writes their results.

    The publish handler normally writes before the message leaves; here its
    rows are held back and written late, as a slow database or a publisher
    paused between the send and the write would.
    """
    ids = [str(uuid.uuid4()) for _ in range(COUNT)]
    held: list[dict[str, Any]] = []

    def hold(
        sender: Any = None,
        body: Any = None,
        exchange: Any = None,
        routing_key: Any = None,
        headers: Any = None,
        properties: Any = None,
        declare: Any = None,
        **kwargs: Any,
    ) -> None:
        held.append(published_row(body, exchange, routing_key, headers or {}, properties or {}, declare))

    before_task_publish.connect(hold, weak=False, dispatch_uid="test_races.hold")
    try:
        with already_recorded(ids), app.producer_or_acquire() as producer:
            for number, task_id in enumerate(ids):
                tasks.add.apply_async((number, 1), task_id=task_id, producer=producer)
    finally:
        before_task_publish.disconnect(dispatch_uid="test_races.hold")
    assert len(held) == COUNT

    # Half of the late writes land while the worker runs the tasks...
    for start in range(0, COUNT // 2, 50):
        write_records(held[start : start + 50])
    wait_for(lambda: all_final(ids), timeout=180, interval=0.5, message="not every task finished")
    # ... and the rest after every task finished.
    write_records(held[COUNT // 2 :])

    assert TaskResultMeta.objects.count() == COUNT
    assert count_in(ids, states.SUCCESS) == COUNT
    # The late writes found every record there and changed nothing in them but
    # the submission time, which the worker does not know.
    late = TaskResultMeta.objects.filter(task_id__in=ids[COUNT // 2 :])
    assert late.filter(date_submitted__isnull=False, date_submitted__lte=F("date_started")).count() == COUNT // 2
    results = dict(TaskResultMeta.objects.values_list("task_id", "encoded_result"))
    assert all(json.loads(results[task_id]) == number + 1 for number, task_id in enumerate(ids))


@pytest.mark.load
def test_the_publishers_write_and_the_worker_race_on_1000_tasks(worker: Any) -> None:
    """The ordinary path, with the worker consuming while the publisher writes."""
    with app.producer_or_acquire() as producer:
        sent = [tasks.add.apply_async((i, i), producer=producer) for i in range(COUNT)]
    ids = [r.id for r in sent]
    wait_for(lambda: all_final(ids), timeout=180, interval=0.5, message="not every task finished")
    assert count_in(ids, states.SUCCESS) == COUNT
    assert TaskResultMeta.objects.count() == COUNT
    assert TaskResultMeta.objects.filter(date_submitted__isnull=True).count() == 0


RETRY_AT_ONCE = """
import json, os, time
from pathlib import Path
from django_celery_fulldbresult.models import TaskResultMeta
Path(os.environ["READY"]).touch()
go = Path(os.environ["GO"])
while not go.exists():
    time.sleep(0.001)
report = TaskResultMeta.objects.filter(task_id__in=json.loads(os.environ["TASK_IDS"])).retry()
print(json.dumps({"sent": report.sent, "refused": report.refused}))
"""


def _retry_at_once(tmp_path: Path, task_ids: list[str]) -> list[dict[str, dict[str, str]]]:
    """Two processes retry the same records at the same moment; their reports."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in (1, 2)]
    processes = [
        run_django(RETRY_AT_ONCE, TASK_IDS=json.dumps(task_ids), READY=str(path), GO=str(go)) for path in ready
    ]
    wait_for(lambda: all(path.exists() for path in ready), timeout=60, message="retriers not ready")
    go.touch()
    reports = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def test_two_processes_retrying_one_record_at_once_send_it_once(worker: Any, tmp_path: Path) -> None:
    original = tasks.add.delay(20, 22)
    assert original.get(timeout=30) == 42
    reports = _retry_at_once(tmp_path, [original.id])

    sent = [report["sent"][original.id] for report in reports if report["sent"]]
    assert len(sent) == 1, reports
    refused = [report["refused"][original.id] for report in reports if report["refused"]]
    assert len(refused) == 1, reports
    assert TaskResultMeta.objects.get(task_id=original.id).retried_as == sent[0]
    assert list(TaskResultMeta.objects.filter(retry_of=original.id).values_list("task_id", flat=True)) == sent
    wait_for(lambda: status(sent[0]) == states.SUCCESS, message="the retry did not run")
    # A second send would have written its own PENDING record before leaving.
    assert TaskResultMeta.objects.count() == 2


def test_two_processes_retrying_200_records_at_once_send_each_once(worker: Any, tmp_path: Path) -> None:
    originals = [tasks.add.delay(i, i) for i in range(200)]
    ids = [result.id for result in originals]
    wait_for(lambda: all_final(ids), timeout=60)
    reports = _retry_at_once(tmp_path, ids)

    first, second = (report["sent"] for report in reports)
    assert not set(first) & set(second), "a record was sent by both"
    assert set(first) | set(second) == set(ids)
    sent = {**first, **second}
    assert dict(TaskResultMeta.objects.filter(task_id__in=ids).values_list("task_id", "retried_as")) == sent
    assert dict(TaskResultMeta.objects.filter(retry_of__isnull=False).values_list("retry_of", "task_id")) == sent
    wait_for(lambda: all_final(list(sent.values())), timeout=60, message="the retries did not run")
    assert count_in(list(sent.values()), states.SUCCESS) == len(ids)
    assert TaskResultMeta.objects.count() == 2 * len(ids)
