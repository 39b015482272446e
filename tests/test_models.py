"""The record: schema, state order, and how results are stored and read back."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from celery import states
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone
from kombu.exceptions import ContentDisallowed, EncodeError

from django_celery_fulldbresult.models import TaskResultMeta
from testcelery.celery import app

pytestmark = pytest.mark.django_db(transaction=True)

backend = app.backend


class Request:
    """What a worker passes to the backend: the fields the record keeps."""

    def __init__(self, task_id: str, **extra: Any) -> None:
        self.id = task_id
        self.task = "app.tasks.work"
        self.args = [1, "two"]
        self.kwargs = {"three": 3}
        self.hostname = "w1@host"
        self.delivery_info = {"exchange": "", "routing_key": "celery", "priority": 0}
        self.retries = 0
        self.eta = self.expires = None
        self.parent_id = self.root_id = self.group = None
        self.children: list[Any] = []
        self.__dict__.update(extra)


@pytest.mark.parametrize("auto_field", ["django.db.models.BigAutoField", "django.db.models.AutoField"])
def test_no_migration_is_missing_whatever_the_default_auto_field(auto_field: str) -> None:
    with override_settings(DEFAULT_AUTO_FIELD=auto_field):
        call_command("makemigrations", "django_celery_fulldbresult", "--check", "--dry-run", stdout=StringIO())


def test_settings_never_shape_the_schema() -> None:
    with override_settings(DJANGO_CELERY_FULLDBRESULT_USE_JSON=True, DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH=False):
        call_command("makemigrations", "django_celery_fulldbresult", "--check", "--dry-run", stdout=StringIO())


@pytest.mark.parametrize("late", [states.PENDING, states.STARTED, states.RETRY, states.RECEIVED, "PROGRESS"])
@pytest.mark.parametrize("final", [states.SUCCESS, states.FAILURE, states.REVOKED])
def test_a_finished_state_is_never_overwritten_by_an_earlier_one(final: str, late: str) -> None:
    result: Any = ValueError("x") if final == states.FAILURE else 42
    backend.store_result("t1", result, final, request=Request("t1"))
    backend.store_result("t1", {"pid": 1}, late, request=Request("t1", hostname="late@host"))
    record = TaskResultMeta.objects.get(task_id="t1")
    assert record.status == final
    assert record.hostname == "w1@host"


def test_a_finished_state_can_follow_another() -> None:
    backend.store_result("t1", 1, states.SUCCESS, request=Request("t1"))
    backend.store_result("t1", None, states.REVOKED, request=Request("t1"))
    assert TaskResultMeta.objects.get(task_id="t1").status == states.REVOKED


def test_a_write_without_request_data_keeps_what_is_stored() -> None:
    backend.store_result("t1", None, states.STARTED, request=Request("t1"))
    backend.store_result("t1", 7, states.SUCCESS)  # e.g. an update_state() from elsewhere
    record = TaskResultMeta.objects.get(task_id="t1")
    assert (record.task, json.loads(record.args), record.hostname) == ("app.tasks.work", [1, "two"], "w1@host")
    assert record.date_started is not None
    assert record.result == 7


def test_each_state_change_is_one_round_trip() -> None:
    for state, result in [(states.STARTED, {"pid": 1}), (states.RETRY, ValueError("again")), (states.SUCCESS, 3)]:
        with CaptureQueriesContext(connection) as queries:
            backend.store_result("t1", result, state, request=Request("t1"))
        assert len(queries) == 1, queries.captured_queries


def test_by_default_results_use_the_result_serializer_and_keep_its_content_type() -> None:
    backend.store_result("t1", {"a": [1, 2]}, states.SUCCESS, request=Request("t1"))
    record = TaskResultMeta.objects.get(task_id="t1")
    assert record.content_type == "application/json"
    assert json.loads(record.encoded_result) == {"a": [1, 2]}
    assert record.result == {"a": [1, 2]}
    assert app.AsyncResult("t1").get(timeout=1) == {"a": [1, 2]}


@override_settings(DJANGO_CELERY_FULLDBRESULT_USE_JSON=True)
def test_use_json_stores_plain_json_the_database_can_query() -> None:
    backend.store_result("t1", {"status": "sent", "count": 3}, states.SUCCESS, request=Request("t1"))
    record = TaskResultMeta.objects.get(task_id="t1")
    assert json.loads(record.encoded_result) == {"status": "sent", "count": 3}
    assert TaskResultMeta.objects.with_json().filter(result_json__status="sent").count() == 1
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT result::jsonb ->> 'status' FROM {TaskResultMeta._meta.db_table}")
            assert cursor.fetchone() == ("sent",)


@override_settings(DJANGO_CELERY_FULLDBRESULT_USE_JSON=True)
def test_use_json_refuses_a_result_that_is_not_json_and_names_the_setting() -> None:
    with pytest.raises(EncodeError, match="DJANGO_CELERY_FULLDBRESULT_FORCE_JSON"):
        backend.store_result("t1", {1, 2}, states.SUCCESS, request=Request("t1"))


@override_settings(DJANGO_CELERY_FULLDBRESULT_USE_JSON=True, DJANGO_CELERY_FULLDBRESULT_FORCE_JSON=True)
def test_force_json_stores_the_string_of_a_result_that_is_not_json() -> None:
    backend.store_result("t1", {1, 2}, states.SUCCESS, request=Request("t1"))
    record = TaskResultMeta.objects.get(task_id="t1")
    assert json.loads(record.encoded_result) == {"value": "{1, 2}", "forced_json": True}
    assert record.result == {"value": "{1, 2}", "forced_json": True}


@override_settings(DJANGO_CELERY_FULLDBRESULT_USE_JSON=True)
def test_failures_are_readable_as_exceptions_with_use_json() -> None:
    backend.store_result(
        "t1", ValueError("bad input"), states.FAILURE, traceback="Traceback ...", request=Request("t1")
    )
    record = TaskResultMeta.objects.get(task_id="t1")
    assert json.loads(record.encoded_result)["exc_type"] == "ValueError"
    with pytest.raises(ValueError, match="bad input"):
        app.AsyncResult("t1").get(timeout=1)


@pytest.fixture
def pickle_results() -> Any:
    """The app configured with the pickle result serializer, and accepting it."""
    saved = app.conf.result_serializer, app.conf.result_accept_content
    app.conf.result_serializer = "pickle"
    app.conf.result_accept_content = ["json", "pickle"]
    app._local.__dict__.pop("backend", None)
    yield app.backend
    app.conf.result_serializer, app.conf.result_accept_content = saved
    app._local.__dict__.pop("backend", None)


def test_turning_use_json_on_and_off_never_makes_rows_unreadable(pickle_results: Any) -> None:
    pickle_results.store_result("pickled", {"when": "then"}, states.SUCCESS, request=Request("pickled"))
    with override_settings(DJANGO_CELERY_FULLDBRESULT_USE_JSON=True):
        pickle_results.store_result("as-json", {"k": 1}, states.SUCCESS, request=Request("as-json"))
    pickle_results.store_result("pickled-again", [1], states.SUCCESS, request=Request("pickled-again"))
    rows = {r.task_id: r for r in TaskResultMeta.objects.all()}
    assert rows["pickled"].content_type == "application/x-python-serialize"
    assert rows["as-json"].content_type == "application/json"
    assert [rows[i].result for i in ("pickled", "as-json", "pickled-again")] == [{"when": "then"}, {"k": 1}, [1]]


def test_pickle_is_never_decoded_unless_the_config_accepts_it(pickle_results: Any) -> None:
    pickle_results.store_result("pickled", {"a": 1}, states.SUCCESS, request=Request("pickled"))
    app.conf.result_accept_content = ["json"]
    app._local.__dict__.pop("backend", None)
    record = TaskResultMeta.objects.get(task_id="pickled")
    with pytest.raises(ContentDisallowed):
        record.result  # noqa: B018
    with pytest.raises(ContentDisallowed):
        app.AsyncResult("pickled").get(timeout=1)


def test_cleanup_deletes_expired_finished_records_in_batches_and_keeps_unfinished_ones() -> None:
    old = timezone.now() - timedelta(days=3)
    for i in range(5):
        TaskResultMeta.objects.create(task_id=f"done-{i}", status=states.SUCCESS, date_done=old)
    TaskResultMeta.objects.create(task_id="failed", status=states.FAILURE, date_done=old)
    TaskResultMeta.objects.create(task_id="stuck", status=states.STARTED, date_done=old)
    TaskResultMeta.objects.create(task_id="recent", status=states.SUCCESS, date_done=timezone.now())
    assert TaskResultMeta.objects.delete_expired(timedelta(days=1), batch_size=2) == 6
    assert set(TaskResultMeta.objects.values_list("task_id", flat=True)) == {"stuck", "recent"}


def test_celerys_backend_cleanup_task_goes_through_this_backend() -> None:
    TaskResultMeta.objects.create(task_id="done", status=states.SUCCESS, date_done=timezone.now() - timedelta(days=3))
    TaskResultMeta.objects.create(task_id="stuck", status=states.PENDING, date_done=timezone.now() - timedelta(days=3))
    previous = app.conf.result_expires
    app.conf.result_expires = timedelta(days=1)
    app._local.__dict__.pop("backend", None)
    try:
        app.tasks["celery.backend_cleanup"].run()
    finally:
        app.conf.result_expires = previous
        app._local.__dict__.pop("backend", None)
    assert list(TaskResultMeta.objects.values_list("task_id", flat=True)) == ["stuck"]


def test_forget_deletes_the_record() -> None:
    backend.store_result("t1", 1, states.SUCCESS)
    app.AsyncResult("t1").forget()
    assert not TaskResultMeta.objects.filter(task_id="t1").exists()


@override_settings(USE_TZ=False)
def test_etas_are_stored_in_projects_without_time_zones() -> None:
    eta = "2031-01-02T03:04:05+00:00"
    backend.store_result("t1", None, states.STARTED, request=Request("t1", eta=eta, expires=eta))
    record = TaskResultMeta.objects.get(task_id="t1")
    assert record.eta is not None and timezone.is_naive(record.eta)
    assert record.eta == timezone.make_naive(datetime.fromisoformat(eta))
