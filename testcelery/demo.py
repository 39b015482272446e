"""The demo: a real worker runs a few tasks, their records are printed, the admin is served.

    python -m testcelery.demo              # ... then serves the admin on http://127.0.0.1:8000/admin/
    python -m testcelery.demo --no-serve   # stop after printing

``python dev.py demo`` runs it in the project's virtual environment. The
database and broker are the example project's (SQLite and the embedded
broker under ``var/`` unless ``FULLDBRESULT_*`` say otherwise).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOSTNAME = "demo@localhost"
USER = PASSWORD = "demo"
ADDRESS = "127.0.0.1:8000"
#: Nobody consumes this queue: the task sent there is what find_stale_tasks reports.
NOBODY_QUEUE = "nobody-listens"


def setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testcelery.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.contrib.auth.models import User

    if not User.objects.filter(username=USER).exists():
        User.objects.create_superuser(USER, email="demo@example.com", password=PASSWORD)
        print(f"Created the superuser {USER!r} (password {PASSWORD!r}).")


def start_worker(log: Path) -> subprocess.Popen[bytes]:
    from testcelery.celery import app

    app.control.purge()  # what an earlier demo left in the queues
    command = [sys.executable, "-m", "celery", "-A", "testcelery", "worker", "-P", "prefork", "-c", "2"]
    command += ["--hostname", HOSTNAME, "-l", "INFO", "--without-gossip", "--without-mingle"]
    with open(log, "wb") as output:
        worker = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while f"{HOSTNAME} ready.".encode() not in log.read_bytes():
        if worker.poll() is not None or time.monotonic() > deadline:
            stop(worker)
            sys.exit(f"The worker did not start; its log:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    print(f"Worker {HOSTNAME} started (log: {log}).")
    return worker


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def send_tasks() -> list[str]:
    """Tasks that succeed, fail and retry, and a small chord; wait for them; return their ids."""
    from celery import chord

    from testcelery import tasks

    results = [
        tasks.add.delay(2, 3),
        tasks.echo.delay("hello", when=datetime(2015, 5, 27, 14, 17, 37, tzinfo=UTC)),
        tasks.fail.delay("disk full"),
        tasks.flaky.delay(fail_times=1),
    ]
    header = [tasks.add.s(1, 1), tasks.add.s(2, 2)]
    results.append(chord(header)(tasks.tsum.s()))
    for result in results:
        result.get(timeout=60, propagate=False)
    ids = [result.id for result in results]
    ids += [child.id for child in results[-1].parent.results] if results[-1].parent else []
    return ids


def table(ids: list[str]) -> None:
    from django_celery_fulldbresult.models import TaskResultMeta

    records = TaskResultMeta.objects.filter(task_id__in=ids).order_by("date_submitted", "id")
    rows = [("id", "name", "state", "args", "kwargs", "result")]
    for record in records:
        arguments = _short(record.args, 24), _short(record.kwargs, 32)
        rows.append((record.task_id, record.task or "", record.status, *arguments, _short(_result(record))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    print("Task records:")
    for index, row in enumerate(rows):
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  " + "  ".join("-" * width for width in widths))


def _result(record: Any) -> str:
    try:
        return repr(record.result)
    except Exception as exc:  # a result the project does not accept
        return f"<cannot decode: {exc}>"


def _short(text: str | None, width: int = 40) -> str:
    text = text or ""
    return text if len(text) <= width else text[: width - 1] + "…"


def stale() -> None:
    from django.core.management import call_command

    from testcelery import tasks

    tasks.add.apply_async((1, 1), queue=NOBODY_QUEUE)
    time.sleep(1.5)
    print()
    print(f"python manage.py find_stale_tasks --seconds 1   (a task went to {NOBODY_QUEUE!r}, a queue nobody reads)")
    call_command("find_stale_tasks", seconds=1)


def serve() -> None:
    server = subprocess.Popen([sys.executable, "manage.py", "runserver", ADDRESS, "--noreload"], cwd=ROOT)
    print()
    print(f"Admin: http://{ADDRESS}/admin/  user: {USER}  password: {PASSWORD}  (Ctrl-C stops)", flush=True)
    try:
        server.wait()
    finally:
        stop(server)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-serve", dest="serve", action="store_false", help="stop after printing the records")
    args = parser.parse_args()
    # Ctrl-C, or a TERM from a supervisor: either way, stop the worker on the way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    setup()
    from django.conf import settings

    worker = start_worker(Path(settings.VAR) / "demo-worker.log")
    try:
        table(send_tasks())
        stale()
        if args.serve:
            serve()
    except KeyboardInterrupt:
        pass
    finally:
        stop(worker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
