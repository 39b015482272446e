#!/usr/bin/env python
"""Retry at volume: 10,000 stale records sent again, Redis broker (db 9), PostgreSQL.

    .venv/bin/python bench/bench_retry.py                  # 10,000 records, 3 rounds
    .venv/bin/python bench/bench_retry.py --records 2000 --db sqlite-wal

Contenders, alternating round by round, each on ``--records`` fresh stale
records (PENDING, last change two hours ago, arguments recorded):

* ``QuerySet.retry()``: ``TaskResultMeta.objects.filter(...).retry()``;
* ``find_stale_tasks --retry``: the management command;
* ``send_task loop``: the same messages sent with ``app.send_task`` and a
  shared producer, no records read or written: the floor for sending them.

django-celery-results has no retry (its records keep ``repr()`` text of the
arguments, which cannot be sent again), so the floor stands in for it.
Messages go to a queue no worker consumes; it is purged after each round.
Target: 10,000 records in ≤ 10 s.
"""

from __future__ import annotations

import atexit
import io
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import drop_queue, own_queue, parser, purge, setup, versions

QUEUE = own_queue("fdr-bench-retry")


def make_records(count: int) -> None:
    from django.utils import timezone

    from django_celery_fulldbresult.models import TaskResultMeta

    TaskResultMeta.objects.all().delete()
    old = timezone.now() - timedelta(hours=2)
    TaskResultMeta.objects.bulk_create(
        [
            TaskResultMeta(
                task_id=f"stale-{i}",
                task="bench.noop",
                status="PENDING",
                args=f"[{i}]",
                kwargs='{"payload": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}',
                queue=QUEUE,
                routing_key=QUEUE,
                exchange="",
                date_submitted=old,
                date_done=old,
            )
            for i in range(count)
        ],
        batch_size=1000,
    )


def by_queryset(count: int) -> float:
    from django_celery_fulldbresult.models import TaskResultMeta

    start = time.perf_counter()
    report = TaskResultMeta.objects.filter(task_id__startswith="stale-").retry()
    elapsed = time.perf_counter() - start
    assert len(report.sent) == count, report.refused and next(iter(report.refused.values()))
    return elapsed


def by_command(count: int) -> float:
    from django.core.management import call_command

    from django_celery_fulldbresult.models import TaskResultMeta

    start = time.perf_counter()
    call_command("find_stale_tasks", "--retry", stdout=io.StringIO(), stderr=io.StringIO())
    elapsed = time.perf_counter() - start
    sent = TaskResultMeta.objects.filter(task_id__startswith="stale-", retried_as__isnull=False).count()
    assert sent == count, f"{sent} of {count} sent"
    return elapsed


def send_loop(count: int) -> float:
    import json

    from django.conf import settings

    from bench.celery_app import app
    from django_celery_fulldbresult.models import TaskResultMeta

    rows = list(TaskResultMeta.objects.values_list("task", "args", "kwargs", "queue"))
    settings.DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH = False  # no record written: the floor
    start = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for name, args, kwargs, queue in rows:
            app.send_task(name, args=json.loads(args), kwargs=json.loads(kwargs), queue=queue, producer=producer)
    elapsed = time.perf_counter() - start
    settings.DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH = True
    return elapsed


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=None)
    args = p.parse_args()
    count = args.records or (100 if args.smoke else 10_000)
    rounds = args.rounds or (1 if args.smoke else 3)
    setup(args.db)
    from django.conf import settings

    from bench.celery_app import app

    atexit.register(drop_queue, app, QUEUE)
    settings.DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH = True  # as in production: retry writes its records itself
    app.set_current()
    print(f"bench_retry --db {args.db}, {count} records, broker {app.conf.broker_url}: {versions()}")
    contenders: dict[str, Callable[[int], float]] = {
        "QuerySet.retry()": by_queryset,
        "find_stale_tasks --retry": by_command,
        "send_task loop (floor)": send_loop,
    }
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for index in range(rounds):
        for name in names[index % 3 :] + names[: index % 3]:
            make_records(count)
            purge(app, QUEUE)
            seconds[name].append(contenders[name](count))
            purge(app, QUEUE)
    print(f"\nseconds to send {count} records again ({rounds} rounds; target ≤ 10 s for 10,000)")
    for name, values in seconds.items():
        med = statistics.median(values)
        spread = f"{min(values):.2f}–{max(values):.2f}"
        print(f"  {name:28s} median {med:7.2f} s  spread {spread}  ({count / med:.0f} records/s)")
    from django_celery_fulldbresult.models import TaskResultMeta

    TaskResultMeta.objects.all().delete()


if __name__ == "__main__":
    main()
