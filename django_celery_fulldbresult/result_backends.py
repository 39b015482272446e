"""``DatabaseResultBackend``: Celery's results, stored as full ``TaskResultMeta`` records.

Set ``CELERY_RESULT_BACKEND = "django_celery_fulldbresult.result_backends:DatabaseResultBackend"``.
Groups and chords are stored by the django-celery-results backend this one
extends (its ``GroupResult`` and ``ChordCounter`` models), so
``django_celery_results`` must be in ``INSTALLED_APPS`` too.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from typing import TYPE_CHECKING, Any

from celery import states
from celery.exceptions import Retry
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router
from django.db.utils import InterfaceError, OperationalError
from django.utils import timezone
from django.utils.translation import gettext
from django_celery_results.backends.database import DatabaseBackend

from .conf import app_settings
from .serialization import (
    as_datetime,
    clean_text,
    decode_arguments,
    decode_result,
    encode_arguments,
    encode_result,
    queue_from_delivery,
)
from .upsert import in_transaction, store_state, with_reconnect, worth_another_try

if TYPE_CHECKING:
    from .models import TaskResultMeta

#: What a dropped or refused database connection raises through Django, with
#: psycopg 3, psycopg2, mysqlclient and sqlite3 alike.
CONNECTION_ERRORS = (InterfaceError, OperationalError)


def task_model() -> type[TaskResultMeta]:
    """The record model, imported when a backend is made, not when this module is imported.

    So a project that names this backend without installing the app gets
    this message (and the system check E001) instead of Django's model error.
    """
    if apps.apps_ready and not apps.is_installed("django_celery_fulldbresult"):
        raise ImproperlyConfigured(
            gettext(
                "CELERY_RESULT_BACKEND is django-celery-fulldbresult's DatabaseResultBackend, but "
                "'django_celery_fulldbresult' is not in INSTALLED_APPS: add it (and 'django_celery_results'), "
                "then run migrate."
            )
        )
    from .models import TaskResultMeta

    return TaskResultMeta


#: What the backend remembers of each attempt, by the worker's request object
#: (Celery makes one per execution): when it started, and the task whose
#: arguments it has written. Kept beside the request, not on it: Celery copies
#: a request's unknown attributes into the headers of the messages it sends.
_attempts: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _note(request: Any, **facts: Any) -> None:
    # A request that cannot be weakly referenced: the backend does without
    # (arguments written with each state; the guard as without task_track_started).
    with contextlib.suppress(TypeError):
        _attempts.setdefault(request, {}).update(facts)


def _noted(request: Any, name: str) -> Any:
    try:
        return _attempts.get(request, {}).get(name)
    except TypeError:
        return None


def _is_cancellation(result: Any) -> bool:
    """Whether a RETRY's result is Celery's own ``Retry``: the worker cancelled the task, nothing is re-published.

    ``Task.retry()`` stores the task's exception (or None) instead. The
    result arrives as Celery prepared it: the exception itself (pickle), or
    its description (JSON).
    """
    if isinstance(result, Retry):
        return True
    return isinstance(result, dict) and (result.get("exc_module"), result.get("exc_type")) == (
        Retry.__module__,
        Retry.__name__,
    )


def _started(request: Any) -> Any:
    return _noted(request, "started")


def _arguments_written(request: Any, task_id: str) -> bool:
    return bool(_noted(request, "arguments_of") == task_id)


class DatabaseResultBackend(DatabaseBackend):
    """A result backend that keeps the task's name, real arguments, routing and timing."""

    TaskModel: type[TaskResultMeta]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.TaskModel = task_model()
        super().__init__(*args, **kwargs)

    def exception_safe_to_retry(self, exc: Exception) -> bool:
        """A dropped database connection is safe to retry on a new one, and a write that lost a lock race.

        Used with ``result_backend_always_retry = True``: the store is an
        idempotent upsert, so writing it again never duplicates a record. An
        error that would come back at every try (a missing table or column)
        is not: see :func:`.upsert.worth_another_try`.
        """
        if isinstance(exc, CONNECTION_ERRORS):
            connection = connections[router.db_for_write(self.TaskModel)]
            # Inside the caller's transaction (a task's update_state() in its
            # atomic block) nothing is retried: the transaction is lost with
            # the connection, which must stay as it is for the caller to see.
            if in_transaction(connection) or not worth_another_try(connection, exc):
                return False
            connection.close()
            return True
        return super().exception_safe_to_retry(exc)  # type: ignore[no-any-return]

    def _state_row(self, task_id: str, result: Any, state: str, traceback: Any, request: Any) -> dict[str, Any]:
        encoded = encode_result(self, result)
        now = timezone.now()
        row: dict[str, Any] = {
            "task_id": task_id,
            "status": state,
            "content_type": encoded.content_type,
            "content_encoding": encoded.content_encoding,
            "encoded_result": encoded.text,
            "traceback": clean_text(traceback),
            "date_done": now,
            "date_started": now if state == states.STARTED else None,
            "retries": 0,
        }
        if request is None:
            return row
        children = self.current_task_children(request)
        delivery_info = getattr(request, "delivery_info", None) or {}
        row.update(
            task=clean_text(getattr(request, "task", None)),
            hostname=clean_text(getattr(request, "hostname", None)),
            exchange=clean_text(delivery_info.get("exchange")),
            routing_key=clean_text(delivery_info.get("routing_key")),
            queue=clean_text(queue_from_delivery(delivery_info)),
            priority=delivery_info.get("priority"),
            eta=as_datetime(getattr(request, "eta", None)),
            expires=as_datetime(getattr(request, "expires", None)),
            retries=getattr(request, "retries", None) or 0,
            parent_id=getattr(request, "parent_id", None),
            root_id=getattr(request, "root_id", None),
            group_id=getattr(request, "group", None),
            periodic_task_name=clean_text(getattr(request, "periodic_task_name", None)),
            meta=json.dumps({"children": children}) if children else None,
        )
        if state == states.STARTED:
            _note(request, started=now)
        if state == states.RETRY and not _is_cancellation(result):
            # Task.retry() (and a worker lost with retry_on_worker_lost): the
            # message of the next attempt is published, and the record now
            # waits for it, whose ETA and expiry the re-publication knows, not
            # this request: keep the stored ones. This attempt's start tells
            # the write's guard whether the stored running state is this
            # attempt's own (see .upsert).
            row.update(retries=row["retries"] + 1, eta=None, expires=None, date_started=_started(request))
        # A Retry exception as the result is the worker cancelling the task
        # (its connection to the broker was lost): nothing is re-published,
        # the same message comes back with the same count.
        args, kwargs = getattr(request, "args", None), getattr(request, "kwargs", None)
        # Written with the attempt's first state only: a later state's write
        # without them keeps the stored ones (a 5 MB argument is not sent
        # again with STARTED, PROGRESS and SUCCESS).
        if (args is not None or kwargs is not None) and not _arguments_written(request, task_id):
            row.update(encode_arguments(args, kwargs)._asdict())
        return row

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        using: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Write the task's state in one statement (see :mod:`.upsert`)."""
        if getattr(request, "id", None) not in (None, task_id):
            # Another task's request: Task.update_state(task_id=other) passes
            # the caller's. Its name, arguments, routing and retry count are
            # not the other task's (a count that only grows would even refuse
            # that task's own STARTED): the write has the state and result only.
            request = None
        if state not in states.READY_STATES and getattr(request, "ignore_result", False) is True:
            # Celery 5.5 stores STARTED for a call made with
            # apply_async(ignore_result=True), then never its end: such a
            # record would stay STARTED forever and be reported stale.
            return result
        row = self._state_row(task_id, result, state, traceback, request)
        alias = using or router.db_for_write(self.TaskModel)
        # A connection the database dropped (restart, idle timeout, failover)
        # is replaced once before the error reaches Celery's own retries.
        connection = connections[alias]
        synchronous = state in states.READY_STATES or app_settings.UNFINISHED_SYNCHRONOUS_COMMIT
        with_reconnect(connection, store_state, row, synchronous)
        if "args" in row and request is not None and connection.get_autocommit():
            # Not inside a transaction (a task's own atomic block): a rollback
            # would take the arguments with it.
            _note(request, arguments_of=task_id)
        return result

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        record = self.TaskModel.objects.using(router.db_for_read(self.TaskModel)).filter(task_id=task_id).first()
        if record is None:
            return {"task_id": task_id, "status": states.PENDING, "result": None, "traceback": None, "children": []}
        try:
            args, kwargs = decode_arguments(record.args, record.kwargs)
        except ValueError:
            args, kwargs = record.args, record.kwargs
        meta = {
            "task_id": record.task_id,
            "status": record.status,
            "result": decode_result(self, record.content_type, record.content_encoding, record.encoded_result),
            "date_done": record.date_done,
            "traceback": record.traceback,
            "children": record.children,
            "name": record.task,
            "args": args,
            "kwargs": kwargs,
            "worker": record.hostname,
            "retries": record.retries,
            "queue": record.queue,
            "parent_id": record.parent_id,
            "group_id": record.group_id,
        }
        return self.meta_from_decoded(meta)  # type: ignore[no-any-return]

    def _forget(self, task_id: str) -> None:
        self.TaskModel.objects.using(router.db_for_write(self.TaskModel)).filter(task_id=task_id).delete()

    def cleanup(self) -> None:
        """Delete expired finished records (Celery's ``celery.backend_cleanup``), in batches."""
        if not self.expires:
            return
        self.TaskModel.objects.db_manager(router.db_for_write(self.TaskModel)).delete_expired(self.expires)
        self.GroupModel._default_manager.delete_expired(self.expires)
