"""The admin of task records (extended by the admin work: retry, stale filter, task pages)."""

from django.contrib import admin

from .models import TaskResultMeta


@admin.register(TaskResultMeta)
class TaskResultMetaAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("task_id", "task", "date_submitted", "date_done", "status", "eta")
    list_filter = ("status",)
    search_fields = ("task_id", "task")
