"""The sdist is the project, the wheel is the app, and the wheel alone runs the example project.

Slow (a build and a new virtual environment): ``python dev.py lint`` runs it,
in the environment that has ``build`` and ``twine``; the test runs skip it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEEDS = ("build", "twine")

pytestmark = [
    pytest.mark.packaging,
    pytest.mark.skipif(
        any(importlib.util.find_spec(name) is None for name in NEEDS),
        reason="needs build and twine: run by python dev.py lint",
    ),
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], check=True, capture_output=True)
    return out


def only(folder: Path, pattern: str) -> Path:
    (found,) = folder.glob(pattern)
    return found


def test_twine_check_passes(dist: Path) -> None:
    files = [str(path) for path in dist.iterdir()]
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_is_the_app_only(dist: Path) -> None:
    names = zipfile.ZipFile(only(dist, "*.whl")).namelist()
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packages == {"django_celery_fulldbresult"}
    for needed in ("py.typed", "migrations/0001_initial.py", "management/commands/find_stale_tasks.py", "templates/"):
        assert any(name.startswith("django_celery_fulldbresult/" + needed) for name in names), needed


def test_the_sdist_is_the_project(dist: Path) -> None:
    with tarfile.open(only(dist, "*.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in (
        "dev.py",
        "tox.ini",
        "README.rst",
        "LICENSE",
        "requirements/test.txt",
        "tests/conftest.py",
        "tests/test_packaging.py",
        "testcelery/settings.py",
        "testcelery/broker.py",
        "bench/bench_store.py",
        "django_celery_fulldbresult/py.typed",
    ):
        assert needed in names, needed
    assert not any(name.startswith(("var/", ".venv")) for name in names)


def clean_environment() -> dict[str, str]:
    """This process's environment without the source tree and the test run's settings.

    A PYTHONPATH on the source tree would make pip take the package as
    installed already (its .egg-info is there) and Python import it from there.
    """
    dropped = ("PYTHONPATH", "DJANGO_SETTINGS_MODULE", "FULLDBRESULT_", "DJANGO_CELERY_FULLDBRESULT_", "VIRTUAL_ENV")
    return {name: value for name, value in os.environ.items() if not name.startswith(dropped)}


DEMO = """
import django, time
django.setup()
import django_celery_fulldbresult
from django_celery_fulldbresult.models import TaskResultMeta
from testcelery.tasks import add

assert "site-packages" in django_celery_fulldbresult.__file__, django_celery_fulldbresult.__file__
result = add.delay(2, 3)
print("published", TaskResultMeta.objects.filter(task_id=result.id).exists())
print("result", result.get(timeout=60))
print("stored", TaskResultMeta.objects.get(task_id=result.id).result)
print("version", django_celery_fulldbresult.__version__)
"""


def test_the_wheel_in_a_new_venv_runs_the_example_project(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    wheel = only(dist, "*.whl")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, f"{wheel}[beat]"], check=True, env=clean_environment())
    # Only the example project is on the path: the app comes from the wheel.
    project = tmp_path / "project"
    shutil.copytree(ROOT / "testcelery", project / "testcelery", ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        **clean_environment(),
        "PYTHONPATH": str(project),
        "DJANGO_SETTINGS_MODULE": "testcelery.settings",
        "FULLDBRESULT_DB": "sqlite",
        "FULLDBRESULT_BROKER": "fdrfs://",
        "FULLDBRESULT_VAR": str(tmp_path / "var"),
    }
    run = {"cwd": tmp_path, "env": env, "capture_output": True, "text": True}
    for command in (["check", "--fail-level", "WARNING"], ["migrate", "--no-input"]):
        done = subprocess.run([python, "-m", "django", *command], **run)  # type: ignore[call-overload]
        assert done.returncode == 0, done.stdout + done.stderr
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [python, "-m", "celery", "-A", "testcelery", "worker", "--pool", "solo", "-n", "wheel@%h"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        done = subprocess.run([python, "-c", DEMO], timeout=120, **run)  # type: ignore[call-overload]
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            time.sleep(0.1)
        log.close()
    assert done.returncode == 0, done.stdout + done.stderr + (tmp_path / "worker.log").read_text()
    lines = done.stdout.splitlines()
    assert "published True" in lines
    assert "result 5" in lines
    assert "stored 5" in lines
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"version {declared}" in lines
