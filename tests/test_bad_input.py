"""Bad input: every case ends in a clear, final record, and no worker, command or admin page breaks."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest
from celery import states
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from django_celery_fulldbresult.models import TaskResultMeta
from django_celery_fulldbresult.serialization import UNSERIALIZABLE_KEY
from testcelery import tasks

from .conftest import wait_for
from .faults_helpers import FINAL, status

pytestmark = pytest.mark.worker


def _final(task_id: str, timeout: float = 60) -> TaskResultMeta:
    wait_for(lambda: status(task_id) in FINAL, timeout=timeout, message=f"task {task_id} never finished")
    return TaskResultMeta.objects.get(task_id=task_id)


def _admin_pages_open(*task_ids: str) -> None:
    """The admin's list and each record's page render (superuser: every field shows)."""
    user = get_user_model().objects.create_superuser("faults-admin", "a@example.com", "pw")
    client = Client()
    client.force_login(user)
    assert client.get("/admin/django_celery_fulldbresult/taskresultmeta/").status_code == 200
    for task_id in task_ids:
        pk = TaskResultMeta.objects.get(task_id=task_id).pk
        response = client.get(f"/admin/django_celery_fulldbresult/taskresultmeta/{pk}/change/")
        assert response.status_code == 200, task_id


def _stale_command_runs() -> dict[str, Any]:
    out = io.StringIO()
    call_command("find_stale_tasks", "--microseconds", "1", stdout=out, stderr=io.StringIO())
    json_out = io.StringIO()
    call_command("find_stale_tasks", "--seconds", "0.000001", "--format", "json", stdout=json_out, stderr=io.StringIO())
    return json.loads(json_out.getvalue())  # type: ignore[no-any-return]


def test_nul_bytes_in_args_kwargs_result_and_traceback(worker: Any) -> None:
    echoed = tasks.echo.delay("a\x00b", key="c\x00d")
    failed = tasks.fail.delay("broken\x00message")
    assert echoed.get(timeout=30) == {"args": ["a\x00b"], "kwargs": {"key": "c\x00d"}}
    with pytest.raises(ValueError):
        failed.get(timeout=30)

    record = TaskResultMeta.objects.get(task_id=echoed.id)
    assert record.status == states.SUCCESS
    assert record.decoded_args == ["a\x00b"] and record.decoded_kwargs == {"key": "c\x00d"}
    assert record.result == {"args": ["a\x00b"], "kwargs": {"key": "c\x00d"}}
    assert record.not_retryable_reason == ""
    bad = TaskResultMeta.objects.get(task_id=failed.id)
    assert bad.status == states.FAILURE
    assert "broken\\x00message" in bad.traceback  # text columns cannot hold NUL: it is escaped
    assert isinstance(bad.result, ValueError)
    _admin_pages_open(echoed.id, failed.id)


def test_a_5_mb_argument(worker: Any) -> None:
    big = "x" * (5 * 1024 * 1024)
    result = tasks.echo.delay(big)
    record = _final(result.id)
    assert record.status == states.SUCCESS
    assert record.decoded_args == [big]
    assert record.result == {"args": [big], "kwargs": {}}
    _admin_pages_open(result.id)
    report = TaskResultMeta.objects.get(task_id=result.id).retry()
    assert _final(report.sent[result.id]).decoded_args == [big]


def test_pickled_arguments_are_stored_safely_and_not_retried(
    start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("C_FORCE_ROOT", "1")  # Celery refuses pickle as root (CI containers run as root)
    start_worker("pickle", FULLDBRESULT_CELERY_ACCEPT_CONTENT='["json", "pickle"]')
    result = tasks.add.apply_async((Fraction(1, 3), Fraction(1, 3)), serializer="pickle")
    record = _final(result.id)
    # The result (a Fraction) is not JSON either: the record says so, finished.
    assert record.status in (states.SUCCESS, states.FAILURE)
    assert record.task == "testcelery.tasks.add"
    assert "not JSON-serializable" in record.not_retryable_reason
    assert json.loads(record.args) == [{UNSERIALIZABLE_KEY: "1/3"}, {UNSERIALIZABLE_KEY: "1/3"}]
    report = record.retry()
    assert not report.sent
    assert report.refused[result.id] == record.not_retryable_reason
    _admin_pages_open(result.id)


def test_arguments_json_fails_on_whole_still_leave_a_record(start_worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickled message's dict with tuple keys, a list that contains itself: JSON's ``default`` is never asked
    about them, so they used to fail the placeholder encoding too. The task never ran (its STARTED write raised)
    and left no record. Now each such argument is a placeholder, and the task runs."""
    monkeypatch.setenv("C_FORCE_ROOT", "1")  # Celery refuses pickle as root (CI containers run as root)
    start_worker("pickle", FULLDBRESULT_CELERY_ACCEPT_CONTENT='["json", "pickle"]')
    looped: list[Any] = []
    looped.append(looped)
    result = tasks.count.apply_async(({(1, 2): 3}, looped, "plain"), {"key": {(1,): "x"}}, serializer="pickle")
    assert result.get(timeout=30) == 4
    record = _final(result.id)
    assert record.status == states.SUCCESS and record.result == 4
    assert "not JSON-serializable" in record.not_retryable_reason
    assert json.loads(record.args) == [{UNSERIALIZABLE_KEY: "{(1, 2): 3}"}, {UNSERIALIZABLE_KEY: "[[...]]"}, "plain"]
    assert json.loads(record.kwargs) == {"key": {UNSERIALIZABLE_KEY: "{(1,): 'x'}"}}
    assert record.date_started is not None, "its STARTED write was made"
    assert result.id not in record.retry().sent
    _admin_pages_open(result.id)


