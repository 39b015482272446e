"""Publish tracking: a PENDING record for each task when it is published.

With ``DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH = True`` the handler of
Celery's ``before_task_publish`` signal writes the record of every task sent
from this process — ``delay``, ``apply_async``, ``send_task``, the members of
chains, groups and chords, beat, ``Task.retry()`` — with its name, real
arguments, routing, ETA and ``date_submitted``. With the setting off it does
nothing but read the setting.

Choices, and why:

* The write is insert-if-absent (:func:`.upsert.record_published`): the
  worker may finish the task before the publisher's write lands, and its
  record must win.
* It never runs inside the caller's transaction. Inside ``atomic()`` it goes
  through a connection of its own, in autocommit: a rollback cannot erase the
  record of a message that was sent anyway, and the caller's open transaction
  never holds a lock the worker's write would wait for. SQLite has a single
  writer, which the caller's transaction holds: there the record is written in
  that transaction instead (after a rollback, the worker writes its own as
  the task runs). That connection follows ``CONN_MAX_AGE`` like Django's own
  (closed at the end of a request, and of a task in a worker).
* From an event loop (an async view calling ``.delay()``), where Django
  refuses database calls, the write is made from a thread of its own.
* A connection the database dropped is replaced once, as for the worker's
  writes, so a long-running publisher (beat, a script) recovers from a
  database restart.
* The write waits for its commit to be flushed to disk, like any other, unless
  ``PUBLISH_SYNCHRONOUS_COMMIT = False`` (PostgreSQL only): then its
  transaction commits with ``synchronous_commit`` off, which takes most of the
  write's time off the caller's ``apply_async``. The price: a crash of the
  PostgreSQL server can lose the PENDING records of the last moments (up to
  three times ``wal_writer_delay``, 0.6 s by default; the database stays
  consistent). Off by default: a crash of the whole host can drop the broker's
  latest messages too, and those records are what finds them.
* ``PUBLISH_IN_BACKGROUND = True`` (off by default) takes the write off the
  caller's path altogether: the handler builds the row (the arguments are
  encoded as they are at publication) and hands it to a thread of this
  process (:class:`BackgroundWriter`), which writes what has queued up in one
  statement, through a connection of its own, and closes it after
  :data:`BackgroundWriter.IDLE_SECONDS` without work. The thread is woken
  once the message is sent (``after_task_publish``), not while
  ``apply_async`` still waits for the broker. ``apply_async`` then costs what
  it costs without tracking, plus the row (~40 µs). The price: the
  record is committed a moment after ``apply_async`` returns, not before, and
  a process killed in that moment (SIGKILL, ``os._exit``) loses the PENDING
  records it had not written; its tasks' records are still written by the
  worker that runs them. Rows are written at interpreter exit (``atexit``),
  after each task in a worker (``task_postrun``) and when a worker process
  shuts down; :func:`flush` waits for them anywhere else. A write the
  database refuses is tried again (:data:`BackgroundWriter.RETRY_DELAYS`),
  then logged with the task ids; past :data:`BackgroundWriter.MAX_QUEUED`
  rows waiting (the database unreachable for long), new rows are logged and
  dropped rather than held in memory or made to block the publisher. A
  forked child starts a writer of its own.
* If the write fails, the error is logged and the task is published all the
  same: a task is never lost because its record could not be written. The
  worker's own writes then create the record.
* Groups: the records of a group's members are written together, in one
  statement (per :data:`BATCH_SIZE` members), when the group has been sent.
  Celery has no hook at the end of a group's publication
  (``group.apply_async`` publishes member after member, each through
  ``before_task_publish``, and nothing fires after the last), so the app
  config wraps ``celery.canvas.group.apply_async`` — which also sends a
  chord's header and a chain's leading group — in :func:`batch`
  (:func:`record_groups_in_one_write`). The same block is public, for any
  other run of messages::

      with publish.batch():
          for order in orders:
              ship.delay(order.pk)

  In a block the records are kept and written when it exits — normally or by
  an exception — and after every :data:`BATCH_SIZE` messages. Why they follow
  the messages instead of preceding them: the rows cannot be known before the
  messages are built (a member's routing, ETA, expiry and merged arguments are
  set by ``amqp.send_task_message`` as each one is sent, and members may be
  chains or chords). That order is safe: a worker that runs a task first
  writes its own record, which the insert-if-absent write never overwrites; it
  only adds the submission time the worker does not know. A failed write is
  logged, as outside a block. Only a process killed inside the block loses the
  PENDING records of the messages it sent in it (their tasks' records are
  still written by the worker that runs them). The retry module needs no
  block: it knows the rows before it sends, and writes them first.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import os
import stat
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from celery import current_app, states
from django.db import connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from .conf import app_settings
from .serialization import as_datetime, clean_text, encode_arguments, queue_from_delivery
from .upsert import record_published, with_reconnect

logger = logging.getLogger(__name__)

#: This thread's connections for writing outside its caller's transactions (see _independent_connection).
_local = threading.local()
#: The rows of the open :func:`batch` block, and the ids :func:`already_recorded` skips: per thread and per
#: asyncio task (a coroutine's block open across an ``await`` must not take in the messages that another
#: request's coroutine sends on the same event loop meanwhile).
_batch: ContextVar[list[dict[str, Any]] | None] = ContextVar("fulldbresult_publish_batch", default=None)
_recorded: ContextVar[frozenset[str]] = ContextVar("fulldbresult_publish_recorded", default=frozenset())


def is_ignored(name: str, requested: bool | None = None) -> bool:
    """Whether a worker will store nothing for this task (so no record is written for it).

    The worker's own rule, which changed in Celery 5.6: since then the
    message's ``ignore_result`` wins when it has one (Celery's
    ``get_actual_ignore_result``); before, the result is ignored when either
    the message or the registered task says so. The registered task's
    setting defaults to ``task_ignore_result``.
    """
    app = current_app
    task = app.tasks.get(name)
    registered = bool(task.ignore_result) if task is not None else bool(app.conf.task_ignore_result)
    if _MESSAGE_WINS:
        return bool(requested) if requested is not None else registered
    return bool(requested) or registered


try:
    from celery.app.task import get_actual_ignore_result  # type: ignore[attr-defined]  # noqa: F401  (Celery 5.6+)

    _MESSAGE_WINS = True
except ImportError:  # Celery 5.5
    _MESSAGE_WINS = False


def published_row(
    body: Any, exchange: Any, routing_key: str | None, headers: dict[str, Any], properties: dict[str, Any], declare: Any
) -> dict[str, Any] | None:
    """The record of a message about to be published, or None for an ignored task."""
    if "task" in headers:  # protocol 2
        name, task_id = headers["task"], headers["id"]
        args, kwargs = (body[0], body[1]) if isinstance(body, (tuple, list)) and len(body) >= 2 else ((), {})
        fields = headers
    else:  # protocol 1: everything is in the body
        name, task_id = body["task"], body["id"]
        args, kwargs = body.get("args"), body.get("kwargs")
        fields = body
    if is_ignored(name, headers.get("ignore_result")):
        return None
    exchange_name = getattr(exchange, "name", exchange)
    queue = getattr(declare[0], "name", None) if declare else None
    if queue is None:
        queue = queue_from_delivery({"exchange": exchange_name, "routing_key": routing_key})
    now = timezone.now()
    row = {
        "task_id": task_id,
        "task": clean_text(name),
        "status": states.PENDING,
        "exchange": clean_text(exchange_name),
        "routing_key": clean_text(routing_key),
        "queue": clean_text(queue),
        "priority": properties.get("priority"),
        "eta": as_datetime(fields.get("eta")),
        "expires": as_datetime(fields.get("expires")),
        "retries": fields.get("retries") or 0,
        "parent_id": headers.get("parent_id"),
        "root_id": headers.get("root_id"),
        "group_id": headers.get("group") or fields.get("taskset"),
        "periodic_task_name": clean_text(headers.get("periodic_task_name")),
        "date_submitted": now,
        "date_done": now,
    }
    row.update(encode_arguments(args, kwargs)._asdict())
    return row


def _independent_connection(alias: str) -> BaseDatabaseWrapper:
    """A connection of this thread's own, outside any transaction of the caller."""
    own: dict[str, BaseDatabaseWrapper] = _local.__dict__.setdefault("connections", {})
    connection = own.get(alias)
    if connection is None:
        connection = own[alias] = connections.create_connection(alias)
        connection.__dict__[_OWN] = True  # its socket is noted (remember_socket), for a fork (_after_fork_in_child)
    return connection


