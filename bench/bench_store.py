#!/usr/bin/env python
"""State changes per second through the result backend, this project vs django-celery-results.

    .venv/bin/python bench/bench_store.py --db postgres     # or sqlite, sqlite-wal, mysql
    .venv/bin/python bench/bench_store.py --db all          # the four, one after the other

Each round writes ``--tasks`` tasks of two state changes each (STARTED, then
SUCCESS), as a worker with ``task_track_started`` does, through:

* ``fulldbresult``: ``DatabaseResultBackend.store_result``;
* ``django-celery-results``: its ``DatabaseBackend.store_result``, with
  ``result_extended=True``;
* on PostgreSQL, ``fulldbresult`` (which calls migration 0003's PL/pgSQL
  function there) again with the statement itself sent instead, as Django
  sends statements (parsed and planned at each call); with psycopg's prepared statements
  turned on (``DATABASES[...]["OPTIONS"]["prepare_threshold"] = 5``; Django
  leaves them off), and with ``UNFINISHED_SYNCHRONOUS_COMMIT = False``
  (STARTED does not wait for the disk flush, SUCCESS does);
* ``raw upsert``: a single-row upsert of the same columns into the same table
  with the database driver alone (psycopg / sqlite3 / MySQLdb, autocommit):
  the limit a Django app can approach.

The same request (a worker's, with arguments, delivery info, hostname...)
goes to both backends; the contenders alternate, round by round. The figures
are state changes per second; the queries per state change are counted with
``CaptureQueriesContext`` (BEGIN and COMMIT included).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DBS, alternate, parser, rate, report, run_each, setup, versions

RESULT = {"total": 42, "items": ["a", "b", "c"], "ok": True}


def request(app: Any, task_id: str) -> Any:
    """A worker's request for ``task_id``, as Celery builds it from a protocol 2 message."""
    from celery.app.task import Context

    return Context(
        id=task_id,
        task="shop.tasks.send_invoice",
        args=[1234, "EUR", {"lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]}],
        kwargs={"notify": True, "locale": "fr_FR"},
        argsrepr="[1234, 'EUR', {...}]",
        kwargsrepr="{'notify': True, 'locale': 'fr_FR'}",
        delivery_info={"exchange": "", "routing_key": "celery", "priority": 0, "redelivered": False},
        hostname="celery@bench-worker-1",
        retries=0,
        eta=None,
        expires=None,
        parent_id=None,
        root_id=task_id,
        group=None,
        is_eager=False,
        reply_to="abc",
        correlation_id=task_id,
        periodic_task_name=None,
        children=[],
        app=app,
    )


def backends() -> tuple[Any, Any, Any]:
    from celery import Celery
    from django_celery_results.backends import DatabaseBackend

    from django_celery_fulldbresult.result_backends import DatabaseResultBackend

    app = Celery("bench-store", set_as_current=True)
    app.conf.result_extended = True
    app.conf.task_track_started = True
    return app, DatabaseResultBackend(app=app), DatabaseBackend(app=app)


def through_backend(
    app: Any, backend: Any, count: int, synchronous: bool = True, prepare: bool = False, function: bool = True
) -> Callable[[], float]:
    """``synchronous=False``: ``UNFINISHED_SYNCHRONOUS_COMMIT = False``; ``prepare``: ``prepare_threshold = 5``;
    ``function=False``: the state statement itself, not migration 0003's function (PostgreSQL)."""
    from celery import states
    from django.conf import settings
    from django.db import connection

    from django_celery_fulldbresult import upsert

    usable = upsert._state_function_usable

    def run() -> float:
        upsert._state_function_usable = usable if function else lambda connection: False  # type: ignore[assignment]
        settings.DJANGO_CELERY_FULLDBRESULT_UNFINISHED_SYNCHRONOUS_COMMIT = synchronous
        options = connection.settings_dict["OPTIONS"]
        if prepare != ("prepare_threshold" in options):
            # A new connection with the other option, as the project's settings would make it.
            connection.close()
            if prepare:
                options["prepare_threshold"] = 5
            else:
                del options["prepare_threshold"]
        requests = [request(app, str(uuid.uuid4())) for _ in range(count)]

        def work() -> None:
            for req in requests:
                backend.store_result(req.id, None, states.STARTED, request=req)
                backend.store_result(req.id, RESULT, states.SUCCESS, request=req)

        return rate(2 * count, work)

    return run


class Raw:
    """The same columns, one single-row upsert per state change, with the driver alone."""

    def __init__(self, db: str) -> None:
        from django.db import connection

        from django_celery_fulldbresult.models import TaskResultMeta

        self.db = db
        meta = TaskResultMeta._meta
        self.columns = [f.column for f in meta.concrete_fields if f.column not in ("id", "retry_of", "retried_as")]
        replaced = ["status", "result", "content_type", "content_encoding", "traceback", "retries", "date_done"]
        settings = connection.settings_dict
        cols = ", ".join(self.columns)
        marks = ", ".join(["?" if db.startswith("sqlite") else "%s"] * len(self.columns))
        insert = f"INSERT INTO {meta.db_table} ({cols}) VALUES ({marks})"
        if db == "mysql":
            import MySQLdb

            self.conn = MySQLdb.connect(
                host=settings["HOST"], user=settings["USER"], passwd="", db=settings["NAME"], charset="utf8mb4"
            )
            self.conn.autocommit(True)
            self.sql = f"{insert} ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in replaced)
        else:
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in replaced)
            self.sql = f"{insert} ON CONFLICT (task_id) DO UPDATE SET {sets}"
            if db == "postgres":
                import psycopg

                self.conn = psycopg.connect(
                    host=settings["HOST"], user=settings["USER"], dbname=settings["NAME"], autocommit=True
                )
            else:
                import sqlite3

                self.conn = sqlite3.connect(settings["NAME"], isolation_level=None, timeout=30)
                if db == "sqlite-wal":
                    self.conn.execute("PRAGMA journal_mode=WAL")
                    self.conn.execute("PRAGMA synchronous=NORMAL")

    def row(self, task_id: str, status: str, now: Any) -> list[Any]:
        import json

        when: Any = (
            now.isoformat() if self.db.startswith("sqlite") else now.replace(tzinfo=None) if self.db == "mysql" else now
        )
        values = {
            "task_id": task_id, "task": "shop.tasks.send_invoice", "status": status,
            "args": '[1234, "EUR", {"lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]}]',
            "kwargs": '{"notify": true, "locale": "fr_FR"}', "not_retryable_reason": "",
            "content_type": "application/json", "content_encoding": "utf-8",
            "result": json.dumps(RESULT) if status == "SUCCESS" else None, "traceback": None, "meta": None,
            "hostname": "celery@bench-worker-1", "exchange": "", "routing_key": "celery", "queue": "celery",
            "priority": 0, "eta": None, "expires": None, "retries": 0, "parent_id": None, "root_id": task_id,
            "group_id": None, "periodic_task_name": None, "date_submitted": None,
            "date_started": when if status == "STARTED" else None, "date_done": when,
        }  # fmt: skip
        return [values[c] for c in self.columns]

    def runner(self, count: int) -> Callable[[], float]:
        from django.utils import timezone

        def run() -> float:
            ids = [str(uuid.uuid4()) for _ in range(count)]

            def work() -> None:
                cursor = self.conn.cursor()
                for task_id in ids:
                    cursor.execute(self.sql, self.row(task_id, "STARTED", timezone.now()))
                    cursor.execute(self.sql, self.row(task_id, "SUCCESS", timezone.now()))
                cursor.close()

            return rate(2 * count, work)

        return run


def round_trips(app: Any, backend: Any) -> list[tuple[int, str]]:
    """Round-trips of a new task's STARTED, then of its SUCCESS.

    Django logs BEGIN and COMMIT with the statements (``CaptureQueriesContext``
    sees them), so each captured query is one round-trip.
    """
    from celery import states
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    req = request(app, str(uuid.uuid4()))
    counted = []
    for state, result in ((states.STARTED, None), (states.SUCCESS, RESULT)):
        with CaptureQueriesContext(connection) as captured:
            backend.store_result(req.id, result, state, request=req)
        words = [q["sql"].split(" ")[0] for q in captured.captured_queries]
        counted.append((len(words), " ".join(words)))
    return counted


def main() -> None:
    p = parser(__doc__.split("\n")[0], dbs=(*DBS, "all"))
    p.add_argument("--tasks", type=int, default=None, help="tasks per round (two state changes each)")
    args = p.parse_args()
    if args.db == "all":
        run_each(__file__, DBS, args.smoke)
        return
    tasks = args.tasks or (20 if args.smoke else 500)
    rounds = args.rounds or (1 if args.smoke else 7)
    setup(args.db)
    from django_celery_results.models import TaskResult

    from django_celery_fulldbresult.models import TaskResultMeta

    TaskResultMeta.objects.all().delete()
    TaskResult.objects.all().delete()
    app, ours, theirs = backends()
    print(f"bench_store --db {args.db}: {versions()}")
    for name, backend in (("fulldbresult", ours), ("django-celery-results", theirs)):
        (started, s_words), (success, d_words) = round_trips(app, backend)
        print(f"  round-trips, {name}: STARTED of a new task {started} ({s_words}), SUCCESS {success} ({d_words})")
    raw = Raw(args.db)
    contenders = {
        "fulldbresult": through_backend(app, ours, tasks),
        "django-celery-results": through_backend(app, theirs, tasks),
        "raw upsert (driver)": raw.runner(tasks),
    }
    if args.db == "postgres":
        # The statement itself, not the function: what a process that finds no function sends.
        contenders["fulldbresult, statement (no function)"] = through_backend(app, ours, tasks, function=False)
        # Django's option for psycopg's prepared statements (off by default, for PgBouncer).
        contenders["fulldbresult, prepare_threshold = 5"] = through_backend(app, ours, tasks, prepare=True)
        # STARTED committed without waiting for the disk flush; SUCCESS waits (and flushes both).
        contenders["fulldbresult, UNFINISHED_SYNCHRONOUS_COMMIT off"] = through_backend(app, ours, tasks, False)
    rates = alternate(contenders, rounds)
    report(
        f"store_result, {args.db}, {tasks} tasks × 2 state changes per round",
        "state changes/s",
        rates,
        "django-celery-results",
    )
    from statistics import median

    share = median(rates["fulldbresult"]) / median(rates["raw upsert (driver)"])
    print(f"  fulldbresult / raw upsert: {100 * share:.0f}%")


if __name__ == "__main__":
    main()