def test_a_300_character_task_name(worker: Any) -> None:
    assert len(tasks.LONG_NAME) == 300
    result = tasks.long_name.delay(7)
    assert result.get(timeout=30) == 7
    record = TaskResultMeta.objects.get(task_id=result.id)
    assert record.task == tasks.LONG_NAME
    report = record.retry()
    wait_for(lambda: status(report.sent[result.id]) == states.SUCCESS)
    _admin_pages_open(result.id)


def test_invalid_utf8_bytes_and_lone_surrogates(worker: Any) -> None:
    raw = b"\xff\xfe not utf-8"
    surrogate = raw.decode("utf-8", "surrogateescape")
    echoed = tasks.echo.delay(raw, text=surrogate)
    failed = tasks.fail.delay(surrogate)
    record = _final(echoed.id)
    assert record.status == states.SUCCESS
    assert record.decoded_args == [raw]
    assert record.decoded_kwargs == {"text": surrogate}
    bad = _final(failed.id)
    assert bad.status == states.FAILURE
    assert "not utf-8" in bad.traceback
    _admin_pages_open(echoed.id, failed.id)
    report = record.retry()
    assert _final(report.sent[echoed.id]).result == {"args": [raw], "kwargs": {"text": surrogate}}


def test_an_unprintable_result_under_force_json(start_worker: Any) -> None:
    start_worker("forcejson", USE_JSON=True, FORCE_JSON=True)
    record = _final(tasks.unprintable.delay().id)
    assert record.status == states.SUCCESS
    assert record.result == {"value": "<unprintable _Unprintable object>", "forced_json": True}


@pytest.mark.parametrize("force", [False, True], ids=["use_json", "force_json"])
def test_an_exception_whose_arguments_json_cannot_hold_reads_back_as_that_exception(
    start_worker: Any, force: bool
) -> None:
    """``ValueError(b"\\xff raw")`` under ``USE_JSON``: Celery checks the arguments against kombu's JSON, which takes
    bytes; the stored JSON does not. The argument is kept as its text (it was wrapped whole by ``FORCE_JSON``, and
    read back as no exception at all; without it, an encoding error replaced the task's own)."""
    start_worker("excjson", USE_JSON=True, FORCE_JSON=force)
    result = tasks.fail.delay(b"\xff raw")
    record = _final(result.id)
    assert record.status == states.FAILURE
    assert isinstance(record.result, ValueError) and "xff raw" in str(record.result)
    with pytest.raises(ValueError, match="xff raw"):
        result.get(timeout=30)


