"""The app's settings, read from Django settings each time they are used.

Reading at call time (not at import) is what lets ``override_settings`` and a
settings change between tests reach the app. :func:`invalid_settings` tells
which values are of the wrong type; the system checks report them (E004).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.utils.functional import empty
from django.utils.translation import gettext_lazy as _

PREFIX = "DJANGO_CELERY_FULLDBRESULT_"
BACKEND_PATH = "django_celery_fulldbresult.result_backends:DatabaseResultBackend"

_MISSING = object()


class Settings:
    """One property per setting; the README's settings table lists the same."""

    def _get(self, name: str, default: Any) -> Any:
        # Asked of the settings object Django's LazySettings wraps (override_settings
        # swaps it, a setting assigned at run time is set on it): for a setting the
        # project leaves out, LazySettings raises and catches two AttributeErrors,
        # ~1.5 µs, and a state change reads two or three of these settings.
        wrapped = django_settings._wrapped  # type: ignore[misc]  # (the stubs leave it out)
        if wrapped is empty:  # not set up yet: LazySettings does it
            return getattr(django_settings, PREFIX + name, default)
        return getattr(wrapped, PREFIX + name, default)

    @property
    def TRACK_PUBLISH(self) -> bool:
        """Write a PENDING record when a task is published."""
        return bool(self._get("TRACK_PUBLISH", False))

    @property
    def PUBLISH_SYNCHRONOUS_COMMIT(self) -> bool:
        """PostgreSQL: False commits the publish write without waiting for the disk flush."""
        return bool(self._get("PUBLISH_SYNCHRONOUS_COMMIT", True))

    @property
    def UNFINISHED_SYNCHRONOUS_COMMIT(self) -> bool:
        """PostgreSQL: False commits the worker's unfinished states without waiting for the disk flush."""
        return bool(self._get("UNFINISHED_SYNCHRONOUS_COMMIT", True))

    @property
    def PUBLISH_IN_BACKGROUND(self) -> bool:
        """Write the publish record from a thread of the process's own, after ``apply_async`` returns."""
        return bool(self._get("PUBLISH_IN_BACKGROUND", False))

    @property
    def USE_JSON(self) -> bool:
        """Store results as plain JSON text, whatever ``result_serializer`` is."""
        return bool(self._get("USE_JSON", False))

    @property
    def FORCE_JSON(self) -> bool:
        """With USE_JSON, store ``str(result)`` for a result that is not JSON."""
        return bool(self._get("FORCE_JSON", False))

    @property
    def OVERRIDE_DJCELERY_ADMIN(self) -> bool:
        """Add "Trigger Periodic Tasks" to django-celery-beat's PeriodicTask admin."""
        return bool(self._get("OVERRIDE_DJCELERY_ADMIN", False))

    @property
    def STALE_AFTER(self) -> timedelta:
        """The default window after which an unfinished task is stale."""
        value = self._get("STALE_AFTER", timedelta(hours=1))
        if isinstance(value, int | float):
            return timedelta(seconds=value)
        return value  # type: ignore[no-any-return]

    @property
    def REDACT_KWARGS(self) -> frozenset[str]:
        """Names of keyword arguments whose values are never stored."""
        value = self._get("REDACT_KWARGS", ())
        # A lone name is one name, not a set of letters (the check warns too).
        return frozenset([value] if isinstance(value, str) else value)

    @property
    def WORKER_PING_TIMEOUT(self) -> float:
        """Seconds to wait for workers to answer when telling a gone worker apart."""
        return float(self._get("WORKER_PING_TIMEOUT", 1.0))


app_settings = Settings()


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_window(value: Any) -> bool:
    if isinstance(value, timedelta):
        return value >= timedelta(0)
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _is_names(value: Any) -> bool:
    return isinstance(value, list | tuple | set | frozenset) and all(isinstance(name, str) for name in value)


def _is_timeout(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


#: Setting name (without the prefix) -> (valid?, what a valid value is).
RULES: dict[str, tuple[Callable[[Any], bool], Any]] = {
    "TRACK_PUBLISH": (_is_bool, _("True or False")),
    "PUBLISH_SYNCHRONOUS_COMMIT": (_is_bool, _("True or False")),
    "PUBLISH_IN_BACKGROUND": (_is_bool, _("True or False")),
    "UNFINISHED_SYNCHRONOUS_COMMIT": (_is_bool, _("True or False")),
    "USE_JSON": (_is_bool, _("True or False")),
    "FORCE_JSON": (_is_bool, _("True or False")),
    "OVERRIDE_DJCELERY_ADMIN": (_is_bool, _("True or False")),
    "STALE_AFTER": (_is_window, _("a timedelta or a number of seconds, not negative")),
    "REDACT_KWARGS": (_is_names, _("a list of keyword argument names, such as ['password']")),
    "WORKER_PING_TIMEOUT": (_is_timeout, _("a number of seconds greater than 0")),
}


def invalid_settings() -> list[tuple[str, Any, Any]]:
    """(full setting name, its value, what it should be) for each setting of the wrong type."""
    found = []
    for name, (valid, expected) in RULES.items():
        value = getattr(django_settings, PREFIX + name, _MISSING)
        if value is not _MISSING and not valid(value):
            found.append((PREFIX + name, value, expected))
    return found


def map_old_ignore_result(app: Any) -> None:
    """Give a Celery app configured from Django settings the old ``CELERY_IGNORE_RESULT``.

    Celery 5.7 maps the seed's ``CELERY_IGNORE_RESULT`` to ``task_ignore_result``
    under ``namespace="CELERY"``; Celery 5.5 does not, and a project that
    ignored results would store them all. It must run before the app is
    finalized, when its tasks read ``task_ignore_result``: the app config
    calls it for the apps that exist when Django is set up (a project's app
    is made when its settings are imported), and at the finalization of any
    app made later.
    """
    value = getattr(django_settings, "CELERY_IGNORE_RESULT", None)
    if value is None or hasattr(django_settings, "CELERY_TASK_IGNORE_RESULT"):
        return
    if getattr(app, "namespace", None) != "CELERY":
        return
    app.conf.task_ignore_result = bool(value)


def map_old_ignore_result_of_existing_apps() -> None:
    """:func:`map_old_ignore_result` for every Celery app that exists now."""
    from celery._state import _get_active_apps  # type: ignore[attr-defined]

    for app in _get_active_apps():
        map_old_ignore_result(app)
