"""The TaskResultMeta admin: list, filters, search, the task page, retry and its permission, safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, current_app, states
from django.contrib import admin as django_admin
from django.contrib.admin.templatetags import admin_list
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import formats, timezone, translation

from django_celery_fulldbresult import admin as fdr_admin
from django_celery_fulldbresult.models import TaskResultMeta
from django_celery_fulldbresult.templatetags import fulldbresult_admin
from tests.conftest import ROOT, wait_for

CHANGELIST = "admin:django_celery_fulldbresult_taskresultmeta_changelist"


def record(**fields: Any) -> TaskResultMeta:
    values: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "task": "testcelery.tasks.add",
        "status": states.SUCCESS,
        "args": "[1, 2]",
        "kwargs": "{}",
        "date_done": timezone.now(),
    }
    values.update(fields)
    return TaskResultMeta.objects.create(**values)


def change_url(obj: TaskResultMeta) -> str:
    return reverse("admin:django_celery_fulldbresult_taskresultmeta_change", args=[obj.pk])


def retry_url(obj: TaskResultMeta) -> str:
    return reverse("admin:django_celery_fulldbresult_taskresultmeta_retry", args=[obj.pk])


def listed_ids(response: Any) -> set[str]:
    return {obj.task_id for obj in response.context["cl"].result_list}


def staff_client(*codenames: str) -> Client:
    user = User.objects.create_user(f"staff-{uuid.uuid4().hex[:8]}", password="x", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="django_celery_fulldbresult", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def purge_broker() -> Any:
    """Drop what a test sent and no worker consumed, so later worker tests do not run it."""
    yield
    from testcelery.celery import app

    app.control.purge()


# -- list, filters, search --------------------------------------------------------------------


@pytest.mark.django_db
def test_changelist_shows_the_seed_columns(admin_client: Client) -> None:
    eta = timezone.now() + timedelta(days=1)
    obj = record(status=states.PENDING, eta=eta, date_submitted=timezone.now())
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    headers = [header["text"] for header in response.context["result_headers"]]
    assert [str(h).lower() for h in headers[1:]] == ["task id", "task name", "submitted", "last change", "state", "eta"]
    assert obj.task_id in response.content.decode()
    assert listed_ids(response) == {obj.task_id}


@pytest.mark.django_db
def test_filters_by_state_name_and_stale(admin_client: Client) -> None:
    old = timezone.now() - timedelta(hours=3)
    ok = record()
    failed = record(status=states.FAILURE, task="testcelery.tasks.fail")
    lost = record(status=states.PENDING, date_done=old, task="testcelery.tasks.echo")
    later = record(status=states.PENDING, date_done=old, eta=timezone.now() + timedelta(days=1))
    retrying = record(status=states.RETRY, date_done=old)
    url = reverse(CHANGELIST)

    response = admin_client.get(url)
    filters = {
        spec.title: [choice["display"] for choice in spec.choices(response.context["cl"])]
        for spec in response.context["cl"].filter_specs
    }
    assert filters["state"] == ["All", "FAILURE", "PENDING", "RETRY", "SUCCESS"]
    assert filters["task name"] == ["All", "testcelery.tasks.add", "testcelery.tasks.echo", "testcelery.tasks.fail"]

    assert listed_ids(admin_client.get(url, {"status": "FAILURE"})) == {failed.task_id}
    assert listed_ids(admin_client.get(url, {"task": "testcelery.tasks.add"})) == {
        ok.task_id,
        later.task_id,
        retrying.task_id,
    }
    assert listed_ids(admin_client.get(url, {"stale": "all"})) == {lost.task_id, retrying.task_id}
    assert listed_ids(admin_client.get(url, {"stale": "never_started"})) == {lost.task_id}
    assert listed_ids(admin_client.get(url, {"stale": "waiting_retry"})) == {retrying.task_id}
    assert listed_ids(admin_client.get(url, {"stale": "all", "task": "testcelery.tasks.echo"})) == {lost.task_id}


@pytest.mark.django_db
def test_stale_filter_tells_a_gone_worker(admin_client: Client, settings: Any) -> None:
    settings.DJANGO_CELERY_FULLDBRESULT_WORKER_PING_TIMEOUT = 0.2
    gone = record(status=states.STARTED, hostname="w-gone@nowhere", date_done=timezone.now() - timedelta(hours=2))
    response = admin_client.get(reverse(CHANGELIST), {"stale": "worker_gone"})
    assert listed_ids(response) == {gone.task_id}


@pytest.mark.django_db
def test_stale_filter_says_when_workers_cannot_be_asked(admin_client: Client) -> None:
    started = record(status=states.STARTED, hostname="w@somewhere", date_done=timezone.now() - timedelta(hours=2))
    # The current Celery app's broker is down: nobody can be pinged.
    down = Celery("down", broker="redis://127.0.0.1:1/0", set_as_current=False)
    down.conf.broker_connection_timeout = 0.5
    previous = current_app._get_current_object()
    down.set_current()
    try:
        response = admin_client.get(reverse(CHANGELIST), {"stale": "worker_gone"})
    finally:
        previous.set_current()
    assert listed_ids(response) == {started.task_id}
    assert [str(m) for m in response.context["messages"]] == [str(fdr_admin.NO_PING)]


@pytest.mark.django_db
def test_search_by_id_prefix_and_name(admin_client: Client) -> None:
    first = record(task_id="cf738350-afe8-44f8-9eac-34721581eb61", task="email_workers.tasks.send_email")
    second = record(task_id="cf738350-0000-44f8-9eac-34721581eb62")
    other = record(task_id="0a000000-afe8-44f8-9eac-34721581eb63")
    url = reverse(CHANGELIST)
    assert listed_ids(admin_client.get(url, {"q": first.task_id})) == {first.task_id}
    assert listed_ids(admin_client.get(url, {"q": "cf738350"})) == {first.task_id, second.task_id}
    assert listed_ids(admin_client.get(url, {"q": "cf738350-"})) == {first.task_id, second.task_id}
    assert listed_ids(admin_client.get(url, {"q": "send_EMAIL"})) == {first.task_id}
    assert listed_ids(admin_client.get(url, {"q": " testcelery.tasks "})) == {second.task_id, other.task_id}
    # Task ids match from their beginning only: that is what the unique index serves.
    assert listed_ids(admin_client.get(url, {"q": "afe8"})) == set()


@pytest.mark.django_db
def test_search_by_id_does_not_scan_with_like_contains(admin_client: Client) -> None:
    obj = record()
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse(CHANGELIST), {"q": obj.task_id})
    assert listed_ids(response) == {obj.task_id}
    sql = "\n".join(query["sql"] for query in queries.captured_queries)
    assert f"%{obj.task_id}%" not in sql
    assert "UPPER(" not in sql


@pytest.mark.django_db
@pytest.mark.parametrize("task_id", ["2f1c-9", "2f1c-z", "2f1c-Z", "2f1c-", "zz9"])
def test_search_finds_an_id_whatever_its_last_character(admin_client: Client, task_id: str) -> None:
    """Unicode collations (the test database's utf8mb4_unicode_ci) sort ":" before "9": the range must not end there."""
    wanted = record(task_id=task_id)
    record(task_id=task_id + "0")  # begins with it: found too
    record(task_id="2f1d")  # does not
    found = listed_ids(admin_client.get(reverse(CHANGELIST), {"q": task_id}))
    assert found == {wanted.task_id, task_id + "0"}


@pytest.mark.django_db
def test_sorting_by_a_column_follows_its_index_one_way(admin_client: Client) -> None:
    now = timezone.now()
    b_old = record(task="b", date_done=now - timedelta(hours=2))
    a_new = record(task="a", date_done=now)
    b_new = record(task="b", date_done=now)
    a_old = record(task="a", date_done=now - timedelta(hours=1))
    in_order = [a_old, a_new, b_old, b_new]
    url = reverse(CHANGELIST)
    rows = admin_client.get(url, {"o": "2"}).context["cl"].result_list
    assert [r.task_id for r in rows] == [r.task_id for r in in_order]
    rows = admin_client.get(url, {"o": "-2"}).context["cl"].result_list
    assert [r.task_id for r in rows] == [r.task_id for r in reversed(in_order)]
    rows = admin_client.get(url).context["cl"].result_list
    newest_first = sorted(in_order, key=lambda r: (r.date_done, r.pk), reverse=True)
    assert [r.task_id for r in rows] == [r.task_id for r in newest_first]


# -- the list's rows, written without {% result_list %} -----------------------------------------


def admins_rows(cl: Any) -> list[str]:
    """The rows as Django's own ``{% result_list %}`` writes them (its template puts each in a <tr>)."""
    return ["".join(items) for items in admin_list.result_list(cl)["results"]]


def rows_of_every_kind() -> list[TaskResultMeta]:
    """Dates in one minute and across minutes, with seconds; no date, no name, markup in a name; an ETA or none."""
    base = datetime(2026, 3, 29, 0, 59, 58, 123456, tzinfo=UTC)
    return [
        record(date_submitted=base, date_done=base + timedelta(seconds=1)),
        record(date_submitted=base + timedelta(seconds=1), date_done=base + timedelta(seconds=3)),
        record(date_submitted=None, date_done=base + timedelta(minutes=1, seconds=59), task=None),
        record(date_done=base + timedelta(hours=13), task="   ", eta=base + timedelta(days=1, seconds=30)),
        record(date_done=base + timedelta(hours=14), task=" padded\t", task_id=" spaced-id "),
        record(date_done=base - timedelta(days=400), task="<b>a&b</b>", status=states.FAILURE, eta=base),
        record(date_done=base + timedelta(hours=12), status="<i>", task_id="<id & 'quote'>"),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("zone", "language"),
    [
        ("UTC", "en-us"),
        ("Asia/Kathmandu", "de"),
        ("America/St_Johns", "fr"),
        ("Europe/Paris", "ja"),
        ("UTC", "es"),
        ("Europe/Paris", "bs"),
    ],
)
@pytest.mark.parametrize(
    "params",
    [{}, {"status": "FAILURE", "q": "a&b"}, {"task": "<b>a&b</b>", "o": "-2.3"}, {"o": "4"}],
    ids=["plain", "filtered-searched", "filtered-sorted", "sorted"],
)
def test_rows_are_the_admins_rows(admin_client: Client, zone: str, language: str, params: dict[str, str]) -> None:
    """Byte for byte what the admin's {% result_list %} writes: columns, links with kept filters, checkbox, dates."""
    rows_of_every_kind()
    with timezone.override(zone), translation.override(language):
        response = admin_client.get(reverse(CHANGELIST), params)
        page = response.content.decode()
        cl = response.context["cl"]
        assert fulldbresult_admin.result_list(cl)["results"], "the list is not empty"
        lean = [row for [row] in fulldbresult_admin.result_list(cl)["results"]]
        assert lean == admins_rows(cl)
        assert fulldbresult_admin.result_list(cl)["result_headers"] == admin_list.result_list(cl)["result_headers"]
    for row in lean:
        assert f"<tr>{row}</tr>" in page
    assert page.count('class="action-select"') == len(lean)
    if params.get("status"):
        assert "_changelist_filters=status%3DFAILURE%26q%3Da%2526b" in lean[0]


@pytest.mark.django_db
def test_rows_show_dates_in_the_active_time_zone(admin_client: Client) -> None:
    done = datetime(2026, 1, 15, 23, 50, 10, tzinfo=UTC)
    record(date_done=done, date_submitted=done - timedelta(seconds=5))
    with timezone.override("Asia/Kathmandu"):  # +05:45
        page = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert '<td class="field-date_done nowrap">Jan. 16, 2026, 5:35 a.m.</td>' in page
    assert '<td class="field-date_submitted nowrap">Jan. 16, 2026, 5:35 a.m.</td>' in page
    with timezone.override("UTC"), translation.override("de"):
        page = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert '<td class="field-date_done nowrap">15. Januar 2026 23:50</td>' in page


@pytest.mark.django_db
def test_rows_with_seconds_in_the_date_format_are_each_formatted(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A format showing seconds: no two dates of one minute share their text."""
    rows_of_every_kind()
    original = formats.get_format

    def with_seconds(name: str, *args: Any, **kwargs: Any) -> Any:
        return "Y-m-d H:i:s.u" if name == "DATETIME_FORMAT" else original(name, *args, **kwargs)

    monkeypatch.setattr(formats, "get_format", with_seconds)
    response = admin_client.get(reverse(CHANGELIST))
    cl = response.context["cl"]
    lean = [row for [row] in fulldbresult_admin.result_list(cl)["results"]]
    assert lean == admins_rows(cl)
    assert "2026-03-29 00:59:58.123456" in response.content.decode()
    assert "2026-03-29 00:59:59.123456" in response.content.decode()


@pytest.mark.django_db
def test_rows_without_the_checkbox_when_no_action_is_allowed() -> None:
    record()
    client = staff_client("view_taskresultmeta")
    response = client.get(reverse(CHANGELIST))
    cl = response.context["cl"]
    assert "action_checkbox" not in cl.list_display
    lean = [row for [row] in fulldbresult_admin.result_list(cl)["results"]]
    assert lean == admins_rows(cl)
    assert "action-select" not in response.content.decode()


@pytest.mark.django_db
def test_other_columns_are_written_by_the_admin(admin_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subclass (or a changed method) that the lean rows do not know brings back the admin's rendering."""
    obj = record(hostname="worker-7")
    model_admin = django_admin.site._registry[TaskResultMeta]
    monkeypatch.setattr(model_admin, "list_display", (*fdr_admin.LIST_DISPLAY, "hostname"))
    response = admin_client.get(reverse(CHANGELIST))
    assert response.context["cl"].rendered_rows() is None
    assert '<td class="field-hostname">worker-7</td>' in response.content.decode()
    monkeypatch.undo()
    monkeypatch.setattr(model_admin, "state", lambda record: "S!")
    response = admin_client.get(reverse(CHANGELIST))
    assert response.context["cl"].rendered_rows() is None
    assert '<td class="field-state">S!</td>' in response.content.decode()
    assert obj.task_id in response.content.decode()


@pytest.mark.django_db
def test_count_is_capped_and_pages_stop(admin_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fdr_admin.EstimatedCountPaginator, "cap", 5)
    monkeypatch.setattr(fdr_admin.TaskResultMetaAdmin, "list_per_page", 2)
    for _ in range(8):
        record(status=states.FAILURE)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse(CHANGELIST), {"status": "FAILURE"})
    assert "more than 5 task results" in response.content.decode()
    assert response.context["cl"].paginator.num_pages == 2
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts)
    # Beyond the last page the admin says the page does not exist, without reading the table.
    assert admin_client.get(reverse(CHANGELIST), {"status": "FAILURE", "p": "4"}).status_code == 302


