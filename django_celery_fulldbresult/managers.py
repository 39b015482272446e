"""Queries on task records: stale detection, JSON lookups, retry and clean-up.

The result backend, the publish hook, the admin and the command are thin
callers of what is here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery import states
from django.db import connections, models, router
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.translation import gettext as _

from .conf import app_settings

if TYPE_CHECKING:
    from .models import TaskResultMeta  # noqa: F401  (the type parameter of the QuerySet below)
    from .retry import RetryReport

#: What ``with_stale_kind()`` says of each stale record.
NEVER_STARTED = "never_started"  # published (PENDING) and never started
WORKER_GONE = "worker_gone"  # STARTED by a worker that is gone (or came back under its name and lost it)
RUNNING = "running"  # STARTED, and a worker that answers is running it: slow, not lost
STARTED_UNKNOWN = "started"  # STARTED, and no worker could be asked
WAITING_RETRY = "waiting_retry"  # RETRY: the retry never ran
WAITING_ETA = "waiting_eta"  # PENDING with an ETA, which has passed
OTHER = "other"  # a custom state

STALE_KINDS = (NEVER_STARTED, WORKER_GONE, RUNNING, STARTED_UNKNOWN, WAITING_RETRY, WAITING_ETA, OTHER)

_ASK_WORKERS = object()


def stale_cutoff(max_duration: timedelta | None = None) -> Any:
    """The time before which an unfinished record's last change makes it stale."""
    if max_duration is None:
        max_duration = app_settings.STALE_AFTER
    if max_duration < timedelta(0):
        raise ValueError(_("max_duration must not be negative"))
    return timezone.now() - max_duration


def live_worker_hostnames(app: Any = None, timeout: float | None = None) -> set[str] | None:
    """Hostnames of the workers that answer a ping, or None if none could be asked."""
    if app is None:
        from celery import current_app as app
    if timeout is None:
        timeout = app_settings.WORKER_PING_TIMEOUT
    try:
        replies = app.control.ping(timeout=timeout)
    except Exception:  # the broker is down: we cannot tell
        return None
    return {name for reply in replies or () for name in reply}


def live_workers_and_tasks(app: Any = None, timeout: float | None = None) -> tuple[set[str], set[str]] | None:
    """The hostnames of the workers that answer, and the ids of the tasks they run now; None if none could be asked.

    Celery's ``inspect().active()``. Who runs a task, not only whether its
    worker's name answers: a worker killed with the task and started again
    under the same name (``celery@%h`` after a reboot, a container or a
    systemd restart) answers, and runs it no more.
    """
    if app is None:
        from celery import current_app as app
    if timeout is None:
        timeout = app_settings.WORKER_PING_TIMEOUT
    try:
        replies = app.control.inspect(timeout=timeout).active() or {}
    except Exception:  # the broker is down: we cannot tell
        return None
    running = {
        str(task["id"])
        for tasks in replies.values()
        if isinstance(tasks, list)
        for task in tasks
        if isinstance(task, dict) and task.get("id")
    }
    return set(replies), running


def _as_json(column: str, readable: models.Q | None = None) -> models.Case:
    """A text column as JSON, NULL for rows it cannot be: one such row must not fail the whole query.

    PostgreSQL's jsonb refuses the escaped NUL character (``\\u0000``, which a
    NUL in an argument becomes), and a result stored with another serializer
    (pickle, base64) is not JSON at all.
    """
    unreadable = models.Q(**{f"{column}__contains": "\\u0000"})
    if readable is not None:
        unreadable |= ~readable
    return models.Case(
        models.When(unreadable, then=models.Value(None, output_field=models.JSONField())),
        default=Cast(column, models.JSONField()),
        output_field=models.JSONField(),
    )


class _Unfinished(models.Lookup):
    """``NOT (status IN ('FAILURE', 'REVOKED', 'SUCCESS'))``, the states written in: the partial index's condition.

    A lookup, not ``extra(where=...)``: Django names its column as the query
    does (``U0."status"`` in a subquery). Not a function either: SQLite, with
    no boolean type, would get it compared to true, no longer word for word.
    """

    lookup_name = "fulldbresult_unfinished"  # (never registered: used as an expression)
    prepare_rhs = False
    FINISHED = ", ".join("'%s'" % state for state in sorted(states.READY_STATES))

    def __init__(self, lhs: Any) -> None:
        super().__init__(lhs, None)

    def as_sql(self, compiler: Any, connection: Any) -> Any:
        lhs, params = compiler.compile(self.lhs)
        return f"NOT ({lhs} IN ({self.FINISHED}))", params


