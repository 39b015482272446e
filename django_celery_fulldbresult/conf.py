"""The app's settings, read from Django settings each time they are used.

Reading at call time (not at import) is what lets ``override_settings`` and a
settings change between tests reach the app.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings

PREFIX = "DJANGO_CELERY_FULLDBRESULT_"
BACKEND_PATH = "django_celery_fulldbresult.result_backends:DatabaseResultBackend"


class Settings:
    """One property per setting; the README's settings table lists the same."""

    def _get(self, name: str, default: Any) -> Any:
        return getattr(django_settings, PREFIX + name, default)

    @property
    def TRACK_PUBLISH(self) -> bool:
        """Write a PENDING record when a task is published."""
        return bool(self._get("TRACK_PUBLISH", False))

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
        return frozenset(self._get("REDACT_KWARGS", ()))

    @property
    def WORKER_PING_TIMEOUT(self) -> float:
        """Seconds to wait for workers to answer when telling a gone worker apart."""
        return float(self._get("WORKER_PING_TIMEOUT", 1.0))


app_settings = Settings()