#: The mark of a connection this module opened itself (not one of Django's per-thread connections).
_OWN = "_fulldbresult_own"


def connection_for_records(alias: str) -> BaseDatabaseWrapper:
    """The connection that writes records now, never inside the caller's transaction.

    SQLite has a single writer: inside the caller's transaction, which holds
    (or will take) the write lock, a second connection could only wait for it.
    There the caller's connection is used, and the write is part of the
    caller's transaction.
    """
    connection = connections[alias]
    if not connection.in_atomic_block or connection.vendor == "sqlite":
        return connection
    return _independent_connection(alias)


def close_old_connections(**kwargs: Any) -> None:
    """Close this thread's own connections as Django closes its own (CONN_MAX_AGE).

    And those of the thread that writes for event loops (:func:`write_records`),
    in that thread, without waiting for it. Connected to ``request_started``,
    ``request_finished`` and Celery's ``task_postrun`` by the app config.
    """
    for connection in getattr(_local, "connections", {}).values():
        connection.close_if_unusable_or_obsolete()
    _close_executor_connections(obsolete_only=True, wait=False)


def close_connections() -> None:
    """Close this thread's own connections now, and those of the thread that writes for event loops."""
    for connection in getattr(_local, "connections", {}).values():
        connection.close()
    _close_executor_connections(obsolete_only=False, wait=True)


