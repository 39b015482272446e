"""Helpers of the fault, race and load tests: own broker servers, apps on other brokers, subprocesses."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from celery import Celery, states
from django.db import connection

from django_celery_fulldbresult.models import TaskResultMeta

from .conftest import ROOT, worker_env

FINAL = sorted(states.READY_STATES)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only (FULLDBRESULT_DB=postgres)")


def broker_app(url: str) -> Celery:
    """The example project's app, publishing to ``url`` instead of the run's broker."""
    app = Celery("testcelery", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.broker_url = url
    if app.conf.broker_url != url:
        # Celery 5.5 reads the namespaced name first once the Django settings
        # are loaded with namespace="CELERY".
        app.conf["CELERY_BROKER_URL"] = url
    app.conf.broker_transport_options = {}
    # Fail fast when the broker is down: the tests want the caller's error.
    app.conf.broker_connection_timeout = 2
    app.conf.broker_connection_max_retries = 1
    app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1}
    return app


class RedisServer:
    """A ``redis-server`` of the test's own, which the test may stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--daemonize", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def vhost_url(amqp_url: str, vhost: str) -> str:
    """The URL of ``vhost`` on the server of ``amqp_url``, created when rabbitmqctl is at hand."""
    if shutil.which("rabbitmqctl"):
        subprocess.run(["rabbitmqctl", "add_vhost", vhost], capture_output=True)
        subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], capture_output=True)
        parsed = urlparse(amqp_url)
        return f"{parsed.scheme}://{parsed.netloc}/{vhost}"
    return amqp_url


def run_django(code: str, timeout: float = 60, **env: str) -> subprocess.Popen[str]:
    """Start a Python process on the test database with the example project set up."""
    prelude = "import django; django.setup(); from testcelery.celery import app; app.set_current()\n"
    return subprocess.Popen(
        [sys.executable, "-c", prelude + code],
        cwd=ROOT,
        env={**worker_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def status(task_id: str) -> str | None:
    return TaskResultMeta.objects.filter(task_id=task_id).values_list("status", flat=True).first()


def count_in(task_ids: list[str], *wanted: str) -> int:
    """How many of these tasks have a record in one of the ``wanted`` states (any state if none)."""
    found = 0
    for start in range(0, len(task_ids), 500):  # SQLite's limit on query parameters
        query = TaskResultMeta.objects.filter(task_id__in=task_ids[start : start + 500])
        found += (query.filter(status__in=wanted) if wanted else query).count()
    return found


def all_final(task_ids: list[str]) -> bool:
    return count_in(task_ids, *FINAL) == len(task_ids)


def ids_of(results: list[Any]) -> list[str]:
    return [result.id for result in results]
