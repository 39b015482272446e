from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class FullDBResultConfig(AppConfig):
    name = "django_celery_fulldbresult"
    verbose_name = _("Celery task results")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery._state import connect_on_app_finalize
        from celery.signals import after_task_publish, before_task_publish, task_postrun, worker_process_shutdown
        from django.core.signals import request_finished, request_started
        from django.db.backends.signals import connection_created

        from . import checks  # noqa: F401  (registers the system checks)
        from .conf import map_old_ignore_result, map_old_ignore_result_of_existing_apps
        from .publish import (
            close_old_connections,
            flush_after_task,
            on_after_task_publish,
            on_before_task_publish,
            record_groups_in_one_write,
            remember_socket,
        )

        # Celery 5.5 does not map the old CELERY_IGNORE_RESULT (see conf.py).
        map_old_ignore_result_of_existing_apps()
        connect_on_app_finalize(map_old_ignore_result)

        # Connected always; the handler returns at once unless TRACK_PUBLISH
        # is on, so the setting can be changed at run time (and in tests).
        before_task_publish.connect(on_before_task_publish, weak=False, dispatch_uid="django_celery_fulldbresult")
        # PUBLISH_IN_BACKGROUND: the writer is woken once the message is sent.
        after_task_publish.connect(on_after_task_publish, weak=False, dispatch_uid="django_celery_fulldbresult")
        record_groups_in_one_write()
        request_started.connect(close_old_connections, dispatch_uid="django_celery_fulldbresult")
        request_finished.connect(close_old_connections, dispatch_uid="django_celery_fulldbresult")
        task_postrun.connect(close_old_connections, weak=False, dispatch_uid="django_celery_fulldbresult")
        # The sockets of the publish threads' connections, which a forked child mutes.
        connection_created.connect(remember_socket, dispatch_uid="django_celery_fulldbresult")
        # PUBLISH_IN_BACKGROUND: what a task published is written before the next task runs.
        task_postrun.connect(flush_after_task, weak=False, dispatch_uid="django_celery_fulldbresult_flush")
        worker_process_shutdown.connect(flush_after_task, weak=False, dispatch_uid="django_celery_fulldbresult")
