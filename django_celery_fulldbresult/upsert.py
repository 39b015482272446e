"""The two writes that run for every task, each one statement, one round-trip.

* :func:`store_state` — the worker's write of a state change. It inserts the
  record or updates it, and keeps what the write does not know (a write
  without arguments never wipes stored ones). Writes from different processes
  land in any order, so a write never replaces a state that comes after its
  own:

  - A finished state (SUCCESS, FAILURE, REVOKED) always applies, whatever its
    retry count, and no unfinished one ever replaces it: a late STARTED or
    RETRY from another process cannot undo a result.
  - Unfinished states are ordered by (retry count, phase), the phase being
    *waiting* (PENDING, RETRY), then *running* (STARTED, RECEIVED and any
    other state, e.g. PROGRESS from ``update_state``). Between equals the
    later write wins (PROGRESS after STARTED, ``update_state`` again). The
    RETRY write of attempt n counts n + 1, the attempt it waits for: when
    attempt n + 1, re-published first, has already written STARTED in
    another process, the late RETRY leaves it be.
  - An earlier attempt's write never replaces a later one's, even a running
    one over a waiting one: a STARTED of attempt n after attempt n + 1's (or
    after attempt n's own RETRY) is its message redelivered (a worker lost
    with ``acks_late``), a duplicate run the record does not follow. Its end,
    if it finishes, applies like any finished state.
  - Except for a RETRY over its own attempt's running state. With
    TRACK_PUBLISH, the ``Task.retry()`` re-publish counts the retry in the
    stored record (STARTED of attempt n, counted n + 1) before the RETRY
    write of attempt n lands. The RETRY write carries its attempt's
    ``date_started`` (the backend remembers it per request): the same stored
    ``date_started`` means the running state is that attempt's own, and
    RETRY applies. So does a RETRY whose start is unknown: without
    ``task_track_started``, or written by the worker's main process (a worker
    lost with ``retry_on_worker_lost``), which never saw the start. (There a
    late RETRY can still replace attempt n + 1's running state.)
  - A worker that cancels a task because it lost the broker writes RETRY
    without re-publishing: that RETRY keeps its attempt's count, and the
    redelivered message's STARTED replaces it.
  - A write without a request counts retry 0: a custom state stored from
    outside the worker (``backend.store_result(id, meta, "X")``) does not
    replace the state of a task that has retried.
* :func:`record_published` — the publisher's write (TRACK_PUBLISH), for one
  message or many. It inserts the record if it is absent and otherwise
  changes nothing, except for two things: the submission time, when the
  record has none or a later one (the worker's record, or a ``Task.retry()``
  re-publish, came first: a group's members are recorded after they are
  sent, see :mod:`.publish`), and, for a ``Task.retry()`` re-publish of an
  unfinished task, the retry count, ETA and expiry.

PostgreSQL and SQLite use ``INSERT ... ON CONFLICT``, MySQL and MariaDB
``INSERT ... ON DUPLICATE KEY UPDATE``. Any other database gets a
transaction of two statements instead.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery import states
from django.db import IntegrityError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models import Q
from django.db.utils import InterfaceError, OperationalError, ProgrammingError
from django.utils.asyncio import async_unsafe

if TYPE_CHECKING:
    from .models import TaskResultMeta

logger = logging.getLogger(__name__)

FINISHED = sorted(states.READY_STATES)
#: Unfinished states that wait for an attempt; the others are a running attempt's.
WAITING = (states.PENDING, states.RETRY)

#: Columns written by the worker at each state change.
STATE_COLUMNS = (
    "task_id", "task", "status", "args", "kwargs", "not_retryable_reason",
    "content_type", "content_encoding", "encoded_result", "traceback", "meta",
    "hostname", "exchange", "routing_key", "queue", "priority", "eta", "expires",
    "retries", "parent_id", "root_id", "group_id", "periodic_task_name",
    "date_started", "date_done",
)  # fmt: skip
#: Columns a state write replaces; the others keep their value when the write has none.
REPLACED = {"status", "content_type", "content_encoding", "encoded_result", "traceback", "date_done"}
#: The retry count only grows: the worker's RETRY write carries the count of the
#: attempt that failed, and may land after the re-publish that counted one more.
GREATEST = "retries"

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
    return {name: connection.ops.quote_name(_field(name).column) for name in names}


def _params(connection: BaseDatabaseWrapper, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> list[Any]:
    plan = _PLANS.get(columns)
    if plan is None:
        plan = _PLANS[columns] = _plan(columns)
    params: list[Any] = []
    append = params.append
    # On PostgreSQL Django's conversion of an aware datetime gives it back as it is.
    aware_as_is = connection.vendor == "postgresql"
    for row in rows:
        for name, default, field in plan:
            value = row.get(name, default)
            # Text, integers and NULL go to every driver as they are; Django's
            # conversion (get_db_prep_save) is only needed for the others
            # (datetimes, and anything unusual), and costs more than the write.
            if (
                value is None
                or (field is None and type(value) in _PLAIN)
                or (aware_as_is and type(value) is datetime and value.utcoffset() is not None)
            ):
                append(value)
            else:
                append((field or _field(name)).get_db_prep_save(value, connection))
    return params


_PLAIN = (str, int, bool)
_PLANS: dict[Sequence[str], list[tuple[str, Any, Any]]] = {}


def _plan(columns: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """(name, default, field whose conversion is always needed or None) for each column."""
    from django.db import models

    fields = [_field(name) for name in columns]
    return [(f.name, f.get_default(), f if isinstance(f, models.DateTimeField) else None) for f in fields]


def _field(name: str) -> Any:
    return _model()._meta.get_field(name)


#: Generated SQL, per (database, kind, number of rows, columns left out): the text depends on nothing else.
_SQL: dict[tuple[str, str, int, int], str] = {}


def _cached_sql(connection: BaseDatabaseWrapper, kind: str, count: int, build: Any, left_out: int = 0) -> str:
    """The SQL ``build(connection, count)`` makes, or ``build(connection, count, left_out)`` when ``left_out``."""
    key = (connection.display_name, kind, count, left_out)  # MySQL and MariaDB apart
    sql = _SQL.get(key)
    if sql is None:
        if len(_SQL) > 256:  # odd batch sizes must not grow it without bound
            _SQL.clear()
        sql = build(connection, count, left_out) if left_out else build(connection, count)
        if connection.vendor == "sqlite":
            sql = _named_placeholders(sql)
        _SQL[key] = sql
    return sql


def _named_placeholders(sql: str) -> str:
    """``%s`` -> ``%(0)s``, ``%(1)s``...: SQLite's statements take their parameters by name.

    Django's SQLite cursor turns ``%s`` into ``?`` with a regular expression
    run over the whole text at each call: ~55 µs for the 3 kB of a state
    write, about a tenth of the write. Parameters given by name are turned
    into ``:name`` with a plain ``%`` (~4 µs). The texts here hold no other ``%``.
    """
    parts = sql.split("%s")
    assert all("%" not in part for part in parts), "no other % in the generated SQL"
    return "".join(f"{part}%({i})s" for i, part in enumerate(parts[:-1])) + parts[-1]


#: "0", "1", ...: the names of SQLite's parameters, made once (replaced whole,
#: never extended in place: threads may read it while another one grows it).
_NAMES: tuple[str, ...] = ()


def _execute(
    connection: BaseDatabaseWrapper, sql: str, params: list[Any], synchronous: bool = True, lock_wait: int = 0
) -> None:
    """Run one of the writes; ``synchronous=False`` and ``lock_wait`` as :func:`record_published` says."""
    global _NAMES
    prepare = _prepared(connection, synchronous)
    if not synchronous and _can_commit_asynchronously(connection):
        sql = ASYNCHRONOUS_COMMIT + sql  # two statements: bound on the client, never prepared
    if lock_wait:
        if connection.vendor == "postgresql" and not connection.settings_dict["OPTIONS"].get("server_side_binding"):
            # Its own transaction (autocommit), so SET LOCAL ends with it (and leaves a pooled session as it was).
            sql = f"SET LOCAL lock_timeout = {lock_wait * 1000}; {sql}"
            prepare = False  # two statements
        elif connection.vendor == "mysql" and connection.display_name == "MariaDB":
            sql = f"SET STATEMENT innodb_lock_wait_timeout = {lock_wait} FOR {sql}"
    cursor, kept = _write_cursor(connection, prepare)
    try:
        if connection.vendor == "sqlite":  # by name (_named_placeholders)
            names = _NAMES
            if len(names) < len(params):
                names = _NAMES = tuple(str(i) for i in range(len(params)))
            cursor.execute(sql, dict(zip(names, params, strict=False)))
        else:
            cursor.execute(sql, params)
    finally:
        if not kept:
            cursor.close()


#: The attribute of a Django connection that keeps its driver cursors for the writes here.
_KEPT_CURSORS = "_fulldbresult_cursors"


@async_unsafe
def _write_cursor(connection: BaseDatabaseWrapper, server_binding: bool = False) -> tuple[Any, bool]:
    """A Django cursor for one write, on a driver cursor kept from write to write; and whether it is kept.

    ``connection.cursor()`` makes a new driver cursor each time: with psycopg,
    ~30 µs of CPU more per statement than a kept cursor (a ``SELECT 1``: 90
    µs against 58 µs here). The driver cursor here is made once per driver
    connection and wrapped for each write as Django wraps its own
    (``CursorDebugWrapper`` under ``DEBUG`` or ``CaptureQueriesContext``), so
    ``execute_wrapper()`` hooks and instrumentation of ``CursorWrapper`` see
    every write. A new driver connection (Django closed the old one) gets a
    new cursor. The driver reads a write's result (none, or the function's
    one empty row) with the write: a kept cursor holds nothing on the server.

    A cursor of its own for each write, which the caller closes, as Django
    makes them: where ``cursor()`` is replaced on the connection itself
    (Django's test cases refusing a database their ``databases`` leave out,
    django-debug-toolbar), and for a connection shared between threads
    (``LiveServerTestCase``'s SQLite), where two writes at once must not
    share a driver cursor.

    ``server_binding``: psycopg's cursor that binds on the server (Django's
    own class for ``OPTIONS["server_side_binding"]``), see :func:`_prepares`.
    """
    replaced = connection.__dict__.get("cursor")
    if replaced is not None and getattr(replaced, "__func__", None) is not type(connection).cursor:
        # (Django's test cases put the original back as a bound method, which is not a replacement.)
        return connection.cursor(), False
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    driver = connection.connection
    keep = not connection.allow_thread_sharing
    kept: dict[bool, tuple[Any, Any]] = connection.__dict__.setdefault(_KEPT_CURSORS, {})
    mine = kept.get(server_binding) if keep else None
    if mine is None or mine[0] is not driver or getattr(mine[1], "closed", False):
        with connection.wrap_database_errors:
            if server_binding:
                from django.db.backends.postgresql import base

                cursor: Any = base.ServerBindingCursor(driver)  # type: ignore[call-arg]
            else:
                cursor = connection.create_cursor()
        mine = (driver, cursor)
        if keep:
            kept[server_binding] = mine
    connection.validate_thread_sharing()
    if not connection.queries_logged:
        return connection.make_cursor(mine[1]), keep
    if server_binding:
        return _ServerBindingDebugCursor(mine[1], connection), keep
    return connection.make_debug_cursor(mine[1]), keep


class _ServerBindingDebugCursor(CursorDebugWrapper):
    """Django's debug cursor for a write bound on the server (``DEBUG``, ``CaptureQueriesContext``, the SQL log).

    Django logs the statement psycopg reports it ran, and psycopg reports none
    for a statement bound on the server: the writes showed as ``None``. This
    logs the statement with its parameters written in, as Django shows the
    statements it binds on the client.
    """

    def execute(self, sql: Any, params: Any = None) -> Any:
        try:
            shown = self.db.ops.compose_sql(sql, params)
        except Exception:  # (a value the client cannot write out: the statement as it is)
            shown = sql
        with self.debug_sql(shown, params):
            return CursorWrapper.execute(self, sql, params)


def _prepares(connection: BaseDatabaseWrapper) -> bool:
    """Whether the project turned psycopg's prepared statements on (Django's ``OPTIONS["prepare_threshold"]``).

    Django leaves them off, for connection poolers (PgBouncer in transaction
    mode before 1.21), and binds parameters on the client, which never
    prepares. Turned on, the writes here bind on the server and are prepared
    after ``prepare_threshold`` runs: PostgreSQL then stops parsing and
    planning the 3 kB state write at each state change, most of what it
    costs beyond a plain upsert (``bench/README.md``).
    """
    return (
        connection.vendor == "postgresql" and connection.settings_dict["OPTIONS"].get("prepare_threshold") is not None
    )


def _prepared(connection: BaseDatabaseWrapper, synchronous: bool) -> bool:
    """Whether :func:`_execute` prepares the write (never with the asynchronous commit's two statements)."""
    return _prepares(connection) and (synchronous or not _can_commit_asynchronously(connection))


#: The fewest parameters a SQLite statement takes (before 3.32): a write under it is never split.
SQLITE_SAFE_PARAMETERS = 999


def _rows_per_statement(connection: BaseDatabaseWrapper, rows: int, columns: int) -> int | None:
    """SQLite: how many rows fit in one statement (999 parameters before SQLite 3.32, 32,766 since); else None."""
    if connection.vendor != "sqlite" or rows * columns <= SQLITE_SAFE_PARAMETERS:
        return None  # asked of the connection only for a big batch, never for a single publish
    import sqlite3

    connection.ensure_connection()
    limit = int(connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return max(1, limit // columns)


def _finished_list(connection: BaseDatabaseWrapper) -> str:
    # Literal, not parameters: the same text as the partial index's predicate,
    # which lets PostgreSQL prove the index applies.
    return ", ".join("'%s'" % state for state in FINISHED)


def store_state(connection: BaseDatabaseWrapper, row: dict[str, Any], synchronous: bool = True) -> None:
    """Write one state change of one task (see the module's docstring).

    ``synchronous=False``: as for :func:`record_published`.
    """
    vendor = connection.vendor
    if vendor not in ("postgresql", "sqlite", "mysql"):
        _store_state_portable(connection, row)
        return
    params = _params(connection, STATE_COLUMNS, [row])
    if vendor == "postgresql" and not _prepared(connection, synchronous) and _state_function_usable(connection):
        _call_state_function(connection, params, synchronous)
        return
    _execute(connection, _state_sql(connection, params), params, synchronous)


#: Positions of the columns a state write without a value for keeps as stored (``COALESCE(new, old)``).
_KEPT_WHEN_NONE = tuple(
    i
    for i, name in enumerate(STATE_COLUMNS)
    if name not in REPLACED and name not in ("task_id", GREATEST, "not_retryable_reason")
)
_ARGS, _NOT_RETRYABLE = STATE_COLUMNS.index("args"), STATE_COLUMNS.index("not_retryable_reason")


def _state_sql(connection: BaseDatabaseWrapper, params: list[Any]) -> str:
    """The state write for these values: its ``SET`` list leaves out what the write keeps as stored.

    A column the write has no value for (NULL), and whose rule keeps the stored
    value then (:func:`_state_value`), is not assigned at all: the same row
    results. What it saves is on SQLite, which rewrites the entry of every
    index on an assigned column, whatever its value: ``group_id = COALESCE(NULL,
    group_id)`` rewrote the group index's page, journaled and synced, at each
    state change of every task outside a group. On MySQL and MariaDB, fewer
    assignments to parse and evaluate. A few texts result (which columns a
    task's writes lack), each made once. (A trigger ``UPDATE OF`` such a column
    no longer fires for a write that leaves it as it was.)

    PostgreSQL keeps the whole statement, as its function does: there each state
    change writes a new version of the row, with an entry in every index,
    whatever the ``SET`` list says (``date_done``, an indexed column, changes),
    and each other text would be one more statement to prepare.
    """
    if connection.vendor == "postgresql":
        return _cached_sql(connection, "state", 1, _store_state_sql)
    left_out = 0
    for i in _KEPT_WHEN_NONE:
        if params[i] is None:
            left_out |= 1 << i
    if params[_ARGS] is None:  # it describes the arguments: a write without them keeps it
        left_out |= 1 << _NOT_RETRYABLE
    return _cached_sql(connection, "state", 1, _store_state_sql, left_out)


#: PostgreSQL: the state write as a PL/pgSQL function (created by migration 0003).
#: Its number changes with its body: a new body is a new function, in a new migration.
STATE_FUNCTION = "fulldbresult_store_state_1"
#: How long a process writes the statement itself after finding the function missing, before it looks again.
STATE_FUNCTION_RECHECK_SECONDS = 300.0
#: :func:`_state_function_key` -> True once the function answered, or the time until which it is taken as missing.
_STATE_FUNCTION: dict[tuple[str, str, str | None], Any] = {}
#: PostgreSQL's SQLSTATEs for "function ... does not exist" and "permission denied".
UNDEFINED_FUNCTION, INSUFFICIENT_PRIVILEGE = "42883", "42501"


def _state_function_usable(connection: BaseDatabaseWrapper) -> bool:
    """Whether the state write may call :data:`STATE_FUNCTION`.

    Why a function: Django's connections bind parameters on the client and
    never prepare, so PostgreSQL would parse and plan the 3 kB statement at
    every state change (a quarter of a state change's time, ``bench/README.md``).
    PL/pgSQL plans the statements of a function once per connection (after
    five calls, as for a prepared statement), and the call is a short
    statement. It needs neither psycopg's prepared statements
    (``OPTIONS["prepare_threshold"]``, which use that path instead) nor
    anything a connection pooler in transaction mode refuses.

    The function comes with the app's migrations; a process may run before
    they are applied (code deployed before ``migrate``). Until the function has
    answered once, it is only tried outside a transaction, where a missing
    function costs nothing but the statement written out instead
    (:func:`_call_state_function`). Once found missing, it is looked up in
    the catalog every :data:`STATE_FUNCTION_RECHECK_SECONDS`, never called
    blindly again.
    """
    key = _state_function_key(connection)
    seen = _STATE_FUNCTION.get(key)
    if seen is True:
        return True
    if in_transaction(connection):
        return False
    if seen is None:
        return True
    if time.monotonic() < seen:
        return False
    if _state_function_exists(connection):
        _STATE_FUNCTION[key] = True
        return True
    _STATE_FUNCTION[key] = time.monotonic() + STATE_FUNCTION_RECHECK_SECONDS
    return False


def _state_function_key(connection: BaseDatabaseWrapper) -> tuple[str, str, str | None]:
    """Where the function was found or not: the database, and the schema a schema-per-tenant app set.

    django-tenants (and django-tenant-schemas) switch a connection's
    ``search_path`` from tenant to tenant and name the schema in
    ``connection.schema_name``. The app's tables and function are in each
    tenant's schema when it is a tenant app, and ``migrate_schemas`` migrates
    the tenants one after the other: the function having answered in one
    schema says nothing of the next (a state write inside a transaction there
    would have called it blindly, and a missing one aborts the caller's
    transaction).
    """
    return (connection.alias, connection.settings_dict["NAME"], getattr(connection, "schema_name", None))


def in_transaction(connection: BaseDatabaseWrapper) -> bool:
    """Whether a write would run inside a transaction (an atomic block, or autocommit off).

    It never connects (``get_autocommit()`` does): asked after a write failed
    because the database is gone, it must answer, not raise.
    """
    if connection.in_atomic_block:
        return True
    if connection.connection is None:  # a new connection starts as the settings say
        return not connection.settings_dict["AUTOCOMMIT"]
    return not connection.autocommit


def _call_state_function(connection: BaseDatabaseWrapper, params: list[Any], synchronous: bool) -> None:
    key = _state_function_key(connection)
    try:
        _execute(connection, _state_function_call(), params, synchronous)
    except ProgrammingError as exc:
        # Anything else, or a refusal inside the caller's transaction (which it aborted), is the caller's.
        state = _sqlstate(exc)
        if state not in (UNDEFINED_FUNCTION, INSUFFICIENT_PRIVILEGE) or in_transaction(connection):
            raise
        if state == INSUFFICIENT_PRIVILEGE or not _state_function_exists(connection):
            _STATE_FUNCTION[key] = time.monotonic() + STATE_FUNCTION_RECHECK_SECONDS
            logger.warning(
                "PostgreSQL function %s is %s: state changes are written with the statement itself, more slowly.",
                STATE_FUNCTION,
                "not allowed to this database user (GRANT EXECUTE ON FUNCTION it)"
                if state == INSUFFICIENT_PRIVILEGE
                else "missing (run `manage.py migrate django_celery_fulldbresult`)",
            )
        _execute(connection, _state_sql(connection, params), params, synchronous)
        return
    if _STATE_FUNCTION.get(key) is not True:
        _STATE_FUNCTION[key] = True


def _state_function_call() -> str:
    """``SELECT fulldbresult_store_state_1(%s::text, ...)``.

    Each parameter cast to the function's type: PostgreSQL then finds the
    function whatever type a value was written in with (an integer id for a
    text column), and converts as the statement would, or refuses what does
    not fit (an integer beyond bigint) with the statement's error.
    """
    global _STATE_FUNCTION_CALL
    if _STATE_FUNCTION_CALL is None:
        types = _state_function_types()
        _STATE_FUNCTION_CALL = "SELECT %s(%s)" % (STATE_FUNCTION, ", ".join(f"%s::{t}" for t in types))
    return _STATE_FUNCTION_CALL


_STATE_FUNCTION_CALL: str | None = None


def _state_function_exists(connection: BaseDatabaseWrapper) -> bool:
    """Whether :data:`STATE_FUNCTION` is there, where the connection's ``search_path`` finds it."""
    signature = "%s(%s)" % (STATE_FUNCTION, ", ".join(_state_function_types()))
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regprocedure(%s) IS NOT NULL", [signature])
        return bool(cursor.fetchone()[0])


def _sqlstate(exc: Exception) -> str | None:
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)  # psycopg 3, psycopg2


def state_function_sql(connection: BaseDatabaseWrapper) -> str:
    """The ``CREATE FUNCTION`` of :data:`STATE_FUNCTION`: the state write's statement, its parameters numbered.

    Migration 0003 holds a copy of this text (a test keeps the two equal).
    """
    parts = _store_state_sql(connection, 1).split("%s")
    body = "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], start=1)) + parts[-1]
    types = ", ".join(_state_function_types())
    return (
        f"CREATE OR REPLACE FUNCTION {STATE_FUNCTION}({types}) RETURNS void LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n{body};\nEND\n$$"
    )


def _state_function_types(columns: Sequence[str] = STATE_COLUMNS) -> list[str]:
    """The SQL types of the function's parameters (or of other columns' values, cast the same way)."""
    return [_FUNCTION_TYPES[_field(name).get_internal_type()] for name in columns]


#: Parameter types of the function, by field: wide enough for what the backend sends (a column's own type
#: may be narrower: the INSERT converts, and refuses what does not fit, as the statement would).
_FUNCTION_TYPES = {
    "CharField": "text",
    "TextField": "text",
    "PositiveSmallIntegerField": "bigint",
    "PositiveIntegerField": "bigint",
    "DateTimeField": "timestamptz",
}


#: MariaDB's session variable for the state write's guard (see _store_state_sql).
GUARD_VARIABLE = "@fulldbresult_apply"


def _store_state_sql(connection: BaseDatabaseWrapper, count: int, left_out: int = 0) -> str:
    """The state write; ``left_out``: the columns (bits by position in :data:`STATE_COLUMNS`) it does not assign."""
    vendor = connection.vendor
    assigned = [name for i, name in enumerate(STATE_COLUMNS) if name != "task_id" and not left_out >> i & 1]
    model = _model()
    q = _quoted(connection, STATE_COLUMNS)
    table = connection.ops.quote_name(model._meta.db_table)
    finished = _finished_list(connection)
    placeholders = "(%s)" % ", ".join(["%s"] * len(STATE_COLUMNS))
    insert = f"INSERT INTO {table} ({', '.join(q.values())}) VALUES {placeholders}"
    waiting = ", ".join("'%s'" % state for state in WAITING)
    if vendor == "mysql":
        new, old = "VALUES({})".format, "{}".format
    else:
        new, old = "EXCLUDED.{}".format, f"{table}.{{}}".format
    status, retries, started = (q["status"], q["retries"], q["date_started"])
    # The order of the module's docstring: does the write come after the stored state?
    guard = (
        f"{new(status)} IN ({finished}) OR ({old(status)} NOT IN ({finished}) AND ("
        f"{new(retries)} > {old(retries)} OR ({new(retries)} = {old(retries)} AND ("
        f"{new(status)} NOT IN ({waiting}) OR {old(status)} IN ({waiting})"
        f" OR ({new(status)} = '{states.RETRY}' AND ({new(started)} IS NULL OR {new(started)} = {old(started)}))"
        "))))"
    )
    sets: list[str] = []
    if vendor == "mysql":
        # MySQL applies assignments left to right and later ones see the new
        # values. The guard reads date_started, status and retries: assigned
        # in this order, last, each keeps a true guard true for the next
        # (assigned first, retries would turn a PENDING of a higher count over
        # a STARTED into an equal count and a lower phase: false).
        last = {"date_started": 1, "status": 2, "retries": 3}
        # MariaDB: the first assignment keeps the guard's answer in a session
        # variable the others read, instead of the guard written out in each
        # of them (2.7 kB of SQL per write instead of 10 kB). MySQL 8.0.22
        # deprecates variables set in expressions: there it is written out.
        if connection.display_name == "MariaDB":
            first_test, test = f"{GUARD_VARIABLE} := ({guard})", GUARD_VARIABLE
        else:
            first_test = test = guard
        for name in sorted(assigned, key=lambda n: (last.get(n, 0), n)):
            value = _state_value(vendor, name, new(q[name]), q[name], new(q["args"]))
            sets.append(f"{q[name]} = IF({test if sets else first_test}, {value}, {q[name]})")
        sql = f"{insert} ON DUPLICATE KEY UPDATE {', '.join(sets)}"
    else:
        for name in assigned:
            value = _state_value(vendor, name, new(q[name]), old(q[name]), new(q["args"]))
            sets.append(f"{q[name]} = {value}")
        sql = f"{insert} ON CONFLICT ({q['task_id']}) DO UPDATE SET {', '.join(sets)} WHERE {guard}"
    return sql


def _state_value(vendor: str, name: str, new: str, old: str, new_args: str) -> str:
    """What a column becomes when a state write meets the stored record: one rule, both dialects."""
    if name == GREATEST:
        return f"{'MAX' if vendor == 'sqlite' else 'GREATEST'}({new}, {old})"
    if name == "not_retryable_reason":
        # It describes the arguments: a write without them keeps it.
        return f"CASE WHEN {new_args} IS NULL THEN {old} ELSE {new} END"
    if name in REPLACED:
        return new
    return f"COALESCE({new}, {old})"


def with_reconnect(connection: BaseDatabaseWrapper, write: Any, *args: Any) -> None:
    """Run a write; if the database dropped the connection (or the write lost a lock race), once more on a new one.

    The writes here are idempotent upserts, so a second try never duplicates
    a record. Inside a transaction (an atomic block, or autocommit off)
    nothing is retried: the caller's transaction is lost with the connection.
    """
    try:
        write(connection, *args)
    except (InterfaceError, OperationalError) as exc:
        if in_transaction(connection) or not worth_another_try(connection, exc):
            raise
        connection.close()
        write(connection, *args)


#: SQLSTATEs of a write that lost a race for a lock: serialization failure, deadlock. (Not a lock wait
#: that timed out: the lock is still held, and a write that set the limit itself knows why, see
#: record_published's ``lock_wait``.)
LOCK_RACE_SQLSTATES = frozenset({"40001", "40P01"})
#: MySQL's and MariaDB's error numbers for a deadlock; and for a server that turned read-only
#: (``--read-only``, a failover's old primary): a new connection finds the new one.
LOCK_RACE_MYSQL_ERRORS = frozenset({1213})
READ_ONLY_MYSQL_ERRORS = frozenset({1290, 1836})


def worth_another_try(connection: BaseDatabaseWrapper, exc: Exception) -> bool:
    """Whether a write that raised ``exc`` may succeed when tried again.

    Yes when the connection is gone (a restart, a failover, an idle timeout:
    ``InterfaceError``, or an ``OperationalError`` after which the
    connection no longer answers; on MySQL and MariaDB, a server that turned
    read-only, as a failover's old primary does) or the write lost a race
    for a lock (a deadlock, a serialization failure). Not
    for what the drivers also raise as ``OperationalError`` and that would
    come back at every try: a missing table or column (code deployed before
    ``migrate``), a value the column's character set refuses. Retried, those
    held a worker on one write for good under Celery's
    ``result_backend_always_retry`` (whose default is to retry without limit).
    Asking the connection costs a round-trip, on the error's path only.
    """
    if isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    if _sqlstate(exc) in LOCK_RACE_SQLSTATES:
        return True
    code = (getattr(exc.__cause__, "args", None) or (None,))[0]
    if connection.vendor == "mysql" and (code in LOCK_RACE_MYSQL_ERRORS or code in READ_ONLY_MYSQL_ERRORS):
        return True
    if connection.vendor == "sqlite" and "locked" in str(exc):  # "database is locked", "database table is locked"
        return True
    return connection.connection is None or not connection.is_usable()


def record_published(
    connection: BaseDatabaseWrapper, rows: Sequence[dict[str, Any]], synchronous: bool = True, lock_wait: int = 0
) -> None:
    """Insert the records of published messages that have none yet, in one statement.

    ``synchronous=False``, on PostgreSQL in autocommit: the statement is its
    own transaction committed with ``synchronous_commit`` off (``SET LOCAL``,
    sent with it in one round-trip): the commit does not wait for the log's
    flush to disk. Elsewhere (another database, the caller's transaction,
    server-side binding, which refuses two statements in one) it changes nothing.

    ``lock_wait``: the most seconds the statement waits for a row's lock,
    then fails (PostgreSQL's ``lock_timeout``, MariaDB's
    ``innodb_lock_wait_timeout``, for this statement only, in the same
    round-trip); 0, the database's own limit.
    """
    if not rows:
        return
    vendor = connection.vendor
    if vendor not in ("postgresql", "sqlite", "mysql"):
        _record_published_portable(connection, rows)
        return
    per = _rows_per_statement(connection, len(rows), len(PUBLISH_COLUMNS))
    if per is not None and len(rows) > per:
        for start in range(0, len(rows), per):
            record_published(connection, rows[start : start + per], synchronous, lock_wait)
        return
    params = _params(connection, PUBLISH_COLUMNS, rows)
    if vendor == "postgresql" and _as_json(connection, params, len(rows)):
        sql = _cached_sql(connection, "publish-json", 1, _record_published_json_sql)
        _execute(connection, sql, [_rows_as_json(params)], synchronous, lock_wait)
        return
    sql = _cached_sql(connection, "publish", len(rows), _record_published_sql)
    _execute(connection, sql, params, synchronous, lock_wait)


#: The most parameters a statement may have for psycopg 3 to keep its parsed form
#: from call to call (its ``MAX_CACHED_STATEMENT_PARAMS``, 50 in psycopg 3.1 to 3.3;
#: the text must also be 4 kB at most, as the JSON write's is).
PSYCOPG_CACHED_PARAMETERS = 50
#: Text per row (on average) up to which a publish write goes as JSON: past ~10 kB a
#: row (big arguments), escaping them in JSON and PostgreSQL's parsing of it cost
#: more than psycopg's parsing of the placeholders saves (``bench/README.md``).
JSON_TEXT_PER_ROW = 8_000


def _as_json(connection: BaseDatabaseWrapper, params: list[Any], rows: int) -> bool:
    """Whether this PostgreSQL publish write sends its rows as one JSON parameter (see :func:`_rows_as_json`)."""
    if len(params) <= PSYCOPG_CACHED_PARAMETERS or connection.Database.__name__ != "psycopg":  # type: ignore[attr-defined]
        return False  # (psycopg2 puts the parameters in with C code, nothing to save)
    return sum(len(value) for value in params if type(value) is str) <= JSON_TEXT_PER_ROW * rows


def _rows_as_json(params: list[Any]) -> str:
    """The rows of a publish write (its parameters, row after row) as one JSON array of arrays.

    Why, on PostgreSQL with psycopg 3, from three rows on (more than 50
    parameters): psycopg parses the placeholders of such a statement again at
    every call, a regular expression over the whole text, most of the write's
    CPU in the publishing process: 310 µs of CPU for six rows, 4.4 ms for a
    group of 100 (``bench/README.md``). One JSON parameter keeps the statement's
    text the same for any number of rows, so psycopg parses it once, and the
    JSON is made by the standard library's C encoder (six rows: 90 µs; a
    hundred: 0.65 ms). PostgreSQL reads it as ``jsonb``, parsed once (``json``
    would be parsed again for each of a row's 22 columns), and its work is less
    than for the same rows as VALUES, up to :data:`JSON_TEXT_PER_ROW`.
    """
    width = len(PUBLISH_COLUMNS)
    return _JSON_ROWS.encode([params[start : start + width] for start in range(0, len(params), width)])


def _json_datetime(value: Any) -> str:
    # The values here are what _params gives PostgreSQL: text, integers, None and datetimes,
    # aware (USE_TZ) or naive (read in the connection's time zone, as psycopg sends them).
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__qualname__} is not a value of a publish record")


_JSON_ROWS = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=_json_datetime)


