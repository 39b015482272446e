"""One test per system check id, and the example project passes them all."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from django.conf import settings
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_celery_fulldbresult.checks import check_settings
from django_celery_fulldbresult.conf import BACKEND_PATH
from django_celery_fulldbresult.result_backends import DatabaseResultBackend

ID = "django_celery_fulldbresult."
ROOT = Path(__file__).resolve().parent.parent


def ids() -> list[str]:
    return [message.id.removeprefix(ID) for message in check_settings() if message.id]


def without(app: str) -> list[str]:
    return [name for name in settings.INSTALLED_APPS if name != app]


def test_the_example_project_passes_every_check() -> None:
    assert [m for m in run_checks() if (m.id or "").startswith(ID)] == []


def test_e001_backend_without_the_app() -> None:
    with override_settings(INSTALLED_APPS=without("django_celery_fulldbresult")):
        assert "E001" in ids()
        # Where no check runs, the backend itself says what is wrong.
        with pytest.raises(ImproperlyConfigured, match="INSTALLED_APPS"):
            DatabaseResultBackend(app=Celery("e001", set_as_current=False))


def test_e002_backend_without_django_celery_results() -> None:
    with override_settings(INSTALLED_APPS=without("django_celery_results")):
        assert "E002" in ids()


def test_e003_admin_override_without_celery_beat() -> None:
    with override_settings(
        INSTALLED_APPS=without("django_celery_beat"), DJANGO_CELERY_FULLDBRESULT_OVERRIDE_DJCELERY_ADMIN=True
    ):
        assert ids() == ["E003"]


@pytest.mark.parametrize(("name", "value"), [("STALE_AFTER", -60), ("REDACT_KWARGS", "password"), ("USE_JSON", "no")])
def test_e004_a_setting_of_the_wrong_type(name: str, value: Any) -> None:
    with override_settings(**{"DJANGO_CELERY_FULLDBRESULT_" + name: value}):
        messages = check_settings()
    assert [m.id for m in messages] == [ID + "E004"]
    assert "DJANGO_CELERY_FULLDBRESULT_" + name in messages[0].msg


def test_w001_force_json_without_use_json() -> None:
    with override_settings(DJANGO_CELERY_FULLDBRESULT_FORCE_JSON=True, DJANGO_CELERY_FULLDBRESULT_USE_JSON=False):
        assert ids() == ["W001"]
    with override_settings(DJANGO_CELERY_FULLDBRESULT_FORCE_JSON=True, DJANGO_CELERY_FULLDBRESULT_USE_JSON=True):
        assert ids() == []


@pytest.mark.parametrize("backend", ["django-db", "redis://127.0.0.1:6379/0", "rpc://"])
def test_w002_track_publish_with_another_backend(backend: str) -> None:
    with override_settings(CELERY_RESULT_BACKEND=backend, DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH=True):
        assert ids() == ["W002"]
    with override_settings(CELERY_RESULT_BACKEND=backend, DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH=False):
        assert ids() == []


class SubclassBackend(DatabaseResultBackend):
    pass


@pytest.mark.parametrize(
    "backend",
    [BACKEND_PATH, BACKEND_PATH.replace(":", "."), f"{__name__}:SubclassBackend", f"{__name__}.SubclassBackend"],
)
def test_our_backend_and_its_subclasses_are_recognised(backend: str) -> None:
    with override_settings(CELERY_RESULT_BACKEND=backend, DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH=True):
        assert "W002" not in ids()


def test_w003_connections_closed_after_every_task() -> None:
    with override_settings(CELERY_DB_REUSE_MAX=None):
        assert ids() == ["W003"]


def test_w006_track_publish_without_track_started() -> None:
    from celery import current_app

    conf = current_app.conf  # what the check reads (which app is current is the project's business)
    was = conf.task_track_started
    try:
        conf.task_track_started = False
        with override_settings(DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH=True, CELERY_TASK_TRACK_STARTED=False):
            assert ids() == ["W006"]
        with override_settings(DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH=True, CELERY_TASK_TRACK_STARTED=True):
            assert ids() == []
        # Without publish tracking a running task has no record yet: nothing to mistake.
        with override_settings(DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH=False, CELERY_TASK_TRACK_STARTED=False):
            assert ids() == []
        # Set on the Celery app itself (app.conf, a celeryconfig module) and not in Django's settings: no
        # warning either. (Where both say, Celery 5.5 reads the Django setting and 5.7 app.conf: the test
        # leaves the Django setting out, as a project that configures Celery elsewhere does.)
        conf.task_track_started = True
        with override_settings(DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH=True):
            del settings.CELERY_TASK_TRACK_STARTED  # undone with the override
            assert ids() == []
    finally:
        conf.task_track_started = was


def sqlite_databases(options: dict[str, Any]) -> dict[str, Any]:
    databases = copy.deepcopy(settings.DATABASES)
    databases["default"] = {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3", "OPTIONS": options}
    return databases


def test_w004_sqlite_without_immediate_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "DATABASES", sqlite_databases({"init_command": "PRAGMA journal_mode=WAL;"}))
    assert ids() == ["W004"]


def test_w005_sqlite_without_wal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "DATABASES", sqlite_databases({"transaction_mode": "IMMEDIATE"}))
    assert ids() == ["W005"]


def test_sqlite_as_the_readme_says_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    options = {"transaction_mode": "IMMEDIATE", "timeout": 30, "init_command": "PRAGMA journal_mode=WAL;"}
    monkeypatch.setattr(settings, "DATABASES", sqlite_databases(options))
    assert ids() == []


def run_without_the_app(
    tmp_path: Path, command: list[str], settings_extra: str = ""
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "no_app_settings.py").write_text(
        "from testcelery.settings import *\n"
        "INSTALLED_APPS = [a for a in INSTALLED_APPS if a != 'django_celery_fulldbresult']\n" + settings_extra
    )
    env = dict(
        os.environ,
        PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}",
        DJANGO_SETTINGS_MODULE="no_app_settings",
        FULLDBRESULT_VAR=str(tmp_path / "var"),
        # What is checked does not depend on the database; an SQLite file of
        # its own needs no server database (MySQL's checks connect).
        FULLDBRESULT_DB="sqlite",
        FULLDBRESULT_DB_NAME=str(tmp_path / "db.sqlite3"),
    )
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_e001_a_worker_without_the_app_refuses_to_start(tmp_path: Path) -> None:
    done = run_without_the_app(
        tmp_path, [sys.executable, "-m", "celery", "-A", "testcelery", "worker", "--pool", "solo"]
    )
    assert done.returncode != 0
    assert "'django_celery_fulldbresult' is not in INSTALLED_APPS" in done.stdout + done.stderr


def test_e001_reported_by_manage_py_check_where_the_package_is_imported(tmp_path: Path) -> None:
    done = run_without_the_app(
        tmp_path, [sys.executable, "-m", "django", "check"], "import django_celery_fulldbresult  # noqa\n"
    )
    assert done.returncode != 0
    assert "django_celery_fulldbresult.E001" in done.stderr
