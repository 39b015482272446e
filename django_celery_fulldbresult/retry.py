"""Sending a stored task again: the admin action and button, ``find_stale_tasks
--retry``, ``QuerySet.retry()`` and ``TaskResultMeta.retry()`` all come here.

Each task is sent with ``send_task`` under a new id, with its original name,
arguments and routing: its recorded queue (or exchange and routing key),
priority, and nothing else, so the app's ``task_routes`` apply where the
original had no routing recorded.

Lineage: the new record's ``retry_of`` is the old task's id, the old record's
``retried_as`` the new one's. A record that was retried already is refused
unless ``force=True``. The claim on a record is one conditional UPDATE, so two
operators (or two cron jobs) retrying the same record at once send it once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import states
from django.db import router
from django.utils import timezone
from django.utils.translation import gettext as _

from .models import TaskResultMeta
from .publish import already_recorded, connection_for_records, is_ignored, write_records
from .serialization import decode_arguments
from .upsert import _rows_per_statement

logger = logging.getLogger(__name__)

#: How many records are claimed, written and sent per round. (Under ~990:
#: SQLite parses the claim's chain of ORs, one per record, to that depth, and
#: refuses expressions deeper than 1,000.)
CHUNK = 500
#: Parameters of the claim per record: its new id (task id, new id) and its condition (three at most).
CLAIM_PARAMETERS = 5
#: What a retry reads of a record (``QuerySet.retry()``, the admin): not the
#: result, traceback or meta, which can be large and are not sent.
RETRY_FIELDS = (
    "task_id", "task", "status", "date_done", "args", "kwargs", "not_retryable_reason", "retried_as",
    "exchange", "routing_key", "queue", "priority", "periodic_task_name",
)  # fmt: skip


@dataclass
class RetryReport:
    """What a retry did: ``sent`` maps old task ids to new ones."""

    sent: dict[str, str] = field(default_factory=dict)
    #: Old task id -> why it was not sent.
    refused: dict[str, str] = field(default_factory=dict)
    #: Of those, the ones the broker or the database failed (not refused by a rule): try them again later.
    failed: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.sent)


def refusal(record: TaskResultMeta, force: bool = False) -> str | None:
    """Why this record cannot be sent again, or None if it can."""
    if not record.task:
        return _("the task's name is not recorded")
    if record.not_retryable_reason:
        return record.not_retryable_reason
    if record.retried_as and not force:
        return _("already retried as %(task_id)s") % {"task_id": record.retried_as}
    try:
        decode_arguments(record.args, record.kwargs)
    except Exception as exc:  # (kombu's markers raise what their type's constructor raises: decimal, uuid, bytes)
        return _("the stored arguments cannot be decoded: %(error)s") % {"error": exc}
    return None


def _routing(record: TaskResultMeta) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if record.queue:
        options["queue"] = record.queue
    elif record.exchange or record.routing_key:
        options["exchange"] = record.exchange or ""
        options["routing_key"] = record.routing_key
    if record.priority is not None:
        options["priority"] = record.priority
    return options


def _claim(
    records: list[TaskResultMeta], new_ids: dict[str, str], force: bool, connection: Any, refused: dict[str, str]
) -> list[TaskResultMeta]:
    """Set ``retried_as`` on the records nobody else claimed first, and unchanged since read; return those.

    One UPDATE for the whole chunk (:func:`_claim_statement`), then
    one SELECT to see which claims are ours: two statements per chunk, not
    one per record, which is what makes 10,000 retries take seconds. A record
    read unclaimed is claimed only if it still is; a forced retry replaces
    only the claim it read, so two forced retries at once send once. And a
    record that changed since it was read (its state, or the time of its
    last state change: a stale task a worker started, finished or took again
    meanwhile, a list read from a replica behind) is not claimed: it would
    run twice. The records not claimed get their reason in ``refused``.
    (``records`` holds each task id once.)
    """
    table, task_id, retried_as = _names(connection)
    status = connection.ops.quote_name("status")
    claims = [record for record in records if force or not record.retried_as]
    if not claims:
        return []
    ids = list(new_ids)
    with connection.cursor() as cursor:
        cursor.execute(*_claim_statement(connection, claims, new_ids))
        cursor.execute(
            f"SELECT {task_id}, {retried_as}, {status} FROM {table} "
            f"WHERE {task_id} IN ({', '.join(['%s'] * len(ids))})",
            ids,
        )
        now = {found_id: (claim, state) for found_id, claim, state in cursor.fetchall()}
    claimed = []
    for record in records:
        claim, state = now.get(record.task_id, (None, None))
        if state is None:
            refused[record.task_id] = _("the record no longer exists")
        elif claim == new_ids[record.task_id]:
            claimed.append(record)
        elif claim != record.retried_as:
            refused[record.task_id] = _("retried by someone else at the same time")
        elif state != record.status:
            refused[record.task_id] = _("its state changed to %(state)s since it was read") % {"state": state}
        else:
            refused[record.task_id] = _("it changed since it was read (a new %(state)s)") % {"state": state}
    return claimed


def _claim_statement(connection: Any, claims: list[TaskResultMeta], new_ids: dict[str, str]) -> tuple[str, list[Any]]:
    """The claim's UPDATE: each record's new id, where its claim and its time of last change are still those read.

    Unchanged means the same time of the last state change (every state
    change sets it; the state is then the one read) and the same claim (none,
    or for a forced retry the one read).
    """
    table, task_id, retried_as = _names(connection)
    date_done = connection.ops.quote_name("date_done")
    adapt = connection.ops.adapt_datetimefield_value  # as the ORM compares datetimes on this database
    if connection.vendor == "postgresql":
        # Joined to the records as a list of values: linear, where a term per
        # record is evaluated again for each row found (~0.4 s per 10,000).
        rows = ", ".join(["(%s, %s::timestamptz, %s, %s)"] * len(claims))
        sql = (
            f"UPDATE {table} AS claimed SET {retried_as} = claim.new_id "
            f"FROM (VALUES {rows}) AS claim(task_id, date_done, read_claim, new_id) "
            f"WHERE claimed.{task_id} = claim.task_id AND claimed.{date_done} = claim.date_done "
            f"AND claimed.{retried_as} IS NOT DISTINCT FROM claim.read_claim"
        )
        params = [
            value
            for record in claims
            for value in (record.task_id, adapt(record.date_done), record.retried_as, new_ids[record.task_id])
        ]
        return sql, params
    # One term per record, each led by its task id: SQLite, without statistics
    # (Django never runs ANALYZE), would read a whole state's index for a term
    # grouping the records by state (1.5 s a chunk at 150k rows, against 33 ms).
    unclaimed = f"({task_id} = %s AND {date_done} = %s AND {retried_as} IS NULL)"
    claimed_before = f"({task_id} = %s AND {date_done} = %s AND {retried_as} = %s)"
    conditions, params = [], []
    for record in claims:
        conditions.append(claimed_before if record.retried_as else unclaimed)
        params += [record.task_id, adapt(record.date_done), *([record.retried_as] if record.retried_as else [])]
    case = f"CASE {task_id} {' '.join(['WHEN %s THEN %s'] * len(claims))} END"
    ids = [value for record in claims for value in (record.task_id, new_ids[record.task_id])]
    return f"UPDATE {table} SET {retried_as} = {case} WHERE {' OR '.join(conditions)}", ids + params


def _names(connection: Any) -> tuple[str, str, str]:
    quote = connection.ops.quote_name
    return quote(TaskResultMeta._meta.db_table), quote("task_id"), quote("retried_as")


def _new_row(record: TaskResultMeta, new_id: str, now: Any) -> dict[str, Any]:
    return {
        "task_id": new_id,
        "task": record.task,
        "status": states.PENDING,
        "args": record.args,
        "kwargs": record.kwargs,
        "not_retryable_reason": "",
        "exchange": record.exchange,
        "routing_key": record.routing_key,
        "queue": record.queue,
        "priority": record.priority,
        "retries": 0,
        "periodic_task_name": record.periodic_task_name,
        "retry_of": record.task_id,
        "date_submitted": now,
        "date_done": now,
    }


def retry_queryset(queryset: Any, force: bool = False, app: Any = None) -> RetryReport:
    """``QuerySet.retry()`` and the admin's actions: read only what a retry sends; write where the queryset writes.

    That is the database the queryset chose (``.using()``), else the router's
    write database (not a read replica the records may be read from).
    """
    from .managers import write_alias

    using = write_alias(queryset)
    if not queryset.query.combinator:  # (union() and the like take no defer() or only())
        # defer(None) first: only() keeps deferred what an earlier defer() named, the arguments too.
        queryset = queryset.defer(None).only(*RETRY_FIELDS)
    return retry_records(queryset, force=force, app=app, using=using)


def retry_records(
    records: Iterable[TaskResultMeta],
    force: bool = False,
    app: Any = None,
    using: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> RetryReport:
    """Send each record's task again; return what was sent and what was refused."""
    if app is None:
        from celery import current_app as app
    using = using or router.db_for_write(TaskResultMeta)
    report = RetryReport()
    pending: list[TaskResultMeta] = []
    listed: set[str] = set()
    for record in records:
        if record.task_id in listed:  # listed twice: sent (or refused) once
            continue
        listed.add(record.task_id)
        reason = refusal(record, force)
        if reason is None:
            pending.append(record)
        else:
            report.refused[record.task_id] = reason
    # Claims and new records are written outside the caller's transaction,
    # as publish records are: the messages go out whatever the caller does.
    connection = connection_for_records(using)
    # SQLite before 3.32 takes 999 parameters a statement: CLAIM_PARAMETERS a record.
    size = min(CHUNK, _rows_per_statement(connection, CHUNK, CLAIM_PARAMETERS) or CHUNK)
    for start in range(0, len(pending), size):
        chunk = pending[start : start + size]
        new_ids = {record.task_id: str(uuid.uuid4()) for record in chunk}
        claimed = _claim(chunk, new_ids, force, connection, report.refused)
        now = timezone.now()
        # A task whose result is ignored gets no record: no worker would finish it.
        rows = [_new_row(r, new_ids[r.task_id], now) for r in claimed if not is_ignored(r.task or "")]
        try:
            write_records(rows, using)
        except Exception as exc:
            # Nothing is sent without its record: the claims are given back.
            reason = _("not sent: its new record could not be written: %(error)s") % {"error": exc}
            try:
                _unclaim(connection, claimed, new_ids)
            except Exception:
                logger.exception(
                    "Could not give back the retry claims of %d records (retry them with force): %s",
                    len(claimed),
                    ", ".join(r.task_id for r in claimed),
                )
                reason += _unclaim_failed()
            for record in claimed:
                report.refused[record.task_id] = reason
                report.failed.add(record.task_id)
            continue
        _send(app, claimed, new_ids, report, connection)
        if progress:
            progress(len(claimed))
    return report


