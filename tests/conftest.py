"""Fixtures: real worker processes, and the rule for services that are missing.

The database and broker of a run come from ``FULLDBRESULT_DB`` and
``FULLDBRESULT_BROKER`` (see ``testcelery/settings.py``); ``dev.py test`` runs
the suite once per database/broker pair that is available (all of them, and
required, when ``CI`` is set).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

REDIS_URL = os.environ.get("FULLDBRESULT_REDIS_URL", "redis://127.0.0.1:6379/5")
RABBITMQ_URL = os.environ.get("FULLDBRESULT_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), timeout=1).close()
    except OSError:
        return False
    return True


def require(url: str, what: str) -> None:
    """Skip a test whose server is missing, except in CI, where it fails."""
    if reachable(url):
        return
    message = f"{what} is not running at {url}"
    if IN_CI:
        pytest.fail(message + " (required in CI)")
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    require(REDIS_URL, "Redis")
    return REDIS_URL


@pytest.fixture
def rabbitmq_url() -> str:
    require(RABBITMQ_URL, "RabbitMQ")
    return RABBITMQ_URL


class Worker:
    """A real ``celery worker`` process of the example project."""

    def __init__(
        self,
        hostname: str,
        env: dict[str, str],
        log_dir: Path,
        concurrency: int = 2,
        queues: str | None = None,
        pool: str = "prefork",
        extra: tuple[str, ...] = (),
    ) -> None:
        self.hostname = hostname
        self.env = env
        self.log = log_dir / f"{hostname.replace('@', '_')}-{uuid.uuid4().hex[:6]}.log"
        self.args = [sys.executable, "-m", "celery", "-A", "testcelery", "worker", "-P", pool, "-c", str(concurrency)]
        self.args += ["--hostname", hostname, "-l", "INFO", "--without-gossip", "--without-mingle", *extra]
        if queues:
            self.args += ["-Q", queues]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Worker:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if f"{self.hostname} ready.".encode() in self.log.read_bytes():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        output = self.log.read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"worker {self.hostname} did not start:\n{output[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pool_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool), as a host that dies."""
        if self.process and self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if not self.process or self.process.poll() is not None:
            return
        # The tests wait for their tasks themselves: nothing is lost by not
        # waiting for a shutdown, which takes seconds (the logs are flushed
        # line by line).
        self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def worker_env(**settings: Any) -> dict[str, str]:
    """The environment of a worker on the test database, with app settings as JSON."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "testcelery.settings"
    env["FULLDBRESULT_DB_NAME"] = str(connection.settings_dict["NAME"])
    env["PYTHONPATH"] = str(ROOT)
    for name, value in settings.items():
        if name.isupper() and not name.startswith("FULLDBRESULT_"):
            env["DJANGO_CELERY_FULLDBRESULT_" + name] = json.dumps(value)
        else:
            env[name] = str(value)
    return env


@pytest.fixture(autouse=True)
def _close_publish_connections() -> Iterator[None]:
    """The publish hook's own connections must not outlive a test (the test database is dropped at the end)."""
    yield
    from django_celery_fulldbresult.publish import close_connections, stop_background_writer

    close_connections()
    stop_background_writer()


@pytest.fixture(scope="session")
def worker_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers")


@pytest.fixture
def _purged(django_db_setup: Any) -> None:
    """No message left by an earlier test reaches this test's workers."""
    from testcelery.celery import app

    app.control.purge()
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        if hasattr(channel, "unacked_key"):
            # Redis: messages a worker killed in an earlier test (or run) had
            # taken wait in these keys and come back after the visibility
            # timeout (an hour): they would run, and write records, in
            # whatever test runs then.
            channel.client.delete(channel.unacked_key, channel.unacked_index_key)


@pytest.fixture
def start_worker(_purged: None, worker_log_dir: Path, transactional_db: Any) -> Iterator[Callable[..., Worker]]:
    """Start workers for one test: ``start_worker("w1", TRACK_PUBLISH=False, concurrency=4)``.

    Upper-case keyword arguments are the app's settings in the worker;
    ``FULLDBRESULT_*`` ones are environment variables of the example project.
    """
    started: list[Worker] = []

    def start(
        name: str = "w1", concurrency: int = 2, queues: str | None = None, extra: tuple[str, ...] = (), **settings: Any
    ) -> Worker:
        worker = Worker(
            f"{name}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}",
            worker_env(**settings),
            worker_log_dir,
            concurrency,
            queues,
            extra=extra,
        )
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def worker(start_worker: Callable[..., Worker]) -> Worker:
    """One worker with the example project's settings, for this test."""
    return start_worker()


def in_a_forked_child(run: Callable[[], str], timeout: int = 20) -> str:
    """What ``run`` returns in a child forked from this process; fails the test if the child failed or hung."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(timeout)  # (a child waiting for something it does not have would never end)
            os.write(write, run().encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as output:
        out = output.read()
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child did its work and exited"
    return out


def server_sessions() -> set[int]:
    """The ids of the database server's sessions other than this connection's."""
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()")
        else:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
        return {row[0] for row in cursor.fetchall()}


def session_of(thread: int | None) -> int:
    """The server's id of the session of one of the publish module's threads (its one open connection)."""
    from django_celery_fulldbresult import publish

    (open_one,) = [c.connection for c in publish._held_connections[thread or 0] if c.connection is not None]
    return int(open_one.thread_id() if connection.vendor == "mysql" else open_one.info.backend_pid)


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1, message: str = "") -> Any:
    """Poll until ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(message or f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


#: A queue no worker of these tests consumes: messages wait there and are purged.
PARKED = "fulldbresult-parked"


@pytest.fixture
def parked() -> Iterator[str]:
    """A queue to publish to without running anything; emptied afterwards."""
    yield PARKED
    from testcelery.celery import app

    with app.connection_for_write() as conn, contextlib.suppress(Exception):  # never declared
        conn.default_channel.queue_purge(PARKED)