def test_a_result_that_is_not_json_without_force_json_fails_and_says_why(start_worker: Any) -> None:
    start_worker("usejson", USE_JSON=True)
    result = tasks.not_json.delay()
    record = _final(result.id)
    assert record.status == states.FAILURE
    assert "DJANGO_CELERY_FULLDBRESULT_FORCE_JSON" in record.traceback
    assert "DJANGO_CELERY_FULLDBRESULT_FORCE_JSON" in str(record.result)
    # The worker goes on.
    assert tasks.add.delay(1, 1).get(timeout=30) == 2


def _malformed(task_id: str, **fields: Any) -> TaskResultMeta:
    now = timezone.now() - timedelta(minutes=5)
    row = {"task": "testcelery.tasks.add", "status": states.STARTED, "date_done": now, "date_submitted": now}
    return TaskResultMeta.objects.create(task_id=task_id, **{**row, **fields})


@pytest.mark.django_db(transaction=True)
def test_malformed_rows_written_into_the_table() -> None:
    bad_args = _malformed("bad-args", args="[1, 2", kwargs="{}")
    not_list = _malformed("not-a-list", args='{"a": 1}', kwargs="[]")
    unknown = _malformed(
        "unknown-type",
        status=states.SUCCESS,
        args="[1, 2]",
        content_type="application/x-nobody-knows",
        encoded_result="??",
    )
    bad_json = _malformed("bad-json", status=states.SUCCESS, args="[1, 2]", encoded_result="{not json")
    no_name = _malformed("no-name", task=None, args="[1]")

    with pytest.raises(Exception, match="application/x-nobody-knows"):
        _ = unknown.result
    with pytest.raises(Exception, match=r"(?i)json|expecting|decode"):
        _ = bad_json.result
    report = TaskResultMeta.objects.filter(task_id__in=["bad-args", "not-a-list", "no-name"]).retry()
    assert not report.sent
    assert "cannot be decoded" in report.refused["bad-args"]
    assert "cannot be decoded" in report.refused["not-a-list"]
    assert "name" in report.refused["no-name"]
    assert not TaskResultMeta.objects.filter(retry_of__isnull=False).exists()

    document = _stale_command_runs()
    assert {task["task_id"] for task in document["tasks"]} == {"bad-args", "not-a-list", "no-name"}
    out = io.StringIO()
    call_command("find_stale_tasks", "--microseconds", "1", "--retry", stdout=out, stderr=io.StringIO())
    assert not TaskResultMeta.objects.filter(retry_of__isnull=False).exists()
    _admin_pages_open(bad_args.task_id, not_list.task_id, unknown.task_id, bad_json.task_id, no_name.task_id)


OUT_OF_RANGE = [
    *[[f"--{unit}", "-1"] for unit in ("weeks", "days", "hours", "minutes", "seconds", "microseconds")],
    ["--weeks", "1e300"],
    ["--days", "999999999"],
    ["--seconds", "nan"],
    ["--seconds", "inf"],
    ["--minutes", "-inf"],
    ["--hours", "many"],
    ["--microseconds", ""],
    ["--limit", "0"],
    ["--limit", "-3"],
    ["--limit", "ten"],
    ["--format", "xml"],
    ["--no-such-option"],
]


@pytest.mark.django_db
@pytest.mark.parametrize("argv", OUT_OF_RANGE, ids=[" ".join(a) for a in OUT_OF_RANGE])
def test_every_command_option_out_of_range_is_a_command_error(argv: list[str]) -> None:
    with pytest.raises(CommandError):
        call_command("find_stale_tasks", *argv, stdout=io.StringIO(), stderr=io.StringIO())
