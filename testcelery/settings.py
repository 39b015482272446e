"""Settings of the example project.

The database and the broker come from the environment, so the same project
runs the demo on a laptop and the tests on every server CI has:

=========================  ==============================================
FULLDBRESULT_DB            ``sqlite`` (default), ``postgres`` or ``mysql``
FULLDBRESULT_DB_NAME       the database name (or SQLite file)
FULLDBRESULT_BROKER        a Celery broker URL; default: kombu's filesystem
                           transport in ``FULLDBRESULT_VAR`` (embedded: no
                           server needed)
FULLDBRESULT_VAR           where SQLite files and the embedded broker live
                           (default: ``var/`` in the project)
FULLDBRESULT_DB_PREPARE    PostgreSQL: psycopg's ``prepare_threshold`` (Django
                           leaves prepared statements off; see "Worker
                           throughput" in the README)
DJANGO_CELERY_FULLDBRESULT_*  the app's settings, as JSON (tests use them to
                           configure a worker process)
=========================  ==============================================
"""

import importlib.util
import json
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("FULLDBRESULT_VAR", BASE_DIR / "var"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "testcelery-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "testcelery.urls"
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",
    "django_celery_beat",
    "django_celery_fulldbresult",
    "testcelery",
]
if importlib.util.find_spec("django_celery_beat") is None:
    # The [beat] extra is optional, and django-celery-beat 2.9 does not
    # install on Django 6.1: the project runs without it there.
    INSTALLED_APPS.remove("django_celery_beat")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

_DB = os.environ.get("FULLDBRESULT_DB", "sqlite")
_DB_NAME = os.environ.get("FULLDBRESULT_DB_NAME")
if _DB == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _DB_NAME or "fulldbresult",
            "USER": os.environ.get("FULLDBRESULT_DB_USER", "postgres"),
            "HOST": os.environ.get("FULLDBRESULT_DB_HOST", "127.0.0.1"),
            "PORT": os.environ.get("FULLDBRESULT_DB_PORT", "5432"),
            # Keep connections between tasks: see "Worker throughput" in the README.
            "CONN_MAX_AGE": 300,
            "CONN_HEALTH_CHECKS": True,
        }
    }
    if os.environ.get("FULLDBRESULT_DB_PREPARE"):
        DATABASES["default"]["OPTIONS"] = {"prepare_threshold": int(os.environ["FULLDBRESULT_DB_PREPARE"])}
elif _DB == "mysql":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": _DB_NAME or "fulldbresult",
            "USER": os.environ.get("FULLDBRESULT_DB_USER", "root"),
            "HOST": os.environ.get("FULLDBRESULT_DB_HOST", "127.0.0.1"),
            "PORT": os.environ.get("FULLDBRESULT_DB_PORT", "3306"),
            "OPTIONS": {"charset": "utf8mb4", "isolation_level": "read committed"},
            "TEST": {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"},
            "CONN_MAX_AGE": 300,
            "CONN_HEALTH_CHECKS": True,
        }
    }
elif _DB == "sqlite":
    _sqlite_file = Path(_DB_NAME) if _DB_NAME else VAR / "testcelery.sqlite3"
    _sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(_sqlite_file),
            # A worker process writes while the web process (or a test) reads:
            # WAL lets them, and a writer waits for the lock instead of failing.
            # IMMEDIATE: a transaction takes the write lock when it begins, so
            # a read-then-write (the chord counter) waits instead of failing.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
            },
            # The worker processes open the same file, so the test database
            # is a file too (not SQLite's default in-memory one).
            "TEST": {"NAME": str(_sqlite_file.with_name("test_" + _sqlite_file.name))},
        }
    }
else:
    raise ValueError(f"FULLDBRESULT_DB={_DB!r}: use sqlite, postgres or mysql")

# A second database on the same server, for records kept apart with
# DATABASE_ROUTERS (tests/test_routers.py turns a router on; nothing else
# uses this alias, and its test database is made only for those tests).
_results = DATABASES["results"] = {**DATABASES["default"], "TEST": dict(DATABASES["default"].get("TEST", {}))}
if _DB == "sqlite":
    _results["NAME"] = str(_sqlite_file.with_name(_sqlite_file.stem + "-results.sqlite3"))
    _results["TEST"]["NAME"] = str(_sqlite_file.with_name("test_" + _sqlite_file.stem + "-results.sqlite3"))
else:
    _results["NAME"] = _results["NAME"] + "_results"

# Celery: every name is a Celery setting with the CELERY_ prefix.
_BROKER_DIR = VAR / "broker"
CELERY_BROKER_URL = os.environ.get("FULLDBRESULT_BROKER", "fdrfs://")
if CELERY_BROKER_URL.startswith("fdrfs://"):
    import testcelery.broker  # noqa: F401  (registers the fdrfs:// transport)

    # The embedded broker: messages are files, shared by every process here.
    for _folder in ("queue", "control"):
        (_BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "queue"),
        "data_folder_out": str(_BROKER_DIR / "queue"),
        "control_folder": str(_BROKER_DIR / "control"),
        "store_processed": False,
        # Look for new message files ten times a second (kombu's default: 1 s).
        "polling_interval": 0.1,
    }
CELERY_RESULT_BACKEND = "django_celery_fulldbresult.result_backends:DatabaseResultBackend"
CELERY_IGNORE_RESULT = False
CELERY_TASK_TRACK_STARTED = True
CELERY_RESULT_EXTENDED = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fix-up closes the database connection after every task
# unless this is set; reconnecting costs more than the task's own write.
CELERY_DB_REUSE_MAX = 1000

# The app's own settings; the environment can set any of them (as JSON).
DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH = True
for _name, _value in os.environ.items():
    if _name.startswith("DJANGO_CELERY_FULLDBRESULT_"):
        globals()[_name] = json.loads(_value)
    # Celery settings of a test's worker, as JSON: FULLDBRESULT_CELERY_ACCEPT_CONTENT='["json", "pickle"]'.
    elif _name.startswith("FULLDBRESULT_CELERY_"):
        globals()[_name.removeprefix("FULLDBRESULT_")] = json.loads(_value)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_celery_fulldbresult": {"handlers": ["console"], "level": "INFO"}},
}
