"""Settings for the benchmarks: both result apps installed, the database picked by ``FDR_BENCH_DB``.

=================  ===========================================================
FDR_BENCH_DB       ``sqlite`` (Django's default journal), ``sqlite-wal``,
                   ``postgres`` or ``mysql`` (MariaDB)
FDR_BENCH_DB_NAME  the database name (default ``fdr_bench``; for SQLite, a file
                   in ``FDR_BENCH_VAR``)
FDR_BENCH_VAR      where SQLite files live (default ``/tmp/fdr_bench``)
FDR_BENCH_BROKER   the broker URL (default ``redis://127.0.0.1:6379/9``)
FDR_BENCH_BACKEND  ``fulldb`` (this project), ``dcr`` (django-celery-results)
                   or ``none`` (results ignored), for the worker benchmark
FDR_BENCH_REUSE    ``1``: set ``CELERY_DB_REUSE_MAX`` (keep connections
                   between tasks in the worker)
FDR_BENCH_CONN_MAX_AGE  PostgreSQL's ``CONN_MAX_AGE`` (default 0)
=================  ===========================================================

The benchmark scripts set these from their command-line arguments before
Django starts; their own names never collide with the test databases.
"""

import os
from pathlib import Path

DB = os.environ.get("FDR_BENCH_DB", "sqlite")
DB_NAME = os.environ.get("FDR_BENCH_DB_NAME", "fdr_bench")
VAR = Path(os.environ.get("FDR_BENCH_VAR", "/tmp/fdr_bench"))

SECRET_KEY = "bench-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_celery_results",
    "django_celery_fulldbresult",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "bench.urls"

if DB == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": DB_NAME,
            "USER": os.environ.get("FDR_BENCH_DB_USER", "postgres"),
            "HOST": os.environ.get("FDR_BENCH_DB_HOST", "127.0.0.1"),
            "PORT": os.environ.get("FDR_BENCH_DB_PORT", "5432"),
            # Django's default, 0; the worker benchmark shows that a longer one
            # does not stop Celery's per-task close (only CELERY_DB_REUSE_MAX does).
            "CONN_MAX_AGE": int(os.environ.get("FDR_BENCH_CONN_MAX_AGE", "0")),
        }
    }
elif DB == "mysql":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": DB_NAME,
            "USER": os.environ.get("FDR_BENCH_DB_USER", "root"),
            "HOST": os.environ.get("FDR_BENCH_DB_HOST", "127.0.0.1"),
            "PORT": os.environ.get("FDR_BENCH_DB_PORT", "3306"),
            "OPTIONS": {"charset": "utf8mb4", "isolation_level": "read committed"},
        }
    }
elif DB in ("sqlite", "sqlite-wal"):
    VAR.mkdir(parents=True, exist_ok=True)
    _options = {"timeout": 30}
    if DB == "sqlite-wal":
        _options["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR / f"{DB_NAME}-{DB}.sqlite3"),
            "OPTIONS": _options,
        }
    }
else:
    raise ValueError(f"FDR_BENCH_DB={DB!r}: use sqlite, sqlite-wal, postgres or mysql")

# Celery: the worker benchmark picks the backend; the others build backends directly.
CELERY_BROKER_URL = os.environ.get("FDR_BENCH_BROKER", "redis://127.0.0.1:6379/9")
_BACKEND = os.environ.get("FDR_BENCH_BACKEND", "fulldb")
CELERY_RESULT_BACKEND = {
    "fulldb": "django_celery_fulldbresult.result_backends:DatabaseResultBackend",
    "dcr": "django_celery_results.backends:DatabaseBackend",
    "none": None,
}[_BACKEND]
CELERY_TASK_IGNORE_RESULT = _BACKEND == "none"
CELERY_RESULT_EXTENDED = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if os.environ.get("FDR_BENCH_REUSE") == "1":
    CELERY_DB_REUSE_MAX = 1000

DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH = os.environ.get("FDR_BENCH_TRACK_PUBLISH") == "1"
