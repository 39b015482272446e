#!/usr/bin/env python
"""End to end: a real prefork worker (2 processes), Redis broker, PostgreSQL: tasks per second.

    .venv/bin/python bench/bench_worker.py                 # 5,000 tasks per round
    .venv/bin/python bench/bench_worker.py --tasks 2000 --rounds 3

Contenders, in the same run, alternating round by round:

* ``fulldbresult``: this project's backend, with ``CELERY_DB_REUSE_MAX = 1000``
  (the setting this project's README and system check ask for);
* ``fulldbresult, no DB_REUSE``: the same at Celery's defaults;
* ``django-celery-results``: its backend at its defaults (``CONN_MAX_AGE = 0``,
  no ``CELERY_DB_REUSE_MAX``), ``result_extended = True``;
* ``django-celery-results + DB_REUSE``: the same with ``CELERY_DB_REUSE_MAX``;
* ``results ignored``: ``task_ignore_result = True``, the ceiling.

Each round fills the queue with ``--tasks`` messages while no worker runs,
starts a worker, and times it from the moment it has taken its first 50
messages to the moment the queue is empty (worker start-up is not counted).
The database sessions opened during the round (PostgreSQL's
``pg_stat_database.sessions``) show whether the worker reconnects per task.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import alternate, drop_queue, own_queue, parser, report, setup, versions  # noqa: E402

QUEUE = own_queue("fdr-bench-worker")
HEAD = 50

CONTENDERS = {
    "fulldbresult": {"FDR_BENCH_BACKEND": "fulldb", "FDR_BENCH_REUSE": "1"},
    "fulldbresult, no DB_REUSE": {"FDR_BENCH_BACKEND": "fulldb", "FDR_BENCH_REUSE": "0"},
    "django-celery-results": {"FDR_BENCH_BACKEND": "dcr", "FDR_BENCH_REUSE": "0"},
    "django-celery-results + DB_REUSE": {"FDR_BENCH_BACKEND": "dcr", "FDR_BENCH_REUSE": "1"},
    "results ignored": {"FDR_BENCH_BACKEND": "none", "FDR_BENCH_REUSE": "0"},
    # Not run by default: shows that CONN_MAX_AGE alone does not keep the connection.
    "fulldbresult, CONN_MAX_AGE=300 only": {
        "FDR_BENCH_BACKEND": "fulldb",
        "FDR_BENCH_REUSE": "0",
        "FDR_BENCH_CONN_MAX_AGE": "300",
    },
}
DEFAULT = list(CONTENDERS)[:5]


def queue_length(app: Any) -> int:
    with app.connection_for_write() as conn:
        try:
            return int(conn.default_channel.client.llen(QUEUE))
        except Exception:
            return 0


def sessions() -> int:
    """Sessions ever opened on the benchmark database (PostgreSQL 14+)."""
    import psycopg
    from django.db import connection

    name = connection.settings_dict["NAME"]
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (name,)).fetchone()
    return int(row[0]) if row else 0


def fill(app: Any, count: int) -> None:
    from bench.celery_app import noop

    with app.producer_or_acquire() as producer:
        for i in range(count):
            noop.apply_async((i,), {"payload": "x" * 40}, queue=QUEUE, producer=producer)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "-P", "prefork", "-c", "2",
        "-Q", QUEUE, "-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-n", f"fdr-bench-{os.getpid()}@%h",
    ]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=out, start_new_session=True
        )


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def one_round(app: Any, env: dict[str, str], count: int, log: Path, opened: list[float]) -> Callable[[], float]:
    def run() -> float:
        fill(app, count)
        before = sessions()
        worker = start_worker(env, log)
        try:
            deadline = time.monotonic() + 60 + count / 20
            while queue_length(app) > count - HEAD:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the worker did not start; see {log}")
                time.sleep(0.005)
            start = time.perf_counter()
            while queue_length(app) > 0:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the worker stopped or was too slow; see {log}")
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
            time.sleep(0.5)  # the last prefetched tasks
        finally:
            stop_worker(worker)
        opened.append((sessions() - before) / count)
        return (count - HEAD) / elapsed

    return run


def main() -> None:
    p = parser(__doc__.split("\n")[0], dbs=("postgres",))
    p.add_argument("--tasks", type=int, default=None)
    p.add_argument("--only", nargs="*", choices=list(CONTENDERS), help="run only these contenders")
    args = p.parse_args()
    count = args.tasks or (100 if args.smoke else 5000)
    rounds = args.rounds or (1 if args.smoke else 3)
    setup(args.db)
    from bench.celery_app import app

    drop_queue(app, QUEUE)  # a run killed before its exit left its queue, and process ids come round again
    atexit.register(drop_queue, app, QUEUE)
    log = Path(os.environ.get("FDR_BENCH_VAR", "/tmp/fdr_bench")) / "bench_worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"bench_worker, {count} tasks per round, broker {app.conf.broker_url}: {versions()}; worker log {log}")
    names = args.only or DEFAULT
    if args.smoke and not args.only:
        names = ["fulldbresult", "django-celery-results", "results ignored"]
    opened: dict[str, list[float]] = {name: [] for name in names}
    rates = alternate({name: one_round(app, CONTENDERS[name], count, log, opened[name]) for name in names}, rounds)
    report(
        f"prefork worker -c 2, {count} tasks, PostgreSQL",
        "tasks/s",
        rates,
        "django-celery-results" if "django-celery-results" in names else None,
    )
    if "results ignored" in names and "fulldbresult" in names:
        from statistics import median

        share = median(rates["fulldbresult"]) / median(rates["results ignored"])
        print(f"  fulldbresult / results ignored: {100 * share:.0f}%")
    for name, values in opened.items():
        print(f"  database sessions opened per task, {name}: {max(values):.3f}")


if __name__ == "__main__":
    main()
