#!/usr/bin/env python
"""Scale: stale detection, lookups and clean-up on a big table (PostgreSQL).

    .venv/bin/python bench/bench_scale.py --rows 1000000
    .venv/bin/python bench/bench_scale.py --rows 10000000        # takes a while to fill

Fills this project's table and django-celery-results' with the same ``--rows``
rows (``generate_series``; kept between runs of the same size, ``--refill``
forces it): 30 days of tasks, 97 % SUCCESS, 2 % FAILURE, and 0.9 % that
never finished (PENDING, STARTED, RETRY) spread over the same 30 days.

Then, rounds alternating, the milliseconds of:

* ``get_stale_tasks().count()`` and its first page of 100, newest first;
* the same count of unfinished tasks older than an hour on django-celery-results'
  table (the query its users write: ``status NOT IN READY_STATES``);
* a record by task id, on both tables;

with ``EXPLAIN`` of each. Last, the clean-up: ``backend.cleanup()`` (Celery's
``celery.backend_cleanup``) deletes the finished records older than a day in
batches; every DELETE is timed, and its longest is the longest time a lock is
held. django-celery-results' ``cleanup()``, one DELETE in one transaction, is
timed on its table for comparison. The tables are then refilled on the next run.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import parser, setup, statement_timer, versions

DAYS = 30
STATUS_SQL = """CASE
    WHEN i % 1000 < 5 THEN 'PENDING' WHEN i % 1000 < 8 THEN 'STARTED' WHEN i % 1000 = 8 THEN 'RETRY'
    WHEN i % 1000 < 29 THEN 'FAILURE' ELSE 'SUCCESS' END"""
DONE_SQL = "now() - make_interval(secs => (i::float8 * {span} / {rows}))"


def fill(rows: int) -> None:
    from django.db import connection

    span = DAYS * 86400
    done = DONE_SQL.format(span=span, rows=rows)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE django_celery_fulldbresult_taskresultmeta, django_celery_results_taskresult")
        cursor.execute(f"""
            INSERT INTO django_celery_fulldbresult_taskresultmeta (
                task_id, task, status, args, kwargs, not_retryable_reason, content_type, content_encoding,
                result, hostname, exchange, routing_key, queue, retries, root_id,
                date_submitted, date_started, date_done)
            SELECT md5(i::text), 'shop.tasks.job_' || (i % 40), {STATUS_SQL}, '[' || i || ', "EUR"]', '{{}}', '',
                'application/json', 'utf-8', CASE WHEN i % 1000 >= 29 THEN i::text END,
                'celery@worker-' || (i % 8), '', 'celery', 'celery', 0, md5(i::text),
                {done} - interval '2 seconds', {done} - interval '1 second', {done}
            FROM generate_series(1, {rows}) AS i""")
        cursor.execute(f"""
            INSERT INTO django_celery_results_taskresult (
                task_id, task_name, status, task_args, task_kwargs, content_type, content_encoding,
                result, worker, date_created, date_started, date_done)
            SELECT md5(i::text), 'shop.tasks.job_' || (i % 40), {STATUS_SQL}, '"(' || i || ', ''EUR'')"', '"{{}}"',
                'application/json', 'utf-8', CASE WHEN i % 1000 >= 29 THEN i::text END,
                'celery@worker-' || (i % 8), {done} - interval '2 seconds', {done} - interval '1 second', {done}
            FROM generate_series(1, {rows}) AS i""")
    connection.cursor().execute("VACUUM ANALYZE django_celery_fulldbresult_taskresultmeta")
    connection.cursor().execute("VACUUM ANALYZE django_celery_results_taskresult")


def timed(work: Callable[[], Any]) -> float:
    start = time.perf_counter()
    work()
    return 1000 * (time.perf_counter() - start)


def plan(work: Callable[[], Any]) -> str:
    """The plan of the statement ``work`` runs: its scan nodes."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        work()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + captured.captured_queries[-1]["sql"])
        lines = [row[0] for row in cursor.fetchall()]
    scans = [line.strip().lstrip("-> ").split("  (")[0] for line in lines if "Scan" in line]
    return "; ".join(scans) or lines[0]


