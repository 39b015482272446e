"""The benchmarks' Celery app and their tasks (``celery -A bench.celery_app worker``)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

app = Celery("bench")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task(name="bench.noop")
def noop(index: int, payload: str = "") -> int:
    return index


@app.task(name="bench.backend_pid")
def backend_pid() -> int:
    """The PostgreSQL backend pid of this worker process's connection: a new pid is a reconnect."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])
