from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class FullDBResultConfig(AppConfig):
    name = "django_celery_fulldbresult"
    verbose_name = _("Celery task results")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import before_task_publish

        from . import checks  # noqa: F401  (registers the system checks)
        from .publish import on_before_task_publish

        # Connected always; the handler returns at once unless TRACK_PUBLISH
        # is on, so the setting can be changed at run time (and in tests).
        before_task_publish.connect(on_before_task_publish, weak=False, dispatch_uid="django_celery_fulldbresult")