@pytest.mark.django_db
def test_a_count_given_up_still_lists_the_page(admin_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fdr_admin.EstimatedCountPaginator, "_capped_count", lambda self, queryset: None)
    monkeypatch.setattr(fdr_admin.TaskResultMetaAdmin, "list_per_page", 2)
    failed = {record(status=states.FAILURE).task_id for _ in range(3)}
    response = admin_client.get(reverse(CHANGELIST), {"status": "FAILURE"})
    assert "too many to count quickly" in response.content.decode()
    assert len(listed_ids(response)) == 2 and listed_ids(response) <= failed
    assert response.context["cl"].paginator.num_pages > 1
    # The last page, not full, gives the count.
    response = admin_client.get(reverse(CHANGELIST), {"status": "FAILURE", "p": "2"})
    assert len(listed_ids(response)) == 1
    assert "3 task results" in response.content.decode()
    assert response.context["cl"].paginator.num_pages == 2
    # A first page that is not full is the whole count.
    monkeypatch.setattr(fdr_admin.TaskResultMetaAdmin, "list_per_page", 100)
    response = admin_client.get(reverse(CHANGELIST), {"status": "FAILURE"})
    assert listed_ids(response) == failed
    assert "3 task results" in response.content.decode()
    assert response.context["cl"].paginator.num_pages == 1


