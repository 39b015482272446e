"""The record of a task: ``TaskResultMeta``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from celery import states
from django.db import models, router
from django.utils.translation import gettext_lazy as _

from .managers import TaskResultMetaManager

if TYPE_CHECKING:
    from .retry import RetryReport

# Names of the indexes, fixed so that a Django upgrade never renames them.
STALE_INDEX = "fulldbresult_unfinished_idx"


class TaskResultMeta(models.Model):
    """One row per task id, from publication (with TRACK_PUBLISH) to its last state."""

    id = models.BigAutoField(primary_key=True)
    task_id = models.CharField(_("task id"), max_length=255, unique=True)
    task = models.CharField(_("task name"), max_length=512, null=True, blank=True)
    status = models.CharField(_("state"), max_length=50, default=states.PENDING)

    # Arguments: JSON text of the real values (``json.loads(record.args)``).
    args = models.TextField(_("positional arguments"), null=True, blank=True)
    kwargs = models.TextField(_("keyword arguments"), null=True, blank=True)
    not_retryable_reason = models.TextField(
        _("not retryable because"),
        blank=True,
        default="",
        help_text=_("Why the stored arguments cannot be sent again (empty when they can)."),
    )

    # Result, encoded with content_type and content_encoding.
    content_type = models.CharField(_("result content type"), max_length=128, default="application/json")
    content_encoding = models.CharField(_("result encoding"), max_length=64, default="utf-8")
    # The column is "result", as in the original package; ``record.result`` is
    # the decoded value, ``encoded_result`` the text as stored.
    encoded_result = models.TextField(_("result"), db_column="result", null=True, blank=True)
    traceback = models.TextField(_("traceback"), null=True, blank=True)
    meta = models.TextField(_("meta"), null=True, blank=True, help_text=_("JSON: the task's children."))

    # Routing, as published and as received.
    hostname = models.CharField(_("worker"), max_length=255, null=True, blank=True)
    exchange = models.CharField(_("exchange"), max_length=255, null=True, blank=True)
    routing_key = models.CharField(_("routing key"), max_length=255, null=True, blank=True)
    queue = models.CharField(_("queue"), max_length=255, null=True, blank=True)
    priority = models.PositiveSmallIntegerField(_("priority"), null=True, blank=True)

    # Scheduling and lineage.
    eta = models.DateTimeField(_("ETA"), null=True, blank=True)
    expires = models.DateTimeField(_("expires"), null=True, blank=True)
    retries = models.PositiveIntegerField(_("retries"), default=0)
    parent_id = models.CharField(_("parent id"), max_length=255, null=True, blank=True)
    root_id = models.CharField(_("root id"), max_length=255, null=True, blank=True)
    group_id = models.CharField(_("group id"), max_length=255, null=True, blank=True)
    periodic_task_name = models.CharField(_("periodic task name"), max_length=255, null=True, blank=True)
    retry_of = models.CharField(
        _("retry of"),
        max_length=255,
        null=True,
        blank=True,
        help_text=_("Id of the task this one was sent again from."),
    )
    retried_as = models.CharField(
        _("retried as"),
        max_length=255,
        null=True,
        blank=True,
        help_text=_("Id of the task this one was sent again as."),
    )

    # Timing. date_done is the time of the last state change, as in Celery.
    date_submitted = models.DateTimeField(_("submitted"), null=True, blank=True)
    date_started = models.DateTimeField(_("started"), null=True, blank=True)
    date_done = models.DateTimeField(_("last change"))

    objects = TaskResultMetaManager()

    class Meta:
        verbose_name = _("task result")
        verbose_name_plural = _("task results")
        ordering = ["-date_done"]
        permissions = [("retry_taskresultmeta", _("Can send tasks again"))]
        indexes = [
            # The admin's default order, and cleanup's scan of old records.
            models.Index(fields=["date_done"], name="fulldbresult_done_idx"),
            # The state filter and stale detection where partial indexes are missing.
            models.Index(fields=["status", "date_done"], name="fulldbresult_status_done_idx"),
            # The name filter and search.
            models.Index(fields=["task", "date_done"], name="fulldbresult_task_done_idx"),
            models.Index(fields=["date_submitted"], name="fulldbresult_submitted_idx"),
            models.Index(fields=["group_id"], name="fulldbresult_group_idx"),
        ]
        # STALE_INDEX, a partial index on unfinished records, is created by
        # migration 0002 on the databases that support partial indexes.

    def __str__(self) -> str:
        return f"<Task: {self.task_id} ({self.status})>"

    @property
    def is_finished(self) -> bool:
        return self.status in states.READY_STATES

    @property
    def decoded_args(self) -> list[Any]:
        from .serialization import decode_arguments

        return decode_arguments(self.args, self.kwargs)[0]

    @property
    def decoded_kwargs(self) -> dict[str, Any]:
        from .serialization import decode_arguments

        return decode_arguments(self.args, self.kwargs)[1]

    @property
    def result(self) -> Any:
        """The result as Python, decoded with the content type it was stored with.

        For FAILURE and the other exception states, the exception, as
        ``AsyncResult.result`` gives it.
        """
        from celery import current_app

        from .serialization import decode_result

        backend = current_app.backend
        value = decode_result(backend, self.content_type, self.content_encoding, self.encoded_result)
        if self.status in states.EXCEPTION_STATES and value is not None:
            return backend.exception_to_python(value)
        return value

    @property
    def children(self) -> list[Any]:
        return json.loads(self.meta).get("children") or [] if self.meta else []

    def retry(self, force: bool = False, app: Any = None) -> RetryReport:
        """Send this task again; see :mod:`django_celery_fulldbresult.retry`."""
        from .retry import retry_records

        # Written where the router writes, not where this record was read from.
        return retry_records([self], force=force, app=app, using=router.db_for_write(type(self), instance=self))