def write_records(rows: Sequence[dict[str, Any]], using: str | None = None) -> None:
    """Write publish records, outside the caller's transaction when it has one."""
    if _in_event_loop():
        # Django refuses database calls in an event loop's thread (an ASGI
        # view calling .delay()): write from a thread of this module's own.
        _executor().submit(write_records, rows, using).result()
        return
    alias = using or router.db_for_write(_model())
    connection = connection_for_records(alias)
    if connection.in_atomic_block:  # SQLite: a savepoint in the caller's transaction
        with transaction.atomic(using=alias):
            record_published(connection, rows)
        return
    # On a connection of the thread's own (the caller is in a transaction),
    # a lock is waited for OWN_CONNECTION_LOCK_WAIT seconds at most: the lock
    # may be the caller's own, held until its transaction ends (a task's
    # update_state() in its atomic block, then its retry's re-publish of the
    # same id), and the caller waits for this write: it would never end.
    lock_wait = OWN_CONNECTION_LOCK_WAIT if connection.__dict__.get(_OWN) else 0
    with_reconnect(connection, record_published, rows, app_settings.PUBLISH_SYNCHRONOUS_COMMIT, lock_wait)


#: Seconds a publish write on a connection of the thread's own waits for a lock (see write_records).
OWN_CONNECTION_LOCK_WAIT = 1


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_executor_of: tuple[int, ThreadPoolExecutor] | None = None  # (the process id, its executor)
_executor_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """This process's thread for writes asked from an event loop.

    One per process: a forked child has no copy of its parent's thread, and an
    executor copied from the parent would count that thread as its own and
    start none (its callers would wait forever).
    """
    global _executor_of
    owned = _executor_of
    if owned is None or owned[0] != os.getpid():
        with _executor_lock:
            owned = _executor_of
            if owned is None or owned[0] != os.getpid():
                executor = ThreadPoolExecutor(1, "fulldbresult-publish", initializer=_start_executor_thread)
                owned = _executor_of = (os.getpid(), executor)
    return owned[1]


_executor_thread: int | None = None


def _start_executor_thread() -> None:
    global _executor_thread
    _executor_thread = threading.get_ident()
    _hold_connections()


