"""Groups and ``publish.batch()``: the publish records of many messages in one statement, and never lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from celery import chord, group, states
from django.db import connection, connections
from django.test import override_settings

from django_celery_fulldbresult import publish
from django_celery_fulldbresult.models import TaskResultMeta
from testcelery import tasks
from testcelery.celery import app

from .conftest import wait_for

PARKED = "fulldbresult-batch-parked"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def parked() -> Iterator[str]:
    """A queue no worker consumes; emptied afterwards."""
    yield PARKED
    with app.connection_for_write() as conn, contextlib.suppress(Exception):  # never declared
        conn.default_channel.queue_purge(PARKED)


@contextlib.contextmanager
def statements() -> Iterator[list[str]]:
    """The text of each statement the default connection runs, as Django hands it to the driver.

    (Not Django's query log: with psycopg's prepared statements on, it logs a
    prepared statement without its text.)
    """
    seen: list[str] = []

    def hook(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(hook):
        yield seen


def inserts(seen: list[str]) -> list[str]:
    return [sql for sql in seen if sql.startswith("INSERT")]


def test_a_plain_group_of_100_is_recorded_in_one_write(parked: str) -> None:
    with statements() as queries:
        result = group(tasks.add.s(i, i) for i in range(100)).apply_async(queue=parked)
    assert len(inserts(queries)) == 1, "one bulk write for the whole group, without a block"
    members = TaskResultMeta.objects.filter(group_id=result.id)
    assert members.filter(status=states.PENDING, date_submitted__isnull=False, queue=parked).count() == 100
    assert sorted(json.loads(m.args)[0] for m in members) == list(range(100))


def test_a_chord_header_is_recorded_in_one_write(parked: str) -> None:
    with statements() as queries:
        result = chord([tasks.add.si(i, 0) for i in range(20)], tasks.tsum.s()).apply_async(queue=parked)
    header = TaskResultMeta.objects.filter(group_id=result.parent.id)
    assert header.filter(status=states.PENDING, date_submitted__isnull=False).count() == 20
    records = [sql for sql in inserts(queries) if TaskResultMeta._meta.db_table in sql.split("(")[0]]
    assert len(records) == 1, "the chord counter aside, one write"


@override_settings(DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH=False)
def test_a_group_does_nothing_when_the_setting_is_off(parked: str) -> None:
    with statements() as queries:
        result = group(tasks.add.s(i, i) for i in range(10)).apply_async(queue=parked)
    assert len(queries) == 0
    assert not TaskResultMeta.objects.filter(group_id=result.id).exists()


def test_a_group_of_100_is_recorded_in_one_write(parked: str) -> None:
    with statements() as queries, publish.batch():
        result = group(tasks.add.s(i, i) for i in range(100)).apply_async(queue=parked)
    assert len(inserts(queries)) == 1, "one bulk write for the whole group"
    members = TaskResultMeta.objects.filter(group_id=result.id)
    assert members.count() == 100
    assert members.filter(status=states.PENDING, date_submitted__isnull=False, queue=parked).count() == 100
    assert sorted(json.loads(m.args)[0] for m in members) == list(range(100))


def test_a_batched_group_runs_and_every_member_has_its_full_record(worker: Any) -> None:
    with publish.batch():
        result = group(tasks.add.s(i, i) for i in range(30)).apply_async()
    assert result.get(timeout=120) == [2 * i for i in range(30)]
    members = TaskResultMeta.objects.filter(group_id=result.id)
    wait_for(lambda: members.filter(status=states.SUCCESS).count() == 30, timeout=60)
    assert sorted(json.loads(m.args)[0] for m in members) == list(range(30))
    assert members.filter(task="testcelery.tasks.add", hostname__isnull=False).count() == 30


def test_nothing_is_written_before_the_block_ends_and_everything_after(parked: str) -> None:
    with publish.batch():
        with publish.batch():  # nested: the outer block writes
            first = tasks.add.apply_async((1, 2), queue=parked)
        second = tasks.echo.apply_async(("x",), queue=parked)
        assert not TaskResultMeta.objects.filter(task_id__in=[first.id, second.id]).exists()
    assert set(TaskResultMeta.objects.values_list("task_id", flat=True)) == {first.id, second.id}
    assert TaskResultMeta.objects.get(task_id=first.id).status == states.PENDING


def test_the_records_are_written_when_the_block_exits_by_an_exception(parked: str) -> None:
    sent = []
    with pytest.raises(RuntimeError), publish.batch():
        sent.append(tasks.add.apply_async((1, 2), queue=parked).id)
        sent.append(tasks.add.apply_async((3, 4), queue=parked).id)
        raise RuntimeError("the caller failed after sending")
    assert TaskResultMeta.objects.filter(task_id__in=sent).count() == 2


def test_a_long_block_writes_every_batch_size_messages(parked: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish, "BATCH_SIZE", 3)
    with statements() as queries, publish.batch():
        ids = [tasks.add.apply_async((i, i), queue=parked).id for i in range(7)]
        # Written as each batch filled, before the block's end.
        assert TaskResultMeta.objects.filter(task_id__in=ids).count() == 6
    assert len(inserts(queries)) == 3
    assert TaskResultMeta.objects.filter(task_id__in=ids).count() == 7


def test_a_task_finished_before_the_block_ends_keeps_its_result(worker: Any) -> None:
    with publish.batch():
        result = tasks.add.apply_async((20, 22))
        # The worker runs it and writes its record while the publish record waits.
        wait_for(lambda: TaskResultMeta.objects.filter(task_id=result.id, status=states.SUCCESS).exists(), timeout=60)
    record = TaskResultMeta.objects.get(task_id=result.id)
    assert record.status == states.SUCCESS
    assert record.result == 42
    assert json.loads(record.args) == [20, 22]
    assert record.date_submitted is not None, "the late publish write adds the submission time, nothing else"
    assert record.date_submitted <= record.date_started


def test_a_failed_batch_write_is_logged_and_the_tasks_are_still_sent(
    parked: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(rows: Any) -> None:
        raise RuntimeError("database down")

    monkeypatch.setattr(publish, "write_records", refuse)
    with publish.batch():
        result = tasks.add.apply_async((1, 1), queue=parked)
    assert "Could not record the publication of 1 tasks" in caplog.text
    with app.connection_for_write() as conn:
        _, count, _ = conn.default_channel.queue_declare(PARKED, passive=True)
    assert count >= 1, f"{result.id} was sent all the same"


@pytest.mark.skipif("connection.vendor != 'sqlite'")
def test_a_batch_past_sqlites_parameter_limit_is_split(parked: str) -> None:
    import sqlite3

    connection.ensure_connection()
    raw = connection.connection
    before = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # SQLite before 3.32
    try:
        with publish.batch():
            sent = [tasks.add.apply_async((i, i), queue=parked) for i in range(200)]
    finally:
        raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, before)
    assert TaskResultMeta.objects.filter(task_id__in=[r.id for r in sent]).count() == 200


@pytest.mark.parametrize("use_tz", [True, False])
def test_records_written_together_are_those_written_one_by_one(parked: str, use_tz: bool) -> None:
    """The same messages, recorded one write each and in one write of many (on PostgreSQL, from
    three rows on, the rows go as one JSON parameter): the same records, field for field, with
    time zones on and off (naive datetimes are read in the connection's time zone)."""
    from datetime import UTC, datetime, timedelta, timezone

    from django.utils.timezone import make_naive

    eta = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    calls: list[tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]] = [
        (("naïve ✓ 'single' \"double\" back\\slash \\u0041 \n tab\t", {"n": [1, 2.5, None, True]}), {},
         {"group_id": "g-1", "headers": {"periodic_task_name": "nächtlich ✓ 'x' \\ \""}}),
        ((), {"when": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), "secret": "s3"},
         {"eta": eta, "expires": eta + timedelta(days=1), "priority": 7, "retries": 2}),
        (([1] * 50,), {"big": "x" * 5000}, {"parent_id": "p-1", "root_id": "r-1", "countdown": 60}),
    ]  # fmt: skip
    fields = [
        f.name
        for f in TaskResultMeta._meta.concrete_fields
        if f.name not in ("id", "task_id", "date_submitted", "date_done")
    ]

    def records(ids: list[str]) -> list[dict[str, Any]]:
        by_id = {r["task_id"]: r for r in TaskResultMeta.objects.filter(task_id__in=ids).values("task_id", *fields)}
        found = [{name: by_id[i][name] for name in fields if name != "eta" or i != ids[2]} for i in ids]
        for i, record in zip(ids, found, strict=True):
            record["root_id"] = "itself" if record["root_id"] == i else record["root_id"]
        return found

    with override_settings(
        DJANGO_CELERY_FULLDBRESULT_REDACT_KWARGS=["secret"], USE_TZ=use_tz, TIME_ZONE="Asia/Kolkata"
    ):
        alone = [tasks.echo.apply_async(args, kwargs, queue=parked, **options).id for args, kwargs, options in calls]
        with statements() as queries, publish.batch():
            together = [
                tasks.echo.apply_async(args, kwargs, queue=parked, **options).id for args, kwargs, options in calls
            ]
        (write,) = inserts(queries)
        assert ("jsonb_array_elements" in write) == (connection.vendor == "postgresql")
        assert records(together) == records(alone)
        first = TaskResultMeta.objects.get(task_id=together[0])
        assert json.loads(first.args) == list(calls[0][0])
        assert (first.group_id, first.periodic_task_name) == ("g-1", "nächtlich ✓ 'x' \\ \"")
        second = TaskResultMeta.objects.get(task_id=together[1])
        assert (second.eta, second.priority, second.retries) == (eta if use_tz else make_naive(eta), 7, 2)
        assert second.not_retryable_reason == "keyword arguments redacted: secret"
        assert TaskResultMeta.objects.get(task_id=together[2]).parent_id == "p-1"