def queries() -> dict[str, Any]:
    from celery import states
    from django_celery_results.models import TaskResult

    from django_celery_fulldbresult.managers import stale_cutoff
    from django_celery_fulldbresult.models import TaskResultMeta

    stale = TaskResultMeta.objects.get_stale_tasks()
    theirs = TaskResult.objects.exclude(status__in=sorted(states.READY_STATES)).filter(date_done__lt=stale_cutoff())
    task_id = TaskResultMeta.objects.order_by().values_list("task_id", flat=True).first() or "none"
    return {
        "fulldbresult: get_stale_tasks().count()": lambda: stale.count(),
        "fulldbresult: get_stale_tasks(), first 100": lambda: list(stale.order_by("-date_done")[:100]),
        "fulldbresult: record by task id": lambda: TaskResultMeta.objects.get_task(task_id),
        "django-celery-results: unfinished > 1 h, count": lambda: theirs.count(),
        "django-celery-results: record by task id": lambda: TaskResult.objects.filter(task_id=task_id).first(),
    }


def cleanup() -> tuple[int, float, float, int]:
    """Run the backend's clean-up; return (rows deleted, total s, longest DELETE ms, DELETE count)."""
    from django.db import connection

    from bench.celery_app import app
    from django_celery_fulldbresult.models import TaskResultMeta
    from django_celery_fulldbresult.result_backends import DatabaseResultBackend

    app.conf.result_expires = 86400
    backend = DatabaseResultBackend(app=app)
    durations: list[float] = []
    before = TaskResultMeta.objects.count()
    start = time.perf_counter()
    with connection.execute_wrapper(statement_timer(durations, "DELETE")):
        backend.cleanup()
    total = time.perf_counter() - start
    return before - TaskResultMeta.objects.count(), total, max(durations or [0.0]), len(durations)


def their_cleanup() -> tuple[int, float]:
    from django_celery_results.models import TaskResult

    before = TaskResult.objects.count()
    start = time.perf_counter()
    TaskResult.objects.delete_expired(86400)  # one DELETE, in one transaction
    return before - TaskResult.objects.count(), time.perf_counter() - start


def main() -> None:
    p = parser(__doc__.split("\n")[0], dbs=("postgres",))
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--refill", action="store_true")
    p.add_argument("--no-cleanup", action="store_true", help="keep the table (skip the clean-up)")
    args = p.parse_args()
    rows = args.rows or (20000 if args.smoke else 1_000_000)
    rounds = args.rounds or (1 if args.smoke else 7)
    setup(args.db, FDR_BENCH_DB_NAME=f"fdr_bench_scale_{rows}")
    from django_celery_fulldbresult.models import TaskResultMeta

    print(f"bench_scale --rows {rows}: {versions()}")
    if args.refill or TaskResultMeta.objects.count() != rows:
        start = time.perf_counter()
        fill(rows)
        print(f"  filled both tables with {rows} rows in {time.perf_counter() - start:.0f} s")
    named = queries()
    print("\nplans")
    for name, work in named.items():
        print(f"  {name:50s} {plan(work)}")
    times: dict[str, list[float]] = {name: [] for name in named}
    for index in range(rounds):
        order = list(named)
        order = order[index % len(order) :] + order[: index % len(order)]
        for name in order:
            times[name].append(timed(named[name]))
    print(f"\nqueries at {rows} rows (ms, {rounds} rounds; target ≤ 50 ms at 10M rows)")
    for name, values in times.items():
        print(f"  {name:50s} median {statistics.median(values):8.2f}  spread {min(values):.2f}–{max(values):.2f}")
    if args.no_cleanup:
        return
    deleted, total, longest, count = cleanup()
    print(f"\nfulldbresult cleanup(): {deleted} rows in {total:.1f} s, {count} DELETE statements,")
    print(f"  the longest {longest:.0f} ms (target ≤ 1000 ms)")
    deleted, total = their_cleanup()
    print(f"django-celery-results cleanup(): {deleted} rows in {total:.1f} s,")
    print(f"  one DELETE in one transaction: the lock held {1000 * total:.0f} ms")


if __name__ == "__main__":
    main()