def _close_executor_connections(obsolete_only: bool, wait: bool) -> None:
    """Close the executor thread's connections in that thread (Django's are per thread), if it has any open."""
    owned = _executor_of
    if owned is None or owned[0] != os.getpid() or _executor_thread is None:
        return
    if all(c.connection is None for c in _held_connections.get(_executor_thread, ())):
        return  # (read from this thread: a connection opened meanwhile is closed at the next call)
    if threading.get_ident() == _executor_thread:
        _close_this_threads_connections(obsolete_only)
        return
    try:
        done = owned[1].submit(_close_this_threads_connections, obsolete_only)
    except RuntimeError:  # the interpreter is shutting down: so is the thread, with its connections
        return
    if wait:
        done.result(timeout=30)


def _close_this_threads_connections(obsolete_only: bool) -> None:
    for connection in connections.all(initialized_only=True):
        if obsolete_only:
            connection.close_if_unusable_or_obsolete()
        else:
            connection.close()


#: The Django connections of this module's own threads (the background
#: writer, the event loops' executor), by thread: see _after_fork_in_child.
_held_connections: dict[int, Sequence[BaseDatabaseWrapper]] = {}


def _hold_connections() -> None:
    """Keep this thread's Django connections where a forked child finds them (run first by this module's threads).

    Django makes one connection object per alias and thread, which connects,
    closes and connects again: held from the thread's start, before any
    write, a fork in the middle of the first one finds it too.
    """
    _held_connections[threading.get_ident()] = connections.all()


#: Of the held connections and this module's own: Django connection -> (id(driver connection), its socket,
#: the socket's inode); an entry goes with its connection.
_sockets: weakref.WeakKeyDictionary[BaseDatabaseWrapper, tuple[int, int, int]] = weakref.WeakKeyDictionary()