def _unclaim_failed() -> str:
    """What a refusal adds when the claim could not be given back either."""
    return " " + _("(and its claim could not be given back: retry it with force)")


def _unclaim(connection: Any, records: list[TaskResultMeta], new_ids: dict[str, str]) -> None:
    """Give back the claims on records whose new task was not sent, and drop their new records."""
    table, task_id, retried_as = _names(connection)
    status = connection.ops.quote_name("status")
    with connection.cursor() as cursor:
        for record in records:
            new_id = new_ids[record.task_id]
            cursor.execute(
                f"UPDATE {table} SET {retried_as} = %s WHERE {task_id} = %s AND {retried_as} = %s",
                [record.retried_as, record.task_id, new_id],
            )
            cursor.execute(f"DELETE FROM {table} WHERE {task_id} = %s AND {status} = %s", [new_id, states.PENDING])


def _send(
    app: Any, claimed: list[TaskResultMeta], new_ids: dict[str, str], report: RetryReport, connection: Any
) -> None:
    with already_recorded(list(new_ids.values())), app.producer_or_acquire() as producer:
        for record in claimed:
            new_id = new_ids[record.task_id]
            args, kwargs = decode_arguments(record.args, record.kwargs)
            try:
                app.send_task(
                    record.task, args=args, kwargs=kwargs, task_id=new_id, producer=producer, **_routing(record)
                )
            except Exception as exc:
                # Not sent: undo the claim and the new record, and say why.
                reason = _("could not be sent: %(error)s") % {"error": exc}
                try:
                    _unclaim(connection, [record], new_ids)
                except Exception:
                    logger.exception("Could not give back the retry claim of %s", record.task_id)
                    reason += _unclaim_failed()
                report.refused[record.task_id] = reason
                report.failed.add(record.task_id)
            else:
                report.sent[record.task_id] = new_id
