"""The README's JSON lookups recipe, on whatever database the run uses (SQLite, PostgreSQL, MariaDB).

Records are written the way a worker writes them: through the backend's
``store_result`` with the task's request.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from celery import states
from celery.app.task import Context
from django.utils import timezone

from django_celery_fulldbresult.models import TaskResultMeta
from django_celery_fulldbresult.result_backends import DatabaseResultBackend
from testcelery.celery import app

pytestmark = pytest.mark.django_db


def store(args: list[Any], kwargs: dict[str, Any], result: Any) -> str:
    task_id = str(uuid.uuid4())
    request = Context(id=task_id, task="testcelery.tasks.echo", args=args, kwargs=kwargs, delivery_info={})
    DatabaseResultBackend(app=app).store_result(task_id, result, states.SUCCESS, request=request)
    return task_id


@pytest.fixture
def ids() -> dict[str, str]:
    return {
        "alice": store([7, {"name": "report"}], {"user": {"id": 42, "email": "alice@example.com"}}, {"total": 12}),
        "bob": store([8, {"name": "invoice"}], {"user": {"id": 43, "email": "bob@example.com"}}, {"total": 3}),
        "nobody": store([], {}, None),
    }


def found(**lookup: Any) -> set[str]:
    return set(TaskResultMeta.objects.with_json().filter(**lookup).values_list("task_id", flat=True))


def test_keyword_arguments(ids: dict[str, str]) -> None:
    assert found(kwargs_json__user__id=42) == {ids["alice"]}
    assert found(kwargs_json__user__email="bob@example.com") == {ids["bob"]}
    assert found(kwargs_json__has_key="user") == {ids["alice"], ids["bob"]}


def test_positional_arguments(ids: dict[str, str]) -> None:
    assert found(args_json__0=8) == {ids["bob"]}
    assert found(args_json__1__name="report") == {ids["alice"]}


def test_results(ids: dict[str, str]) -> None:
    assert found(result_json__total__gt=10) == {ids["alice"]}
    assert found(result_json__total=3) == {ids["bob"]}


def test_values_come_back_decoded(ids: dict[str, str]) -> None:
    row = TaskResultMeta.objects.with_json().values("kwargs_json", "result_json").get(task_id=ids["alice"])
    assert row["kwargs_json"] == {"user": {"id": 42, "email": "alice@example.com"}}
    assert row["result_json"] == {"total": 12}


@pytest.mark.django_db(transaction=True)
def test_a_row_that_is_not_json_never_fails_the_query() -> None:
    from testcelery.celery import app as celery_app

    celery_app.backend.store_result("good", {"status": "sent"}, "SUCCESS")
    TaskResultMeta.objects.create(
        task_id="nul", task="t", status="SUCCESS", args='["a\\u0000b"]', kwargs="{}", date_done=timezone.now()
    )
    TaskResultMeta.objects.create(
        task_id="pickled", task="t", status="SUCCESS", content_type="application/x-python-serialize",
        content_encoding="binary", encoded_result="gASVBAAAAAAAAACMAXiULg==", date_done=timezone.now(),
    )  # fmt: skip
    rows = TaskResultMeta.objects.with_json()
    assert list(rows.filter(result_json__status="sent").values_list("task_id", flat=True)) == ["good"]
    assert dict(rows.values_list("task_id", "args_json"))["nul"] is None
