"""Django system checks: every misconfiguration is reported with how to fix it."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .conf import BACKEND_PATH, PREFIX, app_settings

ID = "django_celery_fulldbresult."


def _configured_backend() -> str | None:
    for name in ("CELERY_RESULT_BACKEND", "CELERY_BACKEND"):
        value = getattr(settings, name, None)
        if value:
            return str(value)
    return None


def _uses_this_backend() -> bool:
    backend = _configured_backend() or ""
    return backend.replace(".result_backends.", ".result_backends:") == BACKEND_PATH


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    errors: list[Any] = []
    if _uses_this_backend() and not apps.is_installed("django_celery_results"):
        errors.append(
            Error(
                "The result backend needs django-celery-results' models for groups and chords.",
                hint="Add 'django_celery_results' to INSTALLED_APPS, then run migrate.",
                id=ID + "E002",
            )
        )
    if app_settings.OVERRIDE_DJCELERY_ADMIN and not apps.is_installed("django_celery_beat"):
        errors.append(
            Error(
                f"{PREFIX}OVERRIDE_DJCELERY_ADMIN is on but django-celery-beat is not installed.",
                hint="pip install 'django-celery-fulldbresult[beat]' and add 'django_celery_beat' to INSTALLED_APPS, "
                f"or turn {PREFIX}OVERRIDE_DJCELERY_ADMIN off.",
                id=ID + "E003",
            )
        )
    if app_settings.FORCE_JSON and not app_settings.USE_JSON:
        errors.append(
            Warning(
                f"{PREFIX}FORCE_JSON has no effect without {PREFIX}USE_JSON.",
                hint=f"Set {PREFIX}USE_JSON = True as well, or remove {PREFIX}FORCE_JSON.",
                id=ID + "W001",
            )
        )
    if app_settings.TRACK_PUBLISH and not _uses_this_backend():
        errors.append(
            Warning(
                f"{PREFIX}TRACK_PUBLISH is on but CELERY_RESULT_BACKEND is {_configured_backend()!r}: "
                "published tasks get a PENDING record that no worker will ever finish.",
                hint=f"Set CELERY_RESULT_BACKEND = '{BACKEND_PATH}'.",
                id=ID + "W002",
            )
        )
    return errors
