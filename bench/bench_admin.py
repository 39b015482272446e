"""How fast the admin answers on a large table, beside django-celery-results' admin.

    .venv/bin/python bench/bench_admin.py                  # 1,000,000 rows (default)
    .venv/bin/python bench/bench_admin.py --rows 10000     # smaller
    .venv/bin/python bench/bench_admin.py --smoke          # 2,000 rows: does it run?

Fills a PostgreSQL database of its own (``fdr_bench_admin`` unless
``--db-name``) with ``--rows`` task records in one ``INSERT ... SELECT
generate_series`` per table (this app's and django-celery-results'; a table
already holding ``--rows`` rows is kept, so a second run does not refill), then asks
each admin page with Django's test client, logged in as a superuser, and
prints the median time of ``--runs`` requests (after one warm-up), the number
of queries, their total time and the slowest one (of the last request). The time is the whole request handled
in-process: the server's time, without a network or a browser.

The rows look like a busy project's: 20 task names, 5% failures, 0.3% never
finished (stale), one record every two seconds back in time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILL_FULLDBRESULT = """
INSERT INTO django_celery_fulldbresult_taskresultmeta (
    task_id, task, status, args, kwargs, not_retryable_reason, content_type, content_encoding, result,
    traceback, hostname, exchange, routing_key, queue, retries, date_submitted, date_started, date_done)
SELECT
    md5(i::text)::uuid::text,
    'bench.tasks.task_' || lpad((i %% 20)::text, 2, '0'),
    CASE WHEN i %% 1000 = 0 THEN 'PENDING' WHEN i %% 1000 = 1 THEN 'STARTED' WHEN i %% 1000 = 2 THEN 'RETRY'
         WHEN i %% 20 = 3 THEN 'FAILURE' ELSE 'SUCCESS' END,
    '[' || i || ', "x"]', '{"n": ' || i || '}', '', 'application/json', 'utf-8',
    CASE WHEN i %% 20 = 3 THEN '{"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}'
         ELSE '"ok"' END,
    CASE WHEN i %% 20 = 3 THEN 'Traceback (most recent call last):\nValueError: boom' END,
    'bench@host', 'celery', 'celery', 'celery', 0,
    now() - (%(rows)s - i) * interval '2 seconds' - interval '1 second',
    now() - (%(rows)s - i) * interval '2 seconds' - interval '500 milliseconds',
    now() - (%(rows)s - i) * interval '2 seconds'
FROM generate_series(1, %(rows)s) AS i
"""

FILL_RESULTS = """
INSERT INTO django_celery_results_taskresult (
    task_id, task_name, status, task_args, task_kwargs, content_type, content_encoding, result, traceback,
    worker, date_created, date_started, date_done, meta)
SELECT
    md5(i::text)::uuid::text,
    'bench.tasks.task_' || lpad((i %% 20)::text, 2, '0'),
    CASE WHEN i %% 1000 = 0 THEN 'PENDING' WHEN i %% 1000 = 1 THEN 'STARTED' WHEN i %% 1000 = 2 THEN 'RETRY'
         WHEN i %% 20 = 3 THEN 'FAILURE' ELSE 'SUCCESS' END,
    '"(' || i || ', ''x'')"', '"{''n'': ' || i || '}"', 'application/json', 'utf-8',
    CASE WHEN i %% 20 = 3 THEN '{"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}'
         ELSE '"ok"' END,
    CASE WHEN i %% 20 = 3 THEN 'Traceback (most recent call last):\nValueError: boom' END,
    'bench@host',
    now() - (%(rows)s - i) * interval '2 seconds' - interval '1 second',
    now() - (%(rows)s - i) * interval '2 seconds' - interval '500 milliseconds',
    now() - (%(rows)s - i) * interval '2 seconds',
    '{"children": []}'
