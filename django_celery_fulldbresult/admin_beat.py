"""django-celery-beat's PeriodicTask admin, with "Trigger Periodic Tasks" and a better list.

Installed by :mod:`django_celery_fulldbresult.admin` when
``DJANGO_CELERY_FULLDBRESULT_OVERRIDE_DJCELERY_ADMIN`` is on and
django-celery-beat is installed. Importing this module imports
django-celery-beat: nothing else in the app does.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask
from kombu.utils.json import loads

#: How many characters of the arguments the list shows.
ARGUMENTS_IN_LIST = 60
IDS_IN_MESSAGE = 20


def beat_options(periodic_task: PeriodicTask) -> dict[str, Any]:
    """The options django-celery-beat's scheduler sends this periodic task with.

    As its ``ModelEntry`` builds them (queue, exchange, routing key and
    priority when set, ``expires`` or ``expire_seconds``, the stored headers
    plus ``periodic_task_name``), and the ``celery_beat_task`` header its
    ``apply_async`` adds.
    """
    options: dict[str, Any] = {}
    for name in ("queue", "exchange", "routing_key", "priority"):
        value = getattr(periodic_task, name)
        if value is not None:
            options[name] = value
    if periodic_task.expires_:
        options["expires"] = periodic_task.expires_
    headers = loads(periodic_task.headers or "{}")
    headers["periodic_task_name"] = periodic_task.name
    headers["celery_beat_task"] = True
    options["headers"] = headers
    return options


def trigger(periodic_task: PeriodicTask, app: Any = None) -> str:
    """Send a periodic task now, as beat would; return the new task id."""
    app = app or current_app
    args = loads(periodic_task.args or "[]")
    kwargs = loads(periodic_task.kwargs or "{}")
    return str(app.send_task(periodic_task.task, args=args, kwargs=kwargs, **beat_options(periodic_task)).id)


class PeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    list_display = ("name", "task", "args_short", "kwargs_short", "enabled", "scheduler", "last_run_at", "one_off")
    list_filter = ("enabled", "one_off", "task", "start_time", "last_run_at")
    search_fields = ("name", "task", "args", "kwargs")
    actions = (*BeatPeriodicTaskAdmin.actions, "trigger_periodic_tasks")

    @admin.display(description=_("positional arguments"))
    def args_short(self, periodic_task: PeriodicTask) -> str:
        return Truncator(periodic_task.args or "").chars(ARGUMENTS_IN_LIST)

    @admin.display(description=_("keyword arguments"))
    def kwargs_short(self, periodic_task: PeriodicTask) -> str:
        return Truncator(periodic_task.kwargs or "").chars(ARGUMENTS_IN_LIST)

    @admin.action(description=_("Trigger Periodic Tasks"))
    def trigger_periodic_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        sent: list[str] = []
        failed: list[str] = []
        for periodic_task in queryset:
            try:
                sent.append(trigger(periodic_task, self.celery_app))
            except Exception as exc:  # bad JSON arguments, broker down: say so, go on
                failed.append(f"{periodic_task.name}: {exc}")
        if sent:
            message = ngettext(
                "Sent %(count)d periodic task, as: %(ids)s",
                "Sent %(count)d periodic tasks, as: %(ids)s",
                len(sent),
            ) % {
                "count": len(sent),
                "ids": ", ".join(sent[:IDS_IN_MESSAGE]) + (", ..." if len(sent) > IDS_IN_MESSAGE else ""),
            }
            self.message_user(request, message, messages.SUCCESS)
        if failed:
            message = ngettext(
                "%(count)d periodic task was not sent: %(reasons)s",
                "%(count)d periodic tasks were not sent: %(reasons)s",
                len(failed),
            ) % {"count": len(failed), "reasons": "; ".join(failed[:IDS_IN_MESSAGE])}
            self.message_user(request, message, messages.ERROR)


def install(site: admin.AdminSite) -> None:
    """Replace django-celery-beat's PeriodicTask admin on ``site`` with this one."""
    if site.is_registered(PeriodicTask):
        site.unregister(PeriodicTask)
    site.register(PeriodicTask, PeriodicTaskAdmin)