def test_a_batch_open_across_an_await_takes_in_no_other_coroutines_message(parked: str) -> None:
    """ASGI: one request's ``batch()`` block spans an ``await`` while another request's ``.delay()`` runs on the
    same event loop. The block is the first coroutine's only (it was the thread's: the other message's record
    waited for the block's end, and a process killed meanwhile lost it)."""
    seen: dict[str, bool] = {}

    def exists(task_id: str) -> bool:
        try:
            return TaskResultMeta.objects.filter(task_id=task_id).exists()
        finally:
            connections.close_all()  # (this thread's)

    async def main() -> list[str]:
        a_sent, b_done = asyncio.Event(), asyncio.Event()

        async def a() -> str:
            with publish.batch():
                first = tasks.add.apply_async((1, 1), queue=parked)
                a_sent.set()
                await b_done.wait()
                seen["a, inside its block"] = await asyncio.to_thread(exists, first.id)
            return str(first.id)

        async def b() -> str:
            await a_sent.wait()
            other = tasks.add.apply_async((2, 2), queue=parked)
            seen["b, at once"] = await asyncio.to_thread(exists, other.id)
            b_done.set()
            return str(other.id)

        return list(await asyncio.gather(a(), b()))

    ids = asyncio.run(main())
    assert seen == {"a, inside its block": False, "b, at once": True}
    assert TaskResultMeta.objects.filter(task_id__in=ids).count() == 2
