"""The README's code samples run as written (the seed README's ones among them)."""

from __future__ import annotations

import contextlib
import io
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import states
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from django_celery_fulldbresult.models import TaskResultMeta
from testcelery.celery import app

README = (Path(__file__).resolve().parent.parent / "README.rst").read_text()

#: The seed README's (0.3.0) samples, as written there.
SEED_SAMPLES = [
    """\
CELERY_RESULT_BACKEND = 'django_celery_fulldbresult.result_backends:DatabaseResultBackend'
CELERY_IGNORE_RESULT = False
""",
    """\
import json

from testcelery.celery import app as celery_app

from django_celery_fulldbresult.models import TaskResultMeta

task = TaskResultMeta.objects.all()[0]
task_name = task.task
task_args = json.loads(task.args)
task_kwargs = json.loads(task.kwargs)
celery_app.send_task(task_name, args=task_args, kwargs=task_kwargs)
""",
    "DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH = True\n",
    """\
from datetime import timedelta
from django_celery_fulldbresult.models import TaskResultMeta

# Returns a QuerySet
stale_tasks = TaskResultMeta.objects.get_stale_tasks(timedelta(hours=1))
""",
    """\
$ python manage.py find_stale_tasks --hours 1
Stale tasks:
  2015-05-27 14:17:37.096366+00:00 - cf738350-afe8-44f8-9eac-34721581eb61: email_workers.tasks.send_email
""",
    "DJANGO_CELERY_FULLDBRESULT_USE_JSON = True\n",
    "DJANGO_CELERY_FULLDBRESULT_FORCE_JSON = True\n",
    "DJANGO_CELERY_FULLDBRESULT_OVERRIDE_DJCELERY_ADMIN = True\n",
]


def literal_blocks(text: str) -> list[str]:
    """The reStructuredText literal blocks (after ``::``) of a document, dedented."""
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].rstrip().endswith("::") and not lines[i].lstrip().startswith(".."):
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                body.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(body)).strip("\n") + "\n")
        else:
            i += 1
    return blocks


BLOCKS = literal_blocks(README)


def block(containing: str) -> str:
    found = [b for b in BLOCKS if containing in b]
    assert len(found) == 1, f"{len(found)} README samples contain {containing!r}"
    return found[0]


@pytest.mark.parametrize("sample", SEED_SAMPLES, ids=lambda s: s.splitlines()[0][:40])
def test_the_seed_samples_are_in_the_readme_as_written(sample: str) -> None:
    assert sample in BLOCKS


def test_the_settings_samples_name_real_settings() -> None:
    from celery.utils.imports import symbol_by_name

    from django_celery_fulldbresult.conf import PREFIX, app_settings

    for sample in SEED_SAMPLES:
        if sample.startswith(("CELERY_", "DJANGO_")):
            settings: dict[str, Any] = {}
            exec(sample, settings)
            for name in settings:
                if name.startswith(PREFIX):
                    assert hasattr(app_settings, name.removeprefix(PREFIX)), name
    backend = symbol_by_name("django_celery_fulldbresult.result_backends:DatabaseResultBackend")
    assert backend.__name__ == "DatabaseResultBackend"


@pytest.fixture
def purge_default_queue() -> Any:
    yield
    app.control.purge()


def old(task_id: str, task: str, status: str) -> TaskResultMeta:
    when = timezone.now() - timedelta(hours=2)
    return TaskResultMeta.objects.create(
        task_id=task_id, task=task, status=status, args="[1, 2]", kwargs="{}", date_done=when, date_submitted=when
    )


@pytest.mark.django_db(transaction=True)
def test_the_python_samples_run(purge_default_queue: None) -> None:
    old("...", "email_workers.tasks.send_email", states.FAILURE)
    old("lost", "email_workers.tasks.send_email", states.PENDING)
    namespace: dict[str, Any] = {}
    exec(block("celery_app.send_task(task_name"), namespace)
    exec(block("# Returns a QuerySet"), namespace)
    assert isinstance(namespace["stale_tasks"], QuerySet)
    assert [t.task_id for t in namespace["stale_tasks"]] == ["lost"]
    exec(block(".retry(force=True)"), namespace)
    assert namespace["report"].sent
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(block("task.stale_kind"), namespace)
    assert "lost email_workers.tasks.send_email " in out.getvalue()
    exec(block('app = Celery("proj")'), {})
    if connection.vendor == "postgresql":
        app.backend.store_result("json-result", {"status": "sent"}, states.SUCCESS)
        query = block("result::jsonb").strip()
        assert eval(query, {"TaskResultMeta": TaskResultMeta}).get().task_id == "json-result"