#: PostgreSQL runs the statements of one simple query as one implicit transaction, which SET LOCAL applies to.
ASYNCHRONOUS_COMMIT = "SET LOCAL synchronous_commit TO OFF; "


def _can_commit_asynchronously(connection: BaseDatabaseWrapper) -> bool:
    return (
        connection.vendor == "postgresql"
        and connection.get_autocommit()
        and not connection.in_atomic_block
        and not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding")
    )


def _record_published_sql(connection: BaseDatabaseWrapper, count: int, from_json: bool = False) -> str:
    """The publish write of ``count`` rows; ``from_json`` (PostgreSQL): of the rows of one JSON parameter.

    (See :func:`_rows_as_json`; each value is cast to the type the state
    function's parameter has, and the INSERT converts it to its column's.)
    """
    vendor = connection.vendor
    model = _model()
    q = _quoted(connection, PUBLISH_COLUMNS)
    table = connection.ops.quote_name(model._meta.db_table)
    finished = _finished_list(connection)
    if from_json:
        casts = ", ".join(
            f"(published->>{i})::{type_}" for i, type_ in enumerate(_state_function_types(PUBLISH_COLUMNS))
        )
        rows = f"SELECT {casts} FROM jsonb_array_elements(%s::jsonb) AS published"
    else:
        rows = "VALUES " + ", ".join(["(%s)" % ", ".join(["%s"] * len(PUBLISH_COLUMNS))] * count)
    insert = f"INSERT INTO {table} ({', '.join(q.values())}) {rows}"
    submitted = q["date_submitted"]
    if vendor == "mysql":
        guard = f"VALUES({q['retries']}) > {q['retries']} AND {q['status']} NOT IN ({finished})"
        # The guard reads retries: it is assigned last (MySQL assigns left to right).
        sets = [f"{submitted} = LEAST(COALESCE({submitted}, VALUES({submitted})), VALUES({submitted}))"]
        sets += [f"{q[name]} = IF({guard}, VALUES({q[name]}), {q[name]})" for name in REPUBLISHED]
        sql = f"{insert} ON DUPLICATE KEY UPDATE {', '.join(sets)}"
    else:
        guard = f"EXCLUDED.{q['retries']} > {table}.{q['retries']} AND {table}.{q['status']} NOT IN ({finished})"
        least = "MIN" if vendor == "sqlite" else "LEAST"
        sets = [f"{submitted} = {least}(COALESCE({table}.{submitted}, EXCLUDED.{submitted}), EXCLUDED.{submitted})"]
        sets += [
            f"{q[name]} = CASE WHEN {guard} THEN EXCLUDED.{q[name]} ELSE {table}.{q[name]} END" for name in REPUBLISHED
        ]
        # Rows that change nothing are not rewritten.
        where = f"{guard} OR {table}.{submitted} IS NULL OR EXCLUDED.{submitted} < {table}.{submitted}"
        sql = f"{insert} ON CONFLICT ({q['task_id']}) DO UPDATE SET {', '.join(sets)} WHERE {where}"
    return sql


