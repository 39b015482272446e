"""Every setting is read when it is used, so ``override_settings`` reaches it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

import django_celery_fulldbresult
from django_celery_fulldbresult.conf import PREFIX, app_settings, invalid_settings

ROOT = Path(__file__).resolve().parent.parent

#: Setting -> (a value a project sets, what app_settings gives for it).
VALUES: dict[str, tuple[Any, Any]] = {
    "TRACK_PUBLISH": (False, False),
    "PUBLISH_SYNCHRONOUS_COMMIT": (False, False),
    "PUBLISH_IN_BACKGROUND": (True, True),
    "UNFINISHED_SYNCHRONOUS_COMMIT": (False, False),
    "USE_JSON": (True, True),
    "FORCE_JSON": (True, True),
    "OVERRIDE_DJCELERY_ADMIN": (True, True),
    "STALE_AFTER": (timedelta(minutes=5), timedelta(minutes=5)),
    "REDACT_KWARGS": (["password", "token"], frozenset({"password", "token"})),
    "WORKER_PING_TIMEOUT": (0.25, 0.25),
}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_override_settings_reaches_each_setting(name: str) -> None:
    value, expected = VALUES[name]
    with override_settings(**{PREFIX + name: value}):
        assert getattr(app_settings, name) == expected
    assert getattr(app_settings, name) != expected


def test_a_setting_assigned_or_deleted_at_run_time_reaches_the_app() -> None:
    from django.conf import settings

    with override_settings():
        settings.DJANGO_CELERY_FULLDBRESULT_STALE_AFTER = 30
        assert app_settings.STALE_AFTER == timedelta(seconds=30)
        settings.DJANGO_CELERY_FULLDBRESULT_STALE_AFTER = 60
        assert app_settings.STALE_AFTER == timedelta(seconds=60)
        del settings.DJANGO_CELERY_FULLDBRESULT_STALE_AFTER
        assert app_settings.STALE_AFTER == timedelta(hours=1)


def test_settings_are_read_before_anything_set_django_up(tmp_path: Path) -> None:
    """Read first by the app (nothing had touched Django's settings), a setting is the project's."""
    (tmp_path / "first_settings.py").write_text(
        "from testcelery.settings import *\nDJANGO_CELERY_FULLDBRESULT_STALE_AFTER = 90\n"
    )
    script = (
        f"import os, sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'first_settings'\n"
        "from django_celery_fulldbresult.conf import app_settings\n"
        "print(app_settings.STALE_AFTER.total_seconds())"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), FULLDBRESULT_VAR=str(tmp_path / "var"))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    output = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert output.split() == ["90.0"]


def test_every_setting_has_a_test() -> None:
    names = {name for name in dir(type(app_settings)) if name.isupper()}
    assert names == set(VALUES)


def test_stale_after_in_seconds() -> None:
    with override_settings(DJANGO_CELERY_FULLDBRESULT_STALE_AFTER=90):
        assert app_settings.STALE_AFTER == timedelta(seconds=90)


def test_a_lone_redacted_name_is_one_name() -> None:
    with override_settings(DJANGO_CELERY_FULLDBRESULT_REDACT_KWARGS="password"):
        assert app_settings.REDACT_KWARGS == frozenset({"password"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRACK_PUBLISH", "yes"),
        ("PUBLISH_SYNCHRONOUS_COMMIT", "off"),
        ("PUBLISH_IN_BACKGROUND", 1),
        ("UNFINISHED_SYNCHRONOUS_COMMIT", "no"),
        ("STALE_AFTER", -5),
        ("STALE_AFTER", timedelta(seconds=-1)),
        ("STALE_AFTER", "1h"),
        ("REDACT_KWARGS", "password"),
        ("REDACT_KWARGS", [1, 2]),
        ("WORKER_PING_TIMEOUT", 0),
        ("WORKER_PING_TIMEOUT", True),
    ],
)
def test_invalid_values_are_found(name: str, value: Any) -> None:
    with override_settings(**{PREFIX + name: value}):
        assert [found[0] for found in invalid_settings()] == [PREFIX + name]


def test_valid_values_are_not_reported() -> None:
    with override_settings(**{PREFIX + name: value for name, (value, _) in VALUES.items()}):
        assert invalid_settings() == []


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    assert django_celery_fulldbresult.__version__ == version("django-celery-fulldbresult")


IGNORE_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tmp!r})
os.environ["DJANGO_SETTINGS_MODULE"] = "ignore_settings"
from celery import Celery
import django

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
django.setup()

@app.task
def plain():
    pass

app.finalize()
# The example project's own app, made when its settings were imported.
from testcelery.celery import app as project_app
import testcelery.tasks
shared = project_app.tasks["testcelery.tasks.add"]
print(json.dumps([app.conf.task_ignore_result, plain.ignore_result, shared.ignore_result]))
"""


@pytest.mark.parametrize("value", [True, False])
def test_the_seeds_celery_ignore_result_reaches_the_app(tmp_path: Path, value: bool) -> None:
    """A project with the seed's ``CELERY_IGNORE_RESULT`` ignores results on Celery 5.5 and 5.7 alike."""
    (tmp_path / "ignore_settings.py").write_text(f"from testcelery.settings import *\nCELERY_IGNORE_RESULT = {value}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), FULLDBRESULT_VAR=str(tmp_path / "var"))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    output = subprocess.run(
        [sys.executable, "-c", IGNORE_SCRIPT.format(tmp=str(tmp_path))],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(output.splitlines()[-1]) == [value, value, value]
