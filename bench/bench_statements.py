#!/usr/bin/env python
"""What the state write costs the database, with the driver alone (no Django, no Celery).

    .venv/bin/python bench/bench_statements.py --db postgres    # or mysql, sqlite, all

``bench_store.py`` times the whole path; this one takes the Python of the
backend out, to show what is left between the project's statement and the
raw upsert. Each round writes ``--tasks`` tasks of two state changes
(STARTED, then SUCCESS) on a connection of the driver, in autocommit:

* ``raw upsert``: ``bench_store.py``'s single-row upsert (7 columns replaced, no guard);
* ``state statement``: the project's state write (``upsert._store_state_sql``)
  with its parameters written in by the driver, as Django sends it;
* PostgreSQL only: ``function call``, the same through migration 0003's
  PL/pgSQL function (what the backend sends by default), and
  ``statement, prepared``, the statement prepared by psycopg (what it sends
  with ``OPTIONS["prepare_threshold"]``).

On PostgreSQL the connections run with ``synchronous_commit`` off, so that the
flush to disk, the same for all, does not hide the differences (pass
``--flush`` to keep it). The figures are µs per state write (lower is better).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_store import Raw
from bench.common import alternate, parser, rate, report, run_each, setup, versions


def state_params(task_id: str, state: str) -> list[Any]:
    """The parameters of the state write, as the backend makes them (STARTED carries the arguments)."""
    from django.db import connection
    from django.utils import timezone

    from django_celery_fulldbresult import upsert

    now = timezone.now()
    row: dict[str, Any] = {
        "task_id": task_id, "task": "shop.tasks.send_invoice", "status": state, "retries": 0,
        "content_type": "application/json", "content_encoding": "utf-8", "hostname": "celery@bench-worker-1",
        "exchange": "", "routing_key": "celery", "queue": "celery", "priority": 0, "root_id": task_id,
        "date_done": now,
    }  # fmt: skip
    if state == "STARTED":
        row.update(args='[1234, "EUR", {"lines": [{"sku": "A-1", "qty": 2}]}]', kwargs='{"notify": true}')
        row.update(not_retryable_reason="", date_started=now)
    else:
        row["encoded_result"] = '{"total": 42, "items": ["a", "b", "c"], "ok": true}'
    return upsert._params(connection, upsert.STATE_COLUMNS, [row])


def contenders(db: str, count: int, flush: bool) -> dict[str, Callable[[], float]]:
    from django.db import connection
    from django.utils import timezone

    from django_celery_fulldbresult import upsert

    raw = Raw(db)
    statement = upsert._store_state_sql(connection, 1)
    if db.startswith("sqlite"):
        # The named parameters the backend uses on SQLite, in sqlite3's own spelling.
        statement = upsert._named_placeholders(statement).replace("%(", ":").replace(")s", "")
    connections: dict[str, Any] = {"client": raw.conn}
    if db == "postgres":
        import psycopg

        settings = connection.settings_dict
        conninfo = {"host": settings["HOST"], "user": settings["USER"], "dbname": settings["NAME"], "autocommit": True}
        # Django's default cursor: parameters written into the statement on the client.
        connections["client"] = psycopg.connect(**conninfo, cursor_factory=psycopg.ClientCursor)
        connections["prepared"] = psycopg.connect(**conninfo, prepare_threshold=0)
        if not flush:
            for conn in (raw.conn, *connections.values()):
                conn.execute("SET synchronous_commit TO off")

    def writes(conn: Any, sql: str | None, prepare: bool = False) -> Callable[[], float]:
        def run() -> float:
            ids = [str(uuid.uuid4()) for _ in range(count)]
            if sql is None:
                batches = [(raw.row(i, "STARTED", timezone.now()), raw.row(i, "SUCCESS", timezone.now())) for i in ids]
            else:
                batches = [(state_params(i, "STARTED"), state_params(i, "SUCCESS")) for i in ids]
                if db.startswith("sqlite"):
                    batches = [tuple(dict(zip(map(str, range(len(p))), p, strict=True)) for p in b) for b in batches]
            options = {"prepare": True} if prepare else {}

            def work() -> None:
                cursor = conn.cursor()
                for started, success in batches:
                    cursor.execute(sql or raw.sql, started, **options)
                    cursor.execute(sql or raw.sql, success, **options)
                cursor.close()

            return rate(2 * count, work)

        return run

    found = {
        "raw upsert": writes(raw.conn, None),
        "state statement": writes(connections["client"], statement),
    }
    if db == "postgres":
        found["function call"] = writes(connections["client"], upsert._state_function_call())
        found["statement, prepared"] = writes(connections["prepared"], statement, prepare=True)
    return found


def main() -> None:
    p = parser(__doc__.split("\n")[0], dbs=("postgres", "mysql", "sqlite", "all"))
    p.add_argument("--tasks", type=int, default=None, help="tasks per round (two state writes each)")
    p.add_argument("--flush", action="store_true", help="PostgreSQL: keep synchronous_commit on")
    args = p.parse_args()
    if args.db == "all":
        run_each(__file__, ("postgres", "mysql", "sqlite"), args.smoke)
        return
    tasks = args.tasks or (20 if args.smoke else 300)
    rounds = args.rounds or (1 if args.smoke else 15)
    setup(args.db)
    from django_celery_fulldbresult.models import TaskResultMeta

    TaskResultMeta.objects.all().delete()
    commit = "" if args.db != "postgres" else (", synchronous_commit on" if args.flush else ", synchronous_commit off")
    print(f"bench_statements --db {args.db}{commit}: {versions()}")
    rates = alternate(contenders(args.db, tasks, args.flush), rounds)
    # As µs per write, the unit of the differences looked for here.
    micros = {name: [1e6 / r for r in values] for name, values in rates.items()}
    report(f"state writes with the driver alone, {args.db}, {tasks} tasks × 2 per round", "µs per write", micros)


if __name__ == "__main__":
    main()