#: (For :func:`_cached_sql`, which calls ``build(connection, count)``.)
_record_published_json_sql = functools.partial(_record_published_sql, from_json=True)


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
        # The guard of _store_state_sql (the order of the module's docstring).
        status, retries = row["status"], row.get("retries") or 0
        if status not in states.READY_STATES and (
            record.status in states.READY_STATES
            or retries < record.retries
            or (
                retries == record.retries
                and status in WAITING
                and record.status not in WAITING
                and not (
                    status == states.RETRY
                    and (row.get("date_started") is None or row.get("date_started") == record.date_started)
                )
            )
        ):
            return
        retries = max(record.retries, retries)
        for name in STATE_COLUMNS:
            if name in REPLACED or row.get(name) is not None:
                setattr(record, name, row.get(name))
        record.retries = retries
        record.save()


def _record_published_portable(connection: BaseDatabaseWrapper, rows: Sequence[dict[str, Any]]) -> None:
    manager = _model()._default_manager.db_manager(connection.alias)
    for row in rows:
        try:
            with transaction.atomic(using=connection.alias):
                manager.create(**{name: row.get(name) for name in PUBLISH_COLUMNS if row.get(name) is not None})
        except IntegrityError:
            manager.filter(
                Q(date_submitted__isnull=True) | Q(date_submitted__gt=row.get("date_submitted")), task_id=row["task_id"]
            ).update(date_submitted=row.get("date_submitted"))
            manager.filter(task_id=row["task_id"], retries__lt=row.get("retries") or 0).exclude(
                status__in=states.READY_STATES
            ).update(**{name: row.get(name) for name in REPUBLISHED})