def remember_socket(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Django's ``connection_created``: note the socket of a connection made by this module's threads (see _mute)."""
    if threading.get_ident() not in _held_connections and not connection.__dict__.get(_OWN):
        return
    driver = connection.connection
    try:
        fd = driver.fileno()  # psycopg 3 and 2, mysqlclient (SQLite has none)
        _sockets[connection] = (id(driver), fd, os.fstat(fd).st_ino)
    except Exception:
        _sockets.pop(connection, None)


def _model() -> Any:
    from .models import TaskResultMeta

    return TaskResultMeta


@contextmanager
def already_recorded(task_ids: Sequence[str]) -> Iterator[None]:
    """Skip the publish write for these ids: their records were written already."""
    token = _recorded.set(_recorded.get() | frozenset(task_ids))
    try:
        yield
    finally:
        _recorded.reset(token)


#: Records written per statement by :func:`batch` (well under the parameter
#: limits of every database: 22 columns × 500 rows).
BATCH_SIZE = 500


@contextmanager
def batch() -> Iterator[None]:
    """Write the publish records of the messages sent in this block together (see the module docstring).

    Blocks nest: the outermost one writes. Each thread, and each asyncio task, has its own.
    """
    if _batch.get() is not None:
        yield
        return
    rows: list[dict[str, Any]] = []
    token = _batch.set(rows)
    try:
        yield
    finally:
        _batch.reset(token)
        _record(rows)


def record_groups_in_one_write() -> None:
    """Wrap ``celery.canvas.group.apply_async`` in :func:`batch` (once; called by the app config).

    With TRACK_PUBLISH off the wrapper only calls Celery's method. A Celery
    without that method keeps one write per member.
    """
    from celery.canvas import group

    original = getattr(group, "apply_async", None)
    if original is None or getattr(original, "fulldbresult_batched", False):
        return

    @functools.wraps(original)
    def apply_async(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not app_settings.TRACK_PUBLISH:
            return original(self, *args, **kwargs)
        with batch():  # inside an outer block, the outer one writes
            return original(self, *args, **kwargs)

    apply_async.fulldbresult_batched = True  # type: ignore[attr-defined]
    group.apply_async = apply_async  # type: ignore[method-assign]


class BackgroundWriter:
    """The thread that writes publish records with ``PUBLISH_IN_BACKGROUND`` (see the module docstring).

    One per process, started at its first row. It takes every row queued
    when it wakes (up to :data:`BATCH_SIZE` per statement): a burst of
    publishes becomes a few multi-row writes.
    """

    #: Seconds without work after which the thread closes its connection.
    IDLE_SECONDS = 10.0
    #: Seconds to wait before each new try of a write the database refused.
    RETRY_DELAYS = (0.2, 1.0, 3.0)
    #: Rows waiting past which new ones are dropped (logged), not queued.
    MAX_QUEUED = 100_000
    #: Seconds the thread waits, once woken, for more rows to write with the
    #: first: a burst of publishes then costs a few statements, not one per
    #: task, and leaves the publishing threads the processor.
    GATHER_SECONDS = 0.002

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._rows: deque[dict[str, Any]] = deque()
        self._changed = threading.Condition()
        # Rows ever queued, and rows written or given up: one thread writes
        # them in their order, so flush() waits for a number, not for an
        # empty queue other threads keep filling.
        self._queued = 0
        self._done = 0
        self._stopping = False
        self._idle = False  # waiting for rows (a row wakes it), not gathering them
        self._wake_due = False  # rows were queued without waking it (see put)
        self._thread = threading.Thread(target=self._run, name="fulldbresult-publish-writer", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self.pid == os.getpid() and self._thread.is_alive() and not self._stopping

    def put(self, rows: Sequence[dict[str, Any]], wake: bool = True) -> bool:
        """Queue rows; False if this writer is stopping (the caller writes them itself).

        ``wake=False``: the caller wakes the writer later (:meth:`wake`), as the
        publish handler does once the message is sent. Woken now, the thread
        would take the interpreter lock while ``apply_async`` waits for the
        broker's answer, and hold up its return: +26 % on one ``apply_async``
        against +4 % woken after it (``bench/README.md``). Unwoken, it still
        finds the rows within :data:`IDLE_SECONDS`.
        """
        with self._changed:
            if self._stopping:
                return False
            waiting = self._queued - self._done
            full = waiting + len(rows) > self.MAX_QUEUED
            if not full:
                self._rows.extend(rows)
                self._queued += len(rows)
                if self._idle:  # gathering, it is not woken by each row
                    if wake:
                        self._changed.notify_all()
                    else:
                        self._wake_due = True
        if full:
            logger.error(
                "Not recording the publication of %d tasks: %d records wait to be written already "
                "(is the database reachable?): %s",
                len(rows),
                waiting,
                _id_list(rows),
            )
        return True

    def wake(self) -> None:
        """Wake the writer for rows :meth:`put` queued without waking it."""
        if self._wake_due:  # (read without the lock: a wake missed here is done by the next one, or the next flush)
            with self._changed:
                self._wake_if_due()

    def _wake_if_due(self) -> None:
        # (With the lock held.)
        if self._wake_due:
            self._wake_due = False
            self._changed.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the rows queued before this call are written (or given up); False if ``timeout`` came first."""
        if self.pid != os.getpid():  # a parent's, copied by a fork without fork hooks: its rows are the parent's
            return True
        with self._changed:
            target = self._queued
            self._wake_if_due()  # rows queued before this call, unwoken yet (their message may not be sent)
            return self._changed.wait_for(lambda: self._done >= target or not self._thread.is_alive(), timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Write what is queued, close the connection and end the thread."""
        if self.pid != os.getpid():  # a parent's, copied by a fork without fork hooks (uWSGI): no thread here
            return
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _take(self) -> list[dict[str, Any]] | None:
        """The next rows to write; [] after an idle spell; None when stopping with nothing left."""
        with self._changed:
            if not self._rows and not self._stopping:
                self._idle = True
                self._changed.wait(self.IDLE_SECONDS)
                self._idle = self._wake_due = False
            if not self._rows:
                return None if self._stopping else []
            if len(self._rows) < BATCH_SIZE and not self._stopping:
                self._changed.wait(self.GATHER_SECONDS)
            count = min(len(self._rows), BATCH_SIZE)
            return [self._rows.popleft() for _ in range(count)]

    def _run(self) -> None:
        _hold_connections()
        try:
            while (rows := self._take()) is not None:
                try:
                    if rows:
                        self._write(rows)
                    else:
                        connections.close_all()  # this thread's own connections: idle
                except Exception:  # the thread must outlive anything
                    logger.exception("The publish records' writer failed")
                finally:
                    with self._changed:
                        self._done += len(rows)
                        self._changed.notify_all()
        finally:
            with self._changed:
                self._stopping = True  # a writer whose thread ended takes no more rows
                self._changed.notify_all()
            with contextlib.suppress(Exception):
                connections.close_all()
            for connection in _held_connections.pop(threading.get_ident(), ()):
                _sockets.pop(connection, None)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        unique = _unique(rows)
        for delay in (*self.RETRY_DELAYS, None):
            try:
                write_records(unique)
                return
            except Exception:
                if delay is None or self._stopping:
                    logger.exception("Could not record the publication of %d tasks: %s", len(unique), _id_list(unique))
                    return
                logger.warning("Could not record the publication of %d tasks; trying again", len(unique))
                connections.close_all()
                time.sleep(delay)


def _id_list(rows: Sequence[dict[str, Any]]) -> str:
    ids = [row["task_id"] for row in rows]
    return ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")


_writer: BackgroundWriter | None = None
_writer_lock = threading.Lock()
#: Set once the interpreter exits: rows published after are written at once.
_exiting = False


def _background() -> BackgroundWriter | None:
    """This process's running writer (a new one if it has none, or only a dead or inherited one); None at exit."""
    global _writer
    writer = _writer
    if writer is not None and writer.is_alive():
        return writer
    with _writer_lock:
        if _exiting:
            return None
        if _writer is None or not _writer.is_alive():
            _writer = BackgroundWriter()
        return _writer


def _queue(rows: list[dict[str, Any]], wake: bool = True) -> None:
    """Hand rows to the background writer; write them now when it cannot take them.

    ``wake=False``: see :meth:`BackgroundWriter.put`; :func:`on_after_task_publish` wakes it.
    """
    writer = _background()
    if writer is None or not writer.put(rows, wake):
        _write_batch(rows)


def on_after_task_publish(**kwargs: Any) -> None:
    """Celery's ``after_task_publish`` handler: wake the background writer for the message just sent."""
    writer = _writer
    if writer is not None and writer._wake_due and writer.pid == os.getpid():  # (not a parent's, copied by a fork)
        writer.wake()


def flush(timeout: float | None = None) -> bool:
    """Wait until the publish records queued by this process (``PUBLISH_IN_BACKGROUND``) are written.

    Waits for the rows queued before the call, not for those other threads
    queue meanwhile. Returns False if ``timeout`` seconds passed first; True
    at once when nothing waits (or the setting is off).
    """
    writer = _writer
    return writer.flush(timeout) if writer is not None else True


def stop_background_writer(timeout: float | None = 10.0) -> None:
    """Write what is queued and end the background writer (a new one starts at the next row).

    Call it where a test's database is torn down: the writer's connection
    would otherwise stay open for :data:`BackgroundWriter.IDLE_SECONDS`.
    """
    global _writer
    with _writer_lock:
        writer, _writer = _writer, None
    if writer is not None:
        writer.stop(timeout)


def _stop_at_exit() -> None:
    global _exiting
    with _writer_lock:
        _exiting = True
    stop_background_writer()


def flush_after_task(**kwargs: Any) -> None:
    """Celery's ``task_postrun`` and ``worker_process_shutdown``: a task's publish records outlive it."""
    flush(timeout=30.0)


def _after_fork_in_child() -> None:
    # A forked child has no copy of the parent's threads: the rows it queues
    # need a writer of its own (the parent's thread writes the parent's), and
    # the event loops' executor, a thread of its own (_executor() sees that
    # by the process id, as _background() does where fork hooks do not run,
    # uWSGI's prefork). The locks may have been held by one of those threads.
    global _writer, _writer_lock, _executor_lock
    _writer, _writer_lock, _executor_lock = None, threading.Lock(), threading.Lock()
    # Their connections are the parent's too. The child frees its copy of
    # them, at once or at its exit, and mysqlclient and psycopg2 say goodbye
    # to the server when a connection object is freed, in whichever process
    # frees it: the server would end the parent's session. The child's copy
    # of each socket is pointed at /dev/null first (the parent's socket is
    # its own), so the goodbye goes nowhere.
    held = [connection for thread in _held_connections.values() for connection in thread]
    _held_connections.clear()
    # And the connections threads opened outside their callers'
    # transactions: the forking thread would write on the parent's socket
    # with its own, and the child frees the other threads' with their storage.
    # (Listed before the forking thread's are dropped: the list holds them until they are muted.)
    held += [connection for connection in list(_sockets) if connection.__dict__.get(_OWN)]
    _local.__dict__.pop("connections", None)
    _mute(held)
    _sockets.clear()


def _mute(held: Sequence[BaseDatabaseWrapper]) -> None:
    """Point the sockets of these connections at /dev/null, in this process only.

    Only a socket still the one the connection was made with: a driver may
    keep the number of a socket it closed (mysqlclient, after a lost
    connection), which the process may have given to another file since.
    """
    sockets = []
    for connection in held:
        known = _sockets.get(connection)
        if known is None or connection.connection is None or known[0] != id(connection.connection):
            continue
        _, fd, inode = known
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK((now := os.fstat(fd)).st_mode) and now.st_ino == inode:
                sockets.append(fd)
    if not sockets:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in sockets:
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)


os.register_at_fork(after_in_child=_after_fork_in_child)
# Runs before the interpreter stops its daemon threads.
atexit.register(_stop_at_exit)


def _record(rows: list[dict[str, Any]]) -> None:
    """The handler's write: now, or by the background writer."""
    if app_settings.PUBLISH_IN_BACKGROUND:
        _queue(rows)
    else:
        _write_batch(rows)


def _unique(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task id: a statement that met the same key twice would fail
    (PostgreSQL's ON CONFLICT); the later publication is the one that counts."""
    return list({row["task_id"]: row for row in rows}.values())


def _write_batch(rows: list[dict[str, Any]]) -> None:
    unique = _unique(rows)
    for start in range(0, len(unique), BATCH_SIZE):
        chunk = unique[start : start + BATCH_SIZE]
        try:
            write_records(chunk)
        except Exception:
            logger.exception("Could not record the publication of %d tasks", len(chunk))


def on_before_task_publish(
    sender: Any = None,
    body: Any = None,
    exchange: Any = None,
    routing_key: str | None = None,
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    declare: Any = None,
    **kwargs: Any,
) -> None:
    """Celery's ``before_task_publish`` handler, connected by the app config."""
    if not app_settings.TRACK_PUBLISH:
        return
    try:
        recorded = _recorded.get()
        if recorded and (headers or {}).get("id") in recorded:
            return  # checked first: the retry module sends thousands of these
        row = published_row(body, exchange, routing_key, headers or {}, properties or {}, declare)
        if row is None or row["task_id"] in recorded:
            return
        buffer = _batch.get()
        if buffer is None:
            # Not a Task.retry() re-publish (a count above 0): the worker's
            # RETRY write follows it at once with the same count, and a
            # re-publish landing after that would be refused by the count's
            # order, taking the new ETA with it (the waiting retry would look
            # stale, and be sent twice).
            if app_settings.PUBLISH_IN_BACKGROUND and not row.get("retries"):
                _queue([row], wake=False)  # once the message is sent (on_after_task_publish)
            else:
                write_records([row])
            return
        buffer.append(row)
        if len(buffer) >= BATCH_SIZE:
            # (A thread started in the block, asyncio.to_thread, shares its list: what another thread
            # appends meanwhile stays for the next write.)
            full = buffer[:BATCH_SIZE]
            del buffer[: len(full)]
            _record(full)
    except Exception:
        # Publishing goes on: the worker's writes will create the record.
        logger.exception("Could not record the publication of task %s", (headers or {}).get("id"))
