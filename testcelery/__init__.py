"""The example project: the demo and the tests' Django project and Celery app."""

from .celery import app as celery_app

__all__ = ["celery_app"]