FROM generate_series(1, %(rows)s) AS i
"""


def setup_django(db_name: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="testcelery.settings",
        FULLDBRESULT_DB="postgres",
        FULLDBRESULT_DB_NAME=db_name,
        DJANGO_DEBUG="0",
    )
    os.environ["FULLDBRESULT_VAR"] = os.environ.get("FDR_BENCH_VAR") or tempfile.mkdtemp(prefix="bench-admin-")
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db_name]).fetchone():
            conn.execute(f'CREATE DATABASE "{db_name}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def fill(table: str, sql: str, rows: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        if cursor.fetchone()[0] == rows:
            print(f"{table}: {rows} rows already there")
            return
        started = time.monotonic()
        cursor.execute(f"TRUNCATE {table}")
        cursor.execute(sql, {"rows": rows})
        cursor.execute(f"VACUUM ANALYZE {table}")
        print(f"{table}: filled {rows} rows in {time.monotonic() - started:.1f} s")


def measure(client: Any, url: str, runs: int) -> tuple[float, int, float, float, int]:
    """(median ms, queries, all queries ms, slowest query ms, status) of ``runs`` requests after a warm-up.

    The queries are those of the last request; ``queries`` counts what Django
    records (transaction statements included), the times are of the SQL
    statements run.
    """
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bench.common import statement_timer

    client.get(url)
    times = []
    query_times: list[float] = []
    for _ in range(runs):
        query_times.clear()
        with CaptureQueriesContext(connection) as queries, connection.execute_wrapper(statement_timer(query_times)):
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
    return (
        statistics.median(times),
        len(queries.captured_queries),
        sum(query_times),
        max(query_times, default=0.0),
        response.status_code,
    )


def pages(model: str, id_filter: str, task_id: str, pk: int, filters: dict[str, str]) -> list[tuple[str, str]]:
    from django.urls import reverse

    changelist = reverse(f"admin:{model}_changelist")
    listed = [("changelist", changelist)]
    listed += [(label, f"{changelist}?{query}") for label, query in filters.items()]
    listed += [
        ("search: task id", f"{changelist}?q={task_id}"),
        ("search: id prefix", f"{changelist}?q={task_id[:8]}"),
        ("task page", reverse(f"admin:{model}_change", args=[pk])),
    ]
    return listed


def bench(rows: int, runs: int, compare: bool) -> None:
    from django.contrib.auth.models import User
    from django.test import Client
    from django_celery_results.models import TaskResult

    from django_celery_fulldbresult.models import TaskResultMeta

    fill("django_celery_fulldbresult_taskresultmeta", FILL_FULLDBRESULT, rows)
    if compare:
        fill("django_celery_results_taskresult", FILL_RESULTS, rows)
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser("bench", password="bench")
    client = Client()
    client.force_login(user)

    middle = TaskResultMeta.objects.order_by().filter(pk__gte=rows // 2).first()
    ours = pages(
        "django_celery_fulldbresult_taskresultmeta",
        "task_id",
        middle.task_id,
        middle.pk,
        {
            "filter: state": "status=FAILURE",
            "filter: name": "task=bench.tasks.task_07",
            "filter: stale": "stale=all",
            "filter: stale kind": "stale=never_started",
            "filter: state + name": "status=FAILURE&task=bench.tasks.task_03",
            "search: name part": "q=task_07",
            "page 50": "p=50",
            "sort: name": "o=2",
            "sort: submitted": "o=-3",
        },
    )
    results: list[tuple[str, str, tuple[float, int, float, float, int]]] = []
    for label, url in ours:
        results.append(("fulldbresult", label, measure(client, url, runs)))
    if compare:
        theirs_record = TaskResult.objects.get(task_id=middle.task_id)
        theirs = pages(
            "django_celery_results_taskresult",
            "task_id",
            theirs_record.task_id,
            theirs_record.pk,
            {"filter: state": "status__exact=FAILURE", "filter: name": "task_name__exact=bench.tasks.task_07"},
        )
        for label, url in theirs:
            results.append(("celery-results", label, measure(client, url, runs)))
    print()
    print(f"{rows:,} rows, PostgreSQL, median of {runs} requests (after a warm-up)")
    header = ("admin", "page", "median ms", "queries", "SQL ms", "slowest SQL ms", "status")
    print("{:<15} {:<20} {:>10} {:>8} {:>7} {:>15} {:>7}".format(*header))
    for admin_name, label, (median, count, sql, slowest, status) in results:
        print(f"{admin_name:<15} {label:<20} {median:>10.1f} {count:>8} {sql:>7.1f} {slowest:>15.1f} {status:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in each table (default: 1,000,000)")
    parser.add_argument("--smoke", action="store_true", help="check that it runs: 2,000 rows, one request a page")
    parser.add_argument("--runs", type=int, default=5, help="requests per page; the median is shown (default: 5)")
    parser.add_argument(
        "--db-name",
        default=os.environ.get("FDR_BENCH_DB_NAME", "fdr_bench_admin"),
        help="the PostgreSQL database to fill, created if missing (default: $FDR_BENCH_DB_NAME or fdr_bench_admin)",
    )
    parser.add_argument("--no-compare", dest="compare", action="store_false", help="skip django-celery-results' admin")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.runs = 2_000, 1
    setup_django(args.db_name)
    bench(args.rows, args.runs, args.compare)


if __name__ == "__main__":
    main()
