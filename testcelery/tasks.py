"""Tasks of the example project; the tests and the demo send these."""

import os
import signal
import time
from typing import Any

from celery import shared_task


@shared_task
def add(x: int, y: int) -> int:
    return x + y


@shared_task
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Return what it was called with, to check arguments arrive unchanged."""
    return {"args": list(args), "kwargs": kwargs}


@shared_task
def count(*args: Any, **kwargs: Any) -> int:
    """How many arguments it was called with: takes any, returns plain JSON."""
    return len(args) + len(kwargs)


@shared_task
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@shared_task
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@shared_task
def tsum(numbers: list[int]) -> int:
    return sum(numbers)


@shared_task(bind=True, max_retries=3, default_retry_delay=0)
def flaky(self: Any, fail_times: int = 1, countdown: float = 0) -> int:
    """Fail ``fail_times`` times with a retry, then succeed."""
    if self.request.retries < fail_times:
        raise self.retry(countdown=countdown)
    return self.request.retries


@shared_task
def not_json() -> object:
    """A result JSON cannot store (with USE_JSON), whose str() is readable."""
    return {1, 2, 3}


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


@shared_task
def unprintable() -> object:
    return _Unprintable()


@shared_task(bind=True)
def progress(self: Any) -> str:
    self.update_state(state="PROGRESS", meta={"done": 1, "total": 2})
    return "finished"


@shared_task(bind=True)
def progress_of(self: Any, task_id: str) -> str:
    """Report progress for another task (``update_state(task_id=...)``, Celery passes this task's request)."""
    self.update_state(task_id=task_id, state="PROGRESS", meta={"done": 1})
    return task_id


@shared_task(ignore_result=True)
def ignored(x: int) -> int:
    return x


@shared_task
def kill_own_worker(sig: int = signal.SIGKILL) -> None:
    """Kill the pool process running this task (WorkerLostError on the parent)."""
    os.kill(os.getpid(), sig)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def kill_once(marker: str) -> str:
    """Die the first time (acks_late + reject_on_worker_lost requeue it), succeed the next."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


#: A 300-character task name: names this long must be stored whole.
LONG_NAME = "testcelery.tasks.long_name_" + "x" * (300 - len("testcelery.tasks.long_name_"))


@shared_task(name=LONG_NAME)
def long_name(x: int) -> int:
    return x


@shared_task
def log_in(user: str, password: str = "", token: str = "") -> str:
    """Take secrets as keyword arguments (REDACT_KWARGS) and return none of them."""
    return user
