"""Django system checks: every misconfiguration is reported with how to fix it.

The messages use ``gettext``, not the lazy one: checks run after the apps are
ready, in the language of the command that runs them.

Where they are registered: the package's ``__init__`` imports this module, so
the checks exist in every process that imports the package at all, including
a project that names the result backend but forgot the app in
``INSTALLED_APPS`` (E001) and imports the package (its Celery module, a
task). Where nothing imports it, the backend itself refuses to start (the
worker at start-up, a publisher at its first task) with an
``ImproperlyConfigured`` that says the same as E001.
"""

from __future__ import annotations

import re
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import router
from django.utils.translation import gettext as _

from .conf import BACKEND_PATH, PREFIX, app_settings, invalid_settings

ID = "django_celery_fulldbresult."
APP = "django_celery_fulldbresult"


def configured_backend() -> Any:
    """The project's ``CELERY_RESULT_BACKEND`` setting, or None."""
    return getattr(settings, "CELERY_RESULT_BACKEND", None) or None


def uses_this_backend() -> bool:
    """Whether the configured result backend is ours (or a subclass of it)."""
    backend = configured_backend()
    if not backend:
        return False
    if isinstance(backend, str) and backend.replace(".result_backends.", ".result_backends:") == BACKEND_PATH:
        return True
    from celery.app.backends import by_url

    try:
        from .result_backends import DatabaseResultBackend

        found: Any = by_url(backend)  # (class, url); celery-types says otherwise
        cls = found[0]
    except Exception:  # an unknown or unimportable backend is not ours
        return False
    return isinstance(cls, type) and issubclass(cls, DatabaseResultBackend)


def _backend_messages() -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if not apps.is_installed(APP):
        messages.append(
            Error(
                _("CELERY_RESULT_BACKEND is django-celery-fulldbresult's backend, but its app is not installed."),
                hint=_("Add '%(app)s' to INSTALLED_APPS, then run migrate.") % {"app": APP},
                id=ID + "E001",
            )
        )
    if not apps.is_installed("django_celery_results"):
        messages.append(
            Error(
                _("The result backend needs django-celery-results' models for groups and chords."),
                hint=_("Add 'django_celery_results' to INSTALLED_APPS, then run migrate."),
                id=ID + "E002",
            )
        )
    if getattr(settings, "CELERY_DB_REUSE_MAX", None) is None:
        messages.append(
            Warning(
                _(
                    "CELERY_DB_REUSE_MAX is not set: Celery's Django fix-up closes the database connection after "
                    "every task, and each task's record then costs a new connection."
                ),
                hint=_("Set CELERY_DB_REUSE_MAX = 1000 (the setting keeps this name with namespace='CELERY')."),
                id=ID + "W003",
            )
        )
    if app_settings.TRACK_PUBLISH and not _tracks_started():
        messages.append(
            Warning(
                _(
                    "%(setting)s is on without CELERY_TASK_TRACK_STARTED: a running task stays PENDING until it "
                    "ends, so stale detection takes it for one never started, and retrying it runs it twice."
                )
                % {"setting": PREFIX + "TRACK_PUBLISH"},
                hint=_(
                    "Set CELERY_TASK_TRACK_STARTED = True (or silence this check if every task has track_started=True)."
                ),
                id=ID + "W006",
            )
        )
    messages.extend(_sqlite_messages())
    return messages


def _tracks_started() -> bool:
    """Whether workers write STARTED: the Django setting, or the Celery app's own configuration."""
    if getattr(settings, "CELERY_TASK_TRACK_STARTED", False):
        return True
    from celery import current_app

    try:
        return bool(current_app.conf.task_track_started)
    except Exception:  # an app that cannot read its configuration: the Django setting said no
        return False


def _records_alias() -> str:
    if apps.is_installed(APP):
        return router.db_for_write(apps.get_model(APP, "TaskResultMeta")) or "default"
    return "default"


def _sqlite_messages() -> list[CheckMessage]:
    alias = _records_alias()
    database: dict[str, Any] = settings.DATABASES.get(alias) or {}
    if "sqlite3" not in database.get("ENGINE", ""):
        return []
    options: dict[str, Any] = database.get("OPTIONS") or {}
    messages: list[CheckMessage] = []
    if str(options.get("transaction_mode", "")).upper() != "IMMEDIATE":
        messages.append(
            Warning(
                _(
                    "The task records are in SQLite database %(alias)r without transaction_mode IMMEDIATE: "
                    "a chord's counter update fails with 'database is locked' when two workers finish at once."
                )
                % {"alias": alias},
                hint=_('Add "transaction_mode": "IMMEDIATE" and "timeout": 30 to the database\'s OPTIONS.'),
                id=ID + "W004",
            )
        )
    if not re.search(r"journal_mode\s*=\s*wal", str(options.get("init_command", "")), re.IGNORECASE):
        messages.append(
            Warning(
                _(
                    "The task records are in SQLite database %(alias)r without the WAL journal: "
                    "a worker's write blocks every reader (the admin, find_stale_tasks) until it commits."
                )
                % {"alias": alias},
                hint=_('Add "init_command": "PRAGMA journal_mode=WAL;" to the database\'s OPTIONS.'),
                id=ID + "W005",
            )
        )
    return messages


def _settings_messages() -> list[CheckMessage]:
    messages: list[CheckMessage] = [
        Error(
            _("%(setting)s = %(value)r is not valid.") % {"setting": name, "value": value},
            hint=_("%(setting)s must be %(expected)s.") % {"setting": name, "expected": expected},
            id=ID + "E004",
        )
        for name, value, expected in invalid_settings()
    ]
    if app_settings.OVERRIDE_DJCELERY_ADMIN and not apps.is_installed("django_celery_beat"):
        messages.append(
            Error(
                _("%(setting)s is on but django-celery-beat is not installed.")
                % {"setting": PREFIX + "OVERRIDE_DJCELERY_ADMIN"},
                hint=_(
                    "pip install 'django-celery-fulldbresult[beat]' and add 'django_celery_beat' to "
                    "INSTALLED_APPS, or turn %(setting)s off."
                )
                % {"setting": PREFIX + "OVERRIDE_DJCELERY_ADMIN"},
                id=ID + "E003",
            )
        )
    if app_settings.FORCE_JSON and not app_settings.USE_JSON:
        names = {"force": PREFIX + "FORCE_JSON", "use": PREFIX + "USE_JSON"}
        messages.append(
            Warning(
                _("%(force)s has no effect without %(use)s.") % names,
                hint=_("Set %(use)s = True as well, or remove %(force)s.") % names,
                id=ID + "W001",
            )
        )
    return messages


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """All of the app's checks (one function: they share the backend lookup)."""
    messages = _settings_messages()
    ours = uses_this_backend()
    if ours:
        messages.extend(_backend_messages())
    elif app_settings.TRACK_PUBLISH:
        messages.append(
            Warning(
                _(
                    "%(setting)s is on but CELERY_RESULT_BACKEND is %(backend)r: published tasks get a PENDING "
                    "record that no worker will ever finish."
                )
                % {"setting": PREFIX + "TRACK_PUBLISH", "backend": configured_backend()},
                hint=_("Set CELERY_RESULT_BACKEND = '%(path)s'.") % {"path": BACKEND_PATH},
                id=ID + "W002",
            )
        )
    return messages
