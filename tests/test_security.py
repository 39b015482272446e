"""Security: a pickled payload in the table is never unpickled; named kwargs are never stored.

(Who may retry and trigger tasks in the admin is tested in ``test_admin.py``.)
"""

from __future__ import annotations

import base64
import io
import json
import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import states
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client, override_settings
from django.utils import timezone
from kombu.exceptions import ContentDisallowed

from django_celery_fulldbresult.models import TaskResultMeta
from django_celery_fulldbresult.result_backends import DatabaseResultBackend
from django_celery_fulldbresult.serialization import REDACTED, decode_result
from testcelery import tasks
from testcelery.celery import app

from .faults_helpers import status

SECRETS = ("s3cret-password", "t0ken-value")


class _CreatesFile:
    """Unpickling this opens (so creates) a file: the proof that a payload ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _plant(task_id: str, marker: Path, status: str = states.SUCCESS) -> TaskResultMeta:
    payload = base64.b64encode(pickle.dumps(_CreatesFile(marker))).decode()
    return TaskResultMeta.objects.create(
        task_id=task_id,
        task="testcelery.tasks.add",
        status=status,
        args="[1, 2]",
        kwargs="{}",
        content_type="application/x-python-serialize",
        content_encoding="binary",
        encoded_result=payload,
        date_done=timezone.now() - timedelta(hours=2),
    )


@pytest.mark.django_db
def test_a_planted_pickle_is_never_unpickled_when_pickle_is_not_accepted(tmp_path: Path) -> None:
    assert "application/x-python-serialize" not in app.backend.accept
    marker = tmp_path / "unpickled"
    record = _plant("planted", marker)
    failed = _plant("planted-failure", marker, status=states.FAILURE)
    stuck = _plant("planted-started", marker, status=states.STARTED)

    with pytest.raises(ContentDisallowed):
        _ = record.result
    with pytest.raises(ContentDisallowed):
        _ = failed.result
    with pytest.raises(ContentDisallowed):
        app.AsyncResult("planted").get(timeout=1)
    with pytest.raises(ContentDisallowed):
        _ = app.AsyncResult("planted-failure").state

    call_command("find_stale_tasks", "--seconds", "1", "--format", "json", stdout=io.StringIO(), stderr=io.StringIO())
    user = get_user_model().objects.create_superuser("sec-admin", "s@example.com", "pw")
    client = Client()
    client.force_login(user)
    assert client.get("/admin/django_celery_fulldbresult/taskresultmeta/").status_code == 200
    for planted in (record, failed, stuck):
        page = client.get(f"/admin/django_celery_fulldbresult/taskresultmeta/{planted.pk}/change/")
        assert page.status_code == 200
    assert not marker.exists()

    # The payload is real: a backend that accepts pickle does run it.
    trusting = DatabaseResultBackend(app=app, accept=["json", "pickle"])
    decode_result(trusting, record.content_type, record.content_encoding, record.encoded_result).close()
    assert marker.exists()


def _no_secret_in(record: TaskResultMeta) -> None:
    stored = " ".join(str(getattr(record, name)) for name in ("args", "kwargs", "encoded_result", "traceback", "meta"))
    for secret in SECRETS:
        assert secret not in stored


@pytest.mark.worker
def test_redacted_kwargs_are_never_stored_and_retry_refuses_them(start_worker: Any) -> None:
    redact = ["password", "token"]
    secrets = {"password": SECRETS[0], "token": SECRETS[1]}
    with override_settings(DJANGO_CELERY_FULLDBRESULT_REDACT_KWARGS=redact):
        tracked = tasks.log_in.apply_async(("bob",), secrets)
        # The record written at publish time, before any worker runs.
        published = TaskResultMeta.objects.get(task_id=tracked.id)
        assert published.status == states.PENDING
        assert json.loads(published.kwargs) == {"password": REDACTED, "token": REDACTED}
        _no_secret_in(published)
        with override_settings(DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH=False):
            untracked = tasks.log_in.apply_async(("alice",), secrets)
        assert not TaskResultMeta.objects.filter(task_id=untracked.id).exists()

        start_worker("redact", REDACT_KWARGS=redact)
        assert tracked.get(timeout=30) == "bob"
        assert untracked.get(timeout=30) == "alice"

        for result in (tracked, untracked):
            record = TaskResultMeta.objects.get(task_id=result.id)
            assert record.status == states.SUCCESS
            assert record.decoded_args == [record.result]
            assert json.loads(record.kwargs) == {"password": REDACTED, "token": REDACTED}
            assert record.not_retryable_reason == "keyword arguments redacted: password, token"
            _no_secret_in(record)
            report = record.retry()
            assert not report.sent
            assert report.refused[result.id] == record.not_retryable_reason
    assert status(tracked.id) == states.SUCCESS
    assert not TaskResultMeta.objects.filter(retry_of__isnull=False).exists()