@pytest.mark.django_db
def test_a_slow_count_is_cut_off_on_postgresql(admin_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A count slower than COUNT_TIMEOUT_MS is given up, the page still comes, the timeout goes with it."""
    if connection.vendor != "postgresql":
        pytest.skip("statement_timeout is PostgreSQL's")
    counted: list[int | None] = []
    original = fdr_admin.EstimatedCountPaginator._capped_count

    def spy(self: Any, queryset: Any) -> int | None:
        counted.append(original(self, queryset))
        return counted[-1]

    def slow(self: Any, request: Any) -> Any:
        # Every row costs the database 0.1 s: the count cannot finish in COUNT_TIMEOUT_MS.
        return TaskResultMeta.objects.extra(where=["pg_sleep(0.1) IS NOT NULL"])

    monkeypatch.setattr(fdr_admin.EstimatedCountPaginator, "_capped_count", spy)
    monkeypatch.setattr(fdr_admin.TaskResultMetaAdmin, "get_queryset", slow)
    record(status=states.FAILURE)
    response = admin_client.get(reverse(CHANGELIST), {"status": "FAILURE"})
    assert response.status_code == 200
    assert counted == [None], "the count was given up"
    assert len(listed_ids(response)) == 1
    assert "1 task result" in response.content.decode(), "settled by the short first page"
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0", "the timeout ends with the count"


@pytest.mark.django_db
def test_unfiltered_count_is_the_planner_estimate_on_postgresql(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL keeps the row estimate this uses")
    monkeypatch.setattr(fdr_admin.EstimatedCountPaginator, "cap", 5)
    for _ in range(30):
        record()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_celery_fulldbresult_taskresultmeta")
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse(CHANGELIST))
    assert "about 30 task results" in response.content.decode()
    assert not [q for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]


@pytest.mark.django_db
def test_distinct_values_are_sorted_and_limited() -> None:
    for name in ("b.task", "a.task", "c.task", "b.task"):
        record(task=name)
    record(task=None)
    assert TaskResultMeta.objects.distinct_values("task") == ["a.task", "b.task", "c.task"]
    assert TaskResultMeta.objects.distinct_values("task", limit=2) == ["a.task", "b.task"]
    with pytest.raises(ValueError):
        TaskResultMeta.objects.distinct_values("args")


# -- the task page ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_task_page_is_read_only_with_json_and_lineage(admin_client: Client) -> None:
    original = record(status=states.FAILURE, traceback="Traceback (most recent call last):\nValueError: boom")
    retried = record(retry_of=original.task_id, kwargs='{"user": {"id": 42}}', encoded_result='{"total": [1, 2]}')
    TaskResultMeta.objects.filter(pk=original.pk).update(retried_as=retried.task_id)
    page = admin_client.get(change_url(retried)).content.decode()
    assert "<pre>{\n  &quot;user&quot;: {\n    &quot;id&quot;: 42\n  }\n}</pre>" in page
    assert "<pre>{\n  &quot;total&quot;: [\n    1,\n    2\n  ]\n}</pre>" in page
    assert f'<a href="{change_url(original)}">{original.task_id}</a>' in page
    assert 'name="_save"' not in page and "<textarea" not in page
    original_page = admin_client.get(change_url(original)).content.decode()
    assert "ValueError: boom" in original_page
    assert f'<a href="{change_url(retried)}">{retried.task_id}</a>' in original_page


@pytest.mark.django_db
def test_lineage_to_a_missing_record_is_plain_text(admin_client: Client) -> None:
    obj = record(retry_of="gone-task-id")
    page = admin_client.get(change_url(obj)).content.decode()
    assert "gone-task-id" in page and "gone-task-id</a>" not in page


@pytest.mark.django_db
def test_nothing_can_be_added_or_changed(admin_client: Client) -> None:
    obj = record()
    assert admin_client.get(reverse("admin:django_celery_fulldbresult_taskresultmeta_add")).status_code == 403
    response = admin_client.post(change_url(obj), {"task": "evil.task", "status": "SUCCESS"})
    assert response.status_code == 403
    obj.refresh_from_db()
    assert obj.task == "testcelery.tasks.add"


# -- safety ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_value_is_escaped(admin_client: Client) -> None:
    script = "<script>alert(1)</script>"
    obj = record(
        task=script,
        args=json.dumps([script]),
        kwargs=json.dumps({script: script}),
        encoded_result=json.dumps(script),
        traceback=script,
        hostname=script,
        retry_of=script,
        status=states.FAILURE,
    )
    for url in (change_url(obj), reverse(CHANGELIST), reverse(CHANGELIST) + "?q=alert"):
        page = admin_client.get(url).content.decode()
        assert "<script>alert" not in page, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, url


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fields",
    [
        {"args": "[1, 2", "kwargs": "not json at all"},
        {"args": '{"a": 1}', "kwargs": "[1]"},
        {"encoded_result": "{not json", "content_type": "application/json"},
        {
            "encoded_result": "gASVCAAAAAAAAACMBGV2aWyULg==",
            "content_type": "application/x-python-serialize",
            "content_encoding": "binary",
        },
        {"encoded_result": "garbage", "content_type": "application/x-unknown"},
        {"meta": "{broken", "status": "PROGRESS", "date_started": None},
    ],
    ids=[
        "invalid-json-args",
        "wrong-json-types",
        "undecodable-result",
        "pickle-not-accepted",
        "unknown-content-type",
        "broken-meta",
    ],
)
def test_a_malformed_record_never_breaks_a_page(admin_client: Client, fields: dict[str, Any]) -> None:
    obj = record(**fields)
    for url in (change_url(obj), reverse(CHANGELIST), reverse(CHANGELIST) + f"?q={obj.task_id}"):
        assert admin_client.get(url).status_code == 200, url
    page = admin_client.get(change_url(obj)).content.decode()
    if "encoded_result" in fields:
        assert "Cannot be decoded" in page
    if fields.get("args") == "[1, 2":
        assert "(not valid JSON, shown as stored)\n[1, 2" in page


@pytest.mark.django_db
def test_a_pickled_result_is_never_unpickled(admin_client: Client) -> None:
    # pickle of a call to os.system: decoding it would run it.
    payload = "gASVIQAAAAAAAACMBXBvc2l4lIwGc3lzdGVtlJOUjAZmYWxzZZSFlFKULg=="
    obj = record(encoded_result=payload, content_type="application/x-python-serialize", content_encoding="binary")
    page = admin_client.get(change_url(obj)).content.decode()
    assert "Cannot be decoded (application/x-python-serialize" in page
    assert payload in page


# -- retry -----------------------------------------------------------------------------------


def run_action(client: Client, action: str, *objs: TaskResultMeta, **params: str) -> Any:
    data = {"action": action, "_selected_action": [str(obj.pk) for obj in objs], "index": "0"}
    return client.post(
        reverse(CHANGELIST) + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""),
        data,
        follow=True,
    )


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


@pytest.mark.django_db(transaction=True)
def test_retry_action_reports_new_ids_and_refuses_retried_records(admin_client: Client, purge_broker: None) -> None:
    first, second = record(status=states.FAILURE), record(status=states.FAILURE, args="[3, 4]")
    response = run_action(admin_client, "retry_tasks", first, second)
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.retried_as and second.retried_as
    [message] = messages_of(response)
    assert message.startswith("Sent 2 tasks again, as: ")
    assert set(message.split(": ", 1)[1].split(", ")) == {first.retried_as, second.retried_as}
    new = TaskResultMeta.objects.get(task_id=second.retried_as)
    assert (new.retry_of, new.task, json.loads(new.args)) == (second.task_id, second.task, [3, 4])

    response = run_action(admin_client, "retry_tasks", first)
    assert messages_of(response) == [f"1 task was not sent: {first.task_id}: already retried as {first.retried_as}"]

    previous = first.retried_as
    response = run_action(admin_client, "force_retry_tasks", first)
    first.refresh_from_db()
    assert first.retried_as != previous
    assert messages_of(response) == [f"Sent 1 task again, as: {first.retried_as}"]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_retried_task_runs_on_a_real_worker(admin_client: Client, start_worker: Any) -> None:
    start_worker()
    failed = record(status=states.FAILURE, task="testcelery.tasks.add", args="[20, 22]")
    run_action(admin_client, "retry_tasks", failed)
    failed.refresh_from_db()
    done = wait_for(lambda: TaskResultMeta.objects.filter(task_id=failed.retried_as, status=states.SUCCESS).first())
    assert done.result == 42
    assert done.retry_of == failed.task_id


@pytest.mark.django_db
def test_retry_action_refuses_a_selection_over_its_limit(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch, purge_broker: None
) -> None:
    monkeypatch.setattr(fdr_admin, "RETRY_ACTION_LIMIT", 2)
    failed = [record(status=states.FAILURE) for _ in range(3)]
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "retry_tasks", "select_across": "1", "index": "0", "_selected_action": [failed[0].pk]},
        follow=True,
    )
    assert "Nothing was sent: more than 2 tasks are selected" in response.content.decode()
    assert TaskResultMeta.objects.count() == 3
    assert not TaskResultMeta.objects.filter(retried_as__isnull=False).exists()


@pytest.mark.django_db(transaction=True)
def test_retry_permission_is_its_own(purge_broker: None) -> None:
    obj = record(status=states.FAILURE)
    viewer = staff_client("view_taskresultmeta", "change_taskresultmeta", "delete_taskresultmeta")
    response = viewer.get(reverse(CHANGELIST))
    actions = [name for name, _label in response.context["action_form"].fields["action"].choices]
    assert "retry_tasks" not in actions and "force_retry_tasks" not in actions
    page = viewer.get(change_url(obj)).content.decode()
    assert retry_url(obj) not in page
    assert viewer.post(retry_url(obj)).status_code == 403
    run_action(viewer, "retry_tasks", obj)
    obj.refresh_from_db()
    assert obj.retried_as is None

    operator = staff_client("view_taskresultmeta", "retry_taskresultmeta")
    response = operator.get(reverse(CHANGELIST))
    actions = [name for name, _label in response.context["action_form"].fields["action"].choices]
    assert {"retry_tasks", "force_retry_tasks"} <= set(actions)
    assert retry_url(obj) in operator.get(change_url(obj)).content.decode()


@pytest.mark.django_db(transaction=True)
def test_retry_button_sends_one_task(admin_client: Client, purge_broker: None) -> None:
    obj = record(status=states.FAILURE)
    page = admin_client.get(change_url(obj)).content.decode()
    assert f'action="{retry_url(obj)}"' in page and 'value="Retry"' in page
    assert admin_client.get(retry_url(obj)).status_code == 405
    response = admin_client.post(retry_url(obj), follow=True)
    obj.refresh_from_db()
    assert response.redirect_chain[-1][0] == change_url(obj)
    assert messages_of(response) == [f"Sent 1 task again, as: {obj.retried_as}"]
    assert 'value="Retry again"' in response.content.decode()

    response = admin_client.post(retry_url(obj), follow=True)
    assert messages_of(response) == [f"1 task was not sent: {obj.task_id}: already retried as {obj.retried_as}"]
    previous = obj.retried_as
    admin_client.post(retry_url(obj), {"force": "1"})
    obj.refresh_from_db()
    assert obj.retried_as != previous


@pytest.mark.django_db
def test_retry_url_of_a_missing_record_is_404(admin_client: Client) -> None:
    url = reverse("admin:django_celery_fulldbresult_taskresultmeta_retry", args=["not-a-number"])
    assert admin_client.post(url).status_code == 404
    url = reverse("admin:django_celery_fulldbresult_taskresultmeta_retry", args=[987654321])
    assert admin_client.post(url).status_code == 404


@pytest.mark.django_db
def test_retry_button_needs_csrf_token() -> None:
    obj = record(status=states.FAILURE)
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser("root", password="x"))
    assert client.post(retry_url(obj)).status_code == 403
    obj.refresh_from_db()
    assert obj.retried_as is None


# -- the beat override without django-celery-beat ------------------------------------------


def run_django_without_beat(tmp_path: Path, settings_body: str, script: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "nobeat_settings.py").write_text(textwrap.dedent(settings_body))
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="nobeat_settings", PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    env["FULLDBRESULT_VAR"] = str(tmp_path / "var")
    # Nothing here depends on the database; MySQL's checks connect to it.
    env.update(FULLDBRESULT_DB="sqlite", FULLDBRESULT_DB_NAME=str(tmp_path / "db.sqlite3"))
    command = [sys.executable, "-c", textwrap.dedent(script)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_setting_on_without_beat_is_a_check_error_not_an_import_error(tmp_path: Path) -> None:
    result = run_django_without_beat(
        tmp_path,
        """
        from testcelery.settings import *
        INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "django_celery_beat"]
        DJANGO_CELERY_FULLDBRESULT_OVERRIDE_DJCELERY_ADMIN = True
        """,
        """
        import sys
        sys.modules["django_celery_beat"] = None  # as if it were not installed: importing it fails
        import django
        django.setup()
        from django.core.checks import run_checks
        from django.urls import reverse
        reverse("admin:django_celery_fulldbresult_taskresultmeta_changelist")
        print(sorted(message.id for message in run_checks()))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "django_celery_fulldbresult.E003" in result.stdout
