"""Upgrading a 0.x database: the README's steps, on a database laid out as 0.3.0 left it.

0.3.0 (with django-celery) kept its records in ``celery_taskresultmeta`` and
recorded migrations 0001-0004 of this app. 1.0's migrations reuse the name
``0001_initial``, so Django would take the new table as created: the README
says to forget the old history first, then to copy the old records.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, models
from django.utils import timezone

from django_celery_fulldbresult.models import TaskResultMeta

pytestmark = pytest.mark.django_db(transaction=True)

DOC = Path(__file__).resolve().parent.parent / "README.rst"
APP = "django_celery_fulldbresult"
OLD_MIGRATIONS = [
    "0001_initial",
    "0002_auto_20150713_1259",
    "0002_auto_20150713_1520",
    "0003_taskresultmeta_eta",
    "0004_auto_20150914_1947",
]

#: The README's copy statement, as written there.
COPY_SQL = """\
INSERT INTO django_celery_fulldbresult_taskresultmeta
    (task_id, task, args, kwargs, status, hostname, exchange, routing_key, eta, expires,
     date_submitted, date_done, traceback, not_retryable_reason, content_type, content_encoding, retries)
SELECT task_id, task, args, kwargs, status, hostname, exchange, routing_key, eta, expires,
       date_submitted, date_done, traceback, '', 'application/json', 'utf-8', 0
FROM celery_taskresultmeta"""


def old_table_sql() -> str:
    def kind(field: models.Field[Any, Any], null: bool = True) -> str:
        return str(field.db_type(connection)) + ("" if null else " NOT NULL")

    char, text, when = models.CharField(max_length=191), models.TextField(), models.DateTimeField()
    columns = {
        "task_id": kind(char, null=False) + " UNIQUE",
        "task": kind(char, null=False),
        "args": kind(text, null=False),
        "kwargs": kind(text, null=False),
        "hostname": kind(char),
        "exchange": kind(char),
        "routing_key": kind(char),
        "eta": kind(when),
        "expires": kind(when),
        "status": kind(models.CharField(max_length=50), null=False),
        "result": kind(text),
        "date_submitted": kind(when),
        "date_done": kind(when, null=False),
        "traceback": kind(text),
        "hidden": kind(models.BooleanField(), null=False),
        "meta": kind(text),
    }
    body = ", ".join(f"{name} {column}" for name, column in columns.items())
    return f"CREATE TABLE celery_taskresultmeta (id {kind(models.AutoField(primary_key=True))} PRIMARY KEY, {body})"


@pytest.fixture
def database_of_0x() -> Iterator[None]:
    """This app's 1.0 table gone, 0.x's table and migration history in its place."""
    with connection.schema_editor() as editor:
        editor.delete_model(TaskResultMeta)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM django_migrations WHERE app = %s", [APP])
        for name in OLD_MIGRATIONS:
            cursor.execute(
                "INSERT INTO django_migrations (app, name, applied) VALUES (%s, %s, %s)", [APP, name, timezone.now()]
            )
        cursor.execute(old_table_sql())
    try:
        yield
    finally:
        # Back to the 1.0 table and history, whatever the test got to.
        if TaskResultMeta._meta.db_table in connection.introspection.table_names():
            with connection.schema_editor() as editor:
                editor.delete_model(TaskResultMeta)
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE celery_taskresultmeta")
            cursor.execute("DELETE FROM django_migrations WHERE app = %s", [APP])
        call_command("migrate", APP, verbosity=0)


def add_old_record(pk: int, task_id: str, status: str) -> None:
    when = timezone.now() - timedelta(days=2)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO celery_taskresultmeta"
            " (id, task_id, task, args, kwargs, status, date_submitted, date_done, hidden)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                pk,
                task_id,
                "email_workers.tasks.send_email",
                "[7]",
                '{"to": "a@example.com"}',
                status,
                when,
                when,
                False,
            ],
        )


def test_the_readme_copy_statement_is_the_tested_one() -> None:
    assert textwrap.indent(COPY_SQL, "    ") + ";" in DOC.read_text()


def test_upgrading_a_0x_database_as_the_readme_says(database_of_0x: None) -> None:
    add_old_record(1, "old-pending", "PENDING")
    add_old_record(2, "old-success", "SUCCESS")

    call_command("migrate", APP, "zero", "--fake", verbosity=0)
    call_command("migrate", APP, verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(COPY_SQL)

    record = TaskResultMeta.objects.get(task_id="old-pending")
    assert record.task == "email_workers.tasks.send_email"
    assert json.loads(record.args) == [7]
    assert json.loads(record.kwargs) == {"to": "a@example.com"}
    stale = TaskResultMeta.objects.get_stale_tasks(timedelta(hours=1))
    assert list(stale.values_list("task_id", flat=True)) == ["old-pending"]
    # New records are written as usual next to the copied ones.
    TaskResultMeta.objects.create(task_id="new", task="t", date_done=timezone.now())
    assert TaskResultMeta.objects.count() == 3
