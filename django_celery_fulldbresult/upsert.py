"""The two writes that run for every task, each one statement, one round-trip.

* :func:`store_state` — the worker's write of a state change. It inserts the
  record or updates it, keeps what the write does not know (a write without
  arguments never wipes stored ones), and never lets an unfinished state
  (PENDING, STARTED, RETRY, ...) overwrite a finished one (SUCCESS, FAILURE,
  REVOKED): a late STARTED or RETRY from another process cannot undo a result.
* :func:`record_published` — the publisher's write (TRACK_PUBLISH), for one
  message or many. It inserts the record if it is absent and otherwise
  changes nothing, except for a ``Task.retry()`` re-publish of an unfinished
  task, which updates the retry count, ETA and expiry.

PostgreSQL and SQLite use ``INSERT ... ON CONFLICT``, MySQL and MariaDB
``INSERT ... ON DUPLICATE KEY UPDATE``. Any other database gets a
transaction of two statements instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from celery import states
from django.db import IntegrityError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

if TYPE_CHECKING:
    from .models import TaskResultMeta

FINISHED = sorted(states.READY_STATES)

#: Columns written by the worker at each state change.
STATE_COLUMNS = (
    "task_id", "task", "status", "args", "kwargs", "not_retryable_reason",
    "content_type", "content_encoding", "encoded_result", "traceback", "meta",
    "hostname", "exchange", "routing_key", "queue", "priority", "eta", "expires",
    "retries", "parent_id", "root_id", "group_id", "periodic_task_name",
    "date_started", "date_done",
)  # fmt: skip
#: Columns a state write replaces; the others keep their value when the write has none.
REPLACED = {"status", "content_type", "content_encoding", "encoded_result", "traceback", "retries", "date_done"}

#: Columns written at publication.
PUBLISH_COLUMNS = (
    "task_id", "task", "status", "args", "kwargs", "not_retryable_reason",
    "content_type", "content_encoding",
    "exchange", "routing_key", "queue", "priority", "eta", "expires", "retries",
    "parent_id", "root_id", "group_id", "periodic_task_name", "retry_of",
    "date_submitted", "date_done",
)  # fmt: skip
#: Columns a retry re-publish of an unfinished task updates.
REPUBLISHED = ("eta", "expires", "retries")


def _model() -> type[TaskResultMeta]:
    from .models import TaskResultMeta

    return TaskResultMeta


def _quoted(connection: BaseDatabaseWrapper, names: Iterable[str]) -> dict[str, str]:
    model = _model()
    return {name: connection.ops.quote_name(model._meta.get_field(name).column) for name in names}


def _params(connection: BaseDatabaseWrapper, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> list[Any]:
    fields = [_model()._meta.get_field(name) for name in columns]
    return [
        field.get_db_prep_save(row[field.name] if field.name in row else field.get_default(), connection)
        for row in rows
        for field in fields
    ]


def _finished_list(connection: BaseDatabaseWrapper) -> str:
    # Literal, not parameters: the same text as the partial index's predicate,
    # which lets PostgreSQL prove the index applies.
    return ", ".join("'%s'" % state for state in FINISHED)


def store_state(connection: BaseDatabaseWrapper, row: dict[str, Any]) -> None:
    """Write one state change of one task (see the module's docstring)."""
    vendor = connection.vendor
    if vendor not in ("postgresql", "sqlite", "mysql"):
        _store_state_portable(connection, row)
        return
    model = _model()
    q = _quoted(connection, STATE_COLUMNS)
    table = connection.ops.quote_name(model._meta.db_table)
    finished = _finished_list(connection)
    placeholders = "(%s)" % ", ".join(["%s"] * len(STATE_COLUMNS))
    insert = f"INSERT INTO {table} ({', '.join(q.values())}) VALUES {placeholders}"
    if vendor == "mysql":
        guard = f"NOT ({q['status']} IN ({finished}) AND VALUES({q['status']}) NOT IN ({finished}))"
        sets = []
        # MySQL applies assignments left to right and later ones see the new
        # values: status, which the guard reads, must come last.
        for name in sorted(set(STATE_COLUMNS) - {"task_id"}, key=lambda n: n == "status"):
            new = f"VALUES({q[name]})"
            if name not in REPLACED:
                new = f"COALESCE({new}, {q[name]})"
            sets.append(f"{q[name]} = IF({guard}, {new}, {q[name]})")
        sql = f"{insert} ON DUPLICATE KEY UPDATE {', '.join(sets)}"
    else:
        sets = []
        for name in STATE_COLUMNS:
            if name == "task_id":
                continue
            new = f"EXCLUDED.{q[name]}"
            if name == "not_retryable_reason":
                new = f"CASE WHEN EXCLUDED.{q['args']} IS NULL THEN {table}.{q[name]} ELSE {new} END"
            elif name not in REPLACED:
                new = f"COALESCE({new}, {table}.{q[name]})"
            sets.append(f"{q[name]} = {new}")
        guard = f"NOT ({table}.{q['status']} IN ({finished}) AND EXCLUDED.{q['status']} NOT IN ({finished}))"
        sql = f"{insert} ON CONFLICT ({q['task_id']}) DO UPDATE SET {', '.join(sets)} WHERE {guard}"
    with connection.cursor() as cursor:
        cursor.execute(sql, _params(connection, STATE_COLUMNS, [row]))


def record_published(connection: BaseDatabaseWrapper, rows: Sequence[dict[str, Any]]) -> None:
    """Insert the records of published messages that have none yet, in one statement."""
    if not rows:
        return
    vendor = connection.vendor
    if vendor not in ("postgresql", "sqlite", "mysql"):
        _record_published_portable(connection, rows)
        return
    model = _model()
    q = _quoted(connection, PUBLISH_COLUMNS)
    table = connection.ops.quote_name(model._meta.db_table)
    finished = _finished_list(connection)
    placeholders = ", ".join(["(%s)" % ", ".join(["%s"] * len(PUBLISH_COLUMNS))] * len(rows))
    insert = f"INSERT INTO {table} ({', '.join(q.values())}) VALUES {placeholders}"
    if vendor == "mysql":
        guard = f"VALUES({q['retries']}) > {q['retries']} AND {q['status']} NOT IN ({finished})"
        sets = [f"{q[name]} = IF({guard}, VALUES({q[name]}), {q[name]})" for name in REPUBLISHED]
        sql = f"{insert} ON DUPLICATE KEY UPDATE {', '.join(sets)}"
    else:
        sets = [f"{q[name]} = EXCLUDED.{q[name]}" for name in REPUBLISHED]
        guard = f"EXCLUDED.{q['retries']} > {table}.{q['retries']} AND {table}.{q['status']} NOT IN ({finished})"
        sql = f"{insert} ON CONFLICT ({q['task_id']}) DO UPDATE SET {', '.join(sets)} WHERE {guard}"
    with connection.cursor() as cursor:
        cursor.execute(sql, _params(connection, PUBLISH_COLUMNS, rows))


def _store_state_portable(connection: BaseDatabaseWrapper, row: dict[str, Any]) -> None:
    manager = _model()._default_manager.db_manager(connection.alias)
    with transaction.atomic(using=connection.alias):
        record = manager.select_for_update().filter(task_id=row["task_id"]).first()
        if record is None:
            try:
                with transaction.atomic(using=connection.alias):
                    manager.create(**{name: row.get(name) for name in STATE_COLUMNS if row.get(name) is not None})
                return
            except IntegrityError:
                record = manager.select_for_update().get(task_id=row["task_id"])
        if record.status in states.READY_STATES and row["status"] not in states.READY_STATES:
            return
        for name in STATE_COLUMNS:
            if name in REPLACED or row.get(name) is not None:
                setattr(record, name, row.get(name))
        record.save()


def _record_published_portable(connection: BaseDatabaseWrapper, rows: Sequence[dict[str, Any]]) -> None:
    manager = _model()._default_manager.db_manager(connection.alias)
    for row in rows:
        try:
            with transaction.atomic(using=connection.alias):
                manager.create(**{name: row.get(name) for name in PUBLISH_COLUMNS if row.get(name) is not None})
        except IntegrityError:
            manager.filter(task_id=row["task_id"], retries__lt=row.get("retries") or 0).exclude(
                status__in=states.READY_STATES
            ).update(**{name: row.get(name) for name in REPUBLISHED})
