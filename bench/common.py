"""What every benchmark shares: the database set-up, alternating rounds, and the figures."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DBS = ("sqlite", "sqlite-wal", "postgres", "mysql")


def parser(description: str, dbs: Sequence[str] = DBS, default_db: str = "postgres") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--db", choices=dbs, default=default_db)
    p.add_argument("--smoke", action="store_true", help="a tiny run, for CI: checks the benchmark runs, times nothing")
    p.add_argument("--rounds", type=int, default=None)
    return p


def run_each(script: str, dbs: Sequence[str], smoke: bool) -> None:
    """``--db all``: the benchmark once per database, each in a process of its own (Django is set up once)."""
    import subprocess

    for db in dbs:
        subprocess.run([sys.executable, script, "--db", db, *(["--smoke"] if smoke else [])], check=True)


def create_database(db: str, name: str) -> None:
    """Create the benchmark's own database when it is missing."""
    if db == "postgres":
        import psycopg

        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    elif db == "mysql":
        import MySQLdb

        conn = MySQLdb.connect(host="127.0.0.1", user="root", passwd="")
        conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        conn.close()


def setup(db: str, **env: str) -> None:
    """Point the bench settings at ``db``, create and migrate it, start Django."""
    os.environ["FDR_BENCH_DB"] = db
    os.environ.setdefault("FDR_BENCH_DB_NAME", "fdr_bench")
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    create_database(db, os.environ["FDR_BENCH_DB_NAME"])
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def own_queue(name: str) -> str:
    """A queue of this run's own: every run (and CI's smoke runs) shares Redis db 9, and a run must never
    count, purge or consume another's messages."""
    return f"{name}-{os.getpid()}"


def purge(app: Any, queue: str) -> None:
    """Empty ``queue`` (nothing to do if it was never declared)."""
    import contextlib

    with app.connection_for_write() as conn, contextlib.suppress(Exception):
        conn.default_channel.queue_purge(queue)


def drop_queue(app: Any, queue: str) -> None:
    """At the end of a run: the queue's keys on the Redis broker (its lists and kombu's bindings), gone."""
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        for key in list(client.scan_iter(match=f"*{queue}*")):
            name = key.decode()
            # The queue's list, its priority lists ("queue\x06\x163"...), kombu's records of its bindings
            # ("_kombu.binding.queue"...); not another run's (the name of pid 123's queue is in pid 1234's).
            if (
                name == queue
                or name.startswith(queue + "\x06\x16")
                or (name.startswith("_kombu.") and name.endswith("." + queue))
            ):
                client.delete(key)


def versions() -> str:
    import celery
    import django
    import django_celery_results
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT sqlite_version()")
        else:
            cursor.execute("SELECT version()")
        server = str(cursor.fetchone()[0]).split(",")[0][:60]
    return (
        f"Python {platform.python_version()}, Django {django.__version__}, Celery {celery.__version__}, "
        f"django-celery-results {django_celery_results.__version__}, {connection.vendor} {server}, "
        f"{os.cpu_count()} CPUs"
    )


def statement_timer(durations: list[float], prefix: str = "") -> Callable[..., Any]:
    """A Django ``execute_wrapper`` adding the time (ms) of each statement that begins with ``prefix`` to ``durations``.

    Django's own query log keeps whole milliseconds: this is finer.
    """

    def timer(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            if sql.startswith(prefix):
                durations.append(1000 * (time.perf_counter() - start))

    return timer


def alternate(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each contender once per round, in an order that rotates; each returns a rate."""
    names = list(contenders)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(contenders[name]())
    return rates


def summary(values: Sequence[float]) -> str:
    med = statistics.median(values)
    return f"median {med:10.1f}  spread {min(values):.1f}–{max(values):.1f} (±{spread(values):.0f}%)"


def spread(values: Sequence[float]) -> float:
    med = statistics.median(values)
    return 100.0 * (max(values) - min(values)) / 2 / med if med else 0.0


def report(title: str, unit: str, rates: dict[str, list[float]], reference: str | None = None) -> None:
    print(f"\n{title} ({unit}, {len(next(iter(rates.values())))} rounds)")
    for name, values in rates.items():
        ratio = ""
        if reference and name != reference:
            ratio = f"  = {statistics.median(values) / statistics.median(rates[reference]):.2f}× {reference}"
        print(f"  {name:28s} {summary(values)}{ratio}")


def rate(count: int, work: Callable[[], None]) -> float:
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)