def write_alias(queryset: models.QuerySet[Any]) -> str:
    """Where a QuerySet's writes go: the router's write database (not a read
    replica the records may be read from), unless ``.using()`` chose."""
    chosen: str | None = getattr(queryset, "_db", None)
    return chosen or router.db_for_write(queryset.model)


class TaskResultMetaQuerySet(models.QuerySet["TaskResultMeta"]):
    def get_stale_tasks(
        self,
        max_duration: timedelta | None = None,
        acceptable_states: Collection[str] | None = None,
    ) -> TaskResultMetaQuerySet:
        """Records not in an acceptable (finished) state, unchanged for ``max_duration``.

        ``max_duration`` defaults to ``DJANGO_CELERY_FULLDBRESULT_STALE_AFTER``
        (one hour); ``acceptable_states`` to Celery's ``READY_STATES``
        (SUCCESS, FAILURE, REVOKED). A task whose ETA is not yet past by
        ``max_duration`` is not stale.
        """
        cutoff = stale_cutoff(max_duration)
        if acceptable_states is None:
            acceptable_states = states.READY_STATES
        stale = self.exclude(status__in=sorted(acceptable_states)).filter(
            models.Q(eta__isnull=True) | models.Q(eta__lt=cutoff), date_done__lt=cutoff
        )
        if connections[self.db].vendor == "sqlite" and set(acceptable_states) == set(states.READY_STATES):
            # SQLite uses a partial index only for a query that has its
            # condition word for word, and Django binds the states as
            # parameters: the condition again, with the states written in.
            stale = stale.filter(_Unfinished(models.F("status")))
        return stale

    def with_stale_kind(
        self, live_workers: Iterable[str] | object | None = _ASK_WORKERS, running_tasks: Iterable[str] | None = None
    ) -> TaskResultMetaQuerySet:
        """Annotate ``stale_kind``: why each record has not finished.

        By default the workers are asked (``WORKER_PING_TIMEOUT`` seconds)
        which tasks they are running (:func:`live_workers_and_tasks`): a
        STARTED record is ``running`` if one of them runs it, else
        ``worker_gone``. ``live_workers``, the hostnames of the workers that
        are alive, with ``running_tasks``, the ids of the tasks they run, say
        it instead; ``live_workers`` alone, a STARTED record on one of them
        counts as running. ``None``: they could not be asked, and STARTED
        records are of kind ``started``.
        """
        if live_workers is _ASK_WORKERS:
            asked = live_workers_and_tasks()
            live_workers, running_tasks = asked if asked is not None else (None, None)
        started: list[models.When] = []
        if live_workers is None:
            started.append(models.When(status=states.STARTED, then=models.Value(STARTED_UNKNOWN)))
        else:
            if running_tasks is not None:
                running = models.Q(task_id__in=sorted(running_tasks))
            else:
                running = models.Q(hostname__in=sorted(live_workers))  # type: ignore[call-overload]
            started.append(models.When(running, status=states.STARTED, then=models.Value(RUNNING)))
            started.append(models.When(status=states.STARTED, then=models.Value(WORKER_GONE)))
        waiting = [states.PENDING, states.RECEIVED]
        return self.annotate(
            stale_kind=models.Case(
                *started,
                models.When(status=states.RETRY, then=models.Value(WAITING_RETRY)),
                models.When(status__in=waiting, eta__isnull=False, then=models.Value(WAITING_ETA)),
                models.When(status__in=waiting, then=models.Value(NEVER_STARTED)),
                default=models.Value(OTHER),
                output_field=models.CharField(),
            )
        )

    def with_json(self) -> TaskResultMetaQuerySet:
        """Annotate ``args_json``, ``kwargs_json`` and ``result_json`` for JSON lookups.

        ``.with_json().filter(kwargs_json__user__id=42)`` works on SQLite,
        PostgreSQL and MariaDB/MySQL. ``result_json`` holds the result when it
        is stored as JSON (the default ``json`` serializer, or USE_JSON).
        """
        json_result = models.Q(content_type="application/json")
        return self.annotate(
            args_json=_as_json("args"),
            kwargs_json=_as_json("kwargs"),
            result_json=_as_json("encoded_result", json_result),
        )

    def retry(self, force: bool = False, app: Any = None) -> RetryReport:
        """Send each record's task again; see :mod:`django_celery_fulldbresult.retry`."""
        from .retry import retry_queryset

        return retry_queryset(self, force=force, app=app)

    def write_alias(self) -> str:
        return write_alias(self)

    def get_task(self, task_id: str) -> Any:
        return self.filter(task_id=task_id).first()

    def delete_expired(self, expires: timedelta | float, batch_size: int = 2000) -> int:
        """Delete finished records older than ``expires``, ``batch_size`` at a time.

        Unfinished records are never deleted: they are what stale detection
        reports. Each batch is its own short transaction, so no lock is held
        on the table for long.
        """
        if not isinstance(expires, timedelta):
            expires = timedelta(seconds=expires)
        cutoff = timezone.now() - expires
        alias = self.write_alias()
        expired = self.using(alias).filter(status__in=sorted(states.READY_STATES), date_done__lt=cutoff)
        deleted = 0
        while True:
            batch = list(expired.order_by().values_list("pk", flat=True)[:batch_size])
            if not batch:
                return deleted
            deleted += self.using(alias).filter(pk__in=batch)._raw_delete(alias)

    def distinct_values(self, field: str, limit: int = 200) -> list[str]:
        """The first ``limit`` distinct non-null values of ``task`` or ``status``, sorted.

        Filters on the QuerySet are ignored: this is the admin's list of
        names and states. A plain ``SELECT DISTINCT`` reads the whole table;
        on PostgreSQL and SQLite a recursive query jumps from one value to
        the next along the column's index instead (a loose index scan), so
        it costs one index probe a value. MySQL/MariaDB do that for DISTINCT
        on an indexed column by themselves.
        """
        if field not in ("task", "status"):
            raise ValueError(_("distinct_values() reads only the indexed columns task and status"))
        connection = connections[self.db]
        if connection.vendor not in ("postgresql", "sqlite"):
            query = self.model._default_manager.using(self.db).exclude(**{f"{field}__isnull": True})
            return list(query.order_by(field).values_list(field, flat=True).distinct()[:limit])
        quote = connection.ops.quote_name
        column_name: str = getattr(self.model._meta.get_field(field), "column", field)
        table, column = quote(self.model._meta.db_table), quote(column_name)
        sql = (
            f"WITH RECURSIVE v(value, n) AS ("
            f" SELECT (SELECT MIN({column}) FROM {table}), 1"
            f" UNION ALL"
            f" SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > v.value), v.n + 1"
            f" FROM v WHERE v.value IS NOT NULL AND v.n < %s"
            f") SELECT value FROM v WHERE value IS NOT NULL"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [limit])
            return [row[0] for row in cursor.fetchall()]

    def estimated_count(self) -> int | None:
        """The planner's estimate of the table's row count (PostgreSQL), or None.

        What the planner itself uses: the last ANALYZE's density times the
        table's current size. None where there is no estimate (other
        databases, a table never analyzed).
        """
        connection = connections[self.db]
        if connection.vendor != "postgresql":
            return None
        sql = (
            "SELECT CASE WHEN c.reltuples < 0 OR c.relpages = 0 THEN NULL ELSE"
            " (c.reltuples / c.relpages * (pg_relation_size(c.oid) / current_setting('block_size')::int))::bigint END"
            " FROM pg_class c WHERE c.oid = %s::regclass"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [connection.ops.quote_name(self.model._meta.db_table)])
            row = cursor.fetchone()
        return None if row is None or row[0] is None else int(row[0])


class TaskResultMetaManager(models.Manager.from_queryset(TaskResultMetaQuerySet)):  # type: ignore[misc]
    pass
