import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testcelery.settings")

app = Celery("testcelery")
# Every CELERY_* Django setting configures the app (CELERY_RESULT_BACKEND, ...).
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
