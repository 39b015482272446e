#!/usr/bin/env python
"""Publish tracking: ``apply_async`` latency with TRACK_PUBLISH on and off, and a group of 100.

    .venv/bin/python bench/bench_publish.py --db postgres     # Redis broker, db 9

Messages go to a queue no worker consumes (purged after each round), so only
the publishing side is measured: Celery building the message, the broker
round-trip, and with TRACK_PUBLISH on, the record's write. Contenders
alternate round by round. Figures: publishes per second (and the latency,
its inverse), round-trips per publish (``CaptureQueriesContext``), and for a
group of 100: groups per second and statements per group. TRACK_PUBLISH on is
measured three times: as shipped, with ``PUBLISH_SYNCHRONOUS_COMMIT = False``
(PostgreSQL: the commit does not wait for the disk flush), and with
``PUBLISH_IN_BACKGROUND = True`` (the write made by a thread of its own after
``apply_async`` returns; timed twice: the calls alone, and until every
record is written, which is the rate the writer sustains). A second table
times each publish alone (the record written before the next call, untimed,
and the same pause before each): the latency of one ``apply_async`` in a
request, the median of the calls; there the modes take turns call by call, in
a shuffled order each turn (the call that follows a write is slower, and a
fixed order would charge that to one mode).
"""

from __future__ import annotations

import atexit
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import alternate, drop_queue, own_queue, parser, purge, rate, report, setup, versions

QUEUE = own_queue("fdr-bench-parked")
#: Seconds between two publishes timed alone (longer than the background writer's gathering, 2 ms).
PAUSE = 0.005


def tracking(on: bool, synchronous: bool = True, background: bool = False) -> None:
    from django.conf import settings

    settings.DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH = on
    settings.DJANGO_CELERY_FULLDBRESULT_PUBLISH_SYNCHRONOUS_COMMIT = synchronous
    settings.DJANGO_CELERY_FULLDBRESULT_PUBLISH_IN_BACKGROUND = background


def publishes(
    app: Any, task: Any, count: int, on: bool, synchronous: bool = True, background: str | None = None
) -> Callable[[], float]:
    """A round of ``count`` publishes; ``background``: "returned" times the calls, "written" until all are written."""
    from django_celery_fulldbresult import publish

    def run() -> float:
        tracking(on, synchronous, background is not None)
        with app.producer_or_acquire() as producer:

            def work() -> None:
                for i in range(count):
                    task.apply_async((i,), {"payload": "x" * 40}, queue=QUEUE, producer=producer)
                if background == "written":
                    publish.flush()

            result = rate(count, work)
        publish.flush()  # the next round starts with no write pending
        purge(app, QUEUE)
        return result

    return run


#: The modes timed one publish at a time: (TRACK_PUBLISH, PUBLISH_SYNCHRONOUS_COMMIT, PUBLISH_IN_BACKGROUND).
MODES = {
    "TRACK_PUBLISH off": (False, True, False),
    "TRACK_PUBLISH on": (True, True, False),
    "on, asynchronous commit": (True, False, False),
    "on, in background": (True, True, True),
}


def one_at_a_time(app: Any, task: Any, count: int) -> Callable[[], dict[str, float]]:
    """A round of ``count`` publishes per mode, each timed alone; the modes take turns call by call.

    In a new order each turn (seeded: the same orders each run): the call
    right after one that wrote a record is slower (+28 % measured), and in a
    fixed order that would always fall on the same mode.

    Before each call: the previous record written (untimed) and the same
    pause for every mode, so that each call meets the same machine.
    Returns each mode's median latency, in seconds.
    """
    import time

    from django_celery_fulldbresult import publish

    def run() -> dict[str, float]:
        latencies: dict[str, list[float]] = {name: [] for name in MODES}
        order = list(MODES)
        shuffle = random.Random(count).shuffle
        with app.producer_or_acquire() as producer:
            for i in range(count):
                shuffle(order)
                for name in order:
                    tracking(*MODES[name])
                    time.sleep(PAUSE)
                    start = time.perf_counter()
                    task.apply_async((i,), {"payload": "x" * 40}, queue=QUEUE, producer=producer)
                    latencies[name].append(time.perf_counter() - start)
                    publish.flush()
        purge(app, QUEUE)
        return {name: statistics.median(values) for name, values in latencies.items()}

    return run


def groups(app: Any, task: Any, count: int, size: int, on: bool) -> Callable[[], float]:
    from celery import group

    def run() -> float:
        tracking(on)

        def work() -> None:
            for _ in range(count):
                group(task.s(i) for i in range(size)).apply_async(queue=QUEUE)

        result = rate(count, work)
        purge(app, QUEUE)
        return result

    return run


def write_alone(count: int, synchronous: bool) -> Callable[[], float]:
    """The publish write by itself (``upsert.record_published``, one row per call), no broker."""
    import uuid

    from django.db import connection
    from django.utils import timezone

    from django_celery_fulldbresult.upsert import record_published

    def run() -> float:
        now = timezone.now()
        rows = [
            {"task_id": str(uuid.uuid4()), "task": "bench.celery_app.noop", "status": "PENDING", "args": "[1]",
             "kwargs": '{"payload": "' + "x" * 40 + '"}', "not_retryable_reason": "", "routing_key": QUEUE,
             "queue": QUEUE, "date_submitted": now, "date_done": now}
            for _ in range(count)
        ]  # fmt: skip

        def work() -> None:
            for row in rows:
                record_published(connection, [row], synchronous)

        return rate(count, work)

    return run


def statements(work: Callable[[], Any]) -> list[str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        work()
    return [q["sql"].split(" ")[0] for q in captured.captured_queries]


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--publishes", type=int, default=None, help="publishes per round")
    args = p.parse_args()
    count = args.publishes or (20 if args.smoke else 1000)
    group_count = 1 if args.smoke else 10
    rounds = args.rounds or (1 if args.smoke else 7)
    setup(args.db)
    from celery import group

    from bench.celery_app import app, noop

    atexit.register(drop_queue, app, QUEUE)
    from django_celery_fulldbresult.models import TaskResultMeta

    TaskResultMeta.objects.all().delete()
    print(f"bench_publish --db {args.db}, broker {app.conf.broker_url}: {versions()}")
    tracking(True)
    one = statements(lambda: noop.apply_async((1,), queue=QUEUE))
    plain = statements(lambda: group(noop.s(i) for i in range(100)).apply_async(queue=QUEUE))
    tracking(True, synchronous=False)
    asynchronous = statements(lambda: noop.apply_async((1,), queue=QUEUE))
    tracking(True, background=True)
    background = statements(lambda: noop.apply_async((1,), queue=QUEUE))
    from django_celery_fulldbresult import publish

    publish.flush()
    purge(app, QUEUE)
    print(f"  round-trips per publish, TRACK_PUBLISH on: {len(one)} ({' '.join(one)})")
    print(f"  round-trips per publish, asynchronous commit: {len(asynchronous)} ({' '.join(asynchronous)})")
    print(f"  round-trips per publish in the caller's thread, in background: {len(background)}")
    print(f"  statements for a group of 100: {len(plain)}")

    rates = alternate(
        {
            "TRACK_PUBLISH off": publishes(app, noop, count, False),
            "TRACK_PUBLISH on": publishes(app, noop, count, True),
            "on, asynchronous commit": publishes(app, noop, count, True, synchronous=False),
            "on, in background": publishes(app, noop, count, True, background="returned"),
            "on, in background, until written": publishes(app, noop, count, True, background="written"),
        },
        rounds,
    )
    report(f"apply_async, {args.db}, {count} publishes per round", "publishes/s", rates, "TRACK_PUBLISH off")
    off = statistics.median(rates["TRACK_PUBLISH off"])
    print(f"  latency, TRACK_PUBLISH off: {1e6 / off:.0f} µs")
    for name in ("TRACK_PUBLISH on", "on, asynchronous commit", "on, in background"):
        on = statistics.median(rates[name])
        print(f"  latency, {name}: {1e6 / on:.0f} µs: {100 * (off / on - 1):+.0f}%")
    written = statistics.median(rates["on, in background, until written"])
    print(f"  in background, {count} publishes and all their records written: {written:.0f}/s")

    # The same, each publish alone: what one apply_async in a request costs.
    run = one_at_a_time(app, noop, count)
    medians: dict[str, list[float]] = {name: [] for name in MODES}
    for _ in range(rounds):
        for name, value in run().items():
            medians[name].append(value)
    print(f"\napply_async one at a time, {args.db}, {count} calls per mode per round, modes taking turns (shuffled)")
    off = statistics.median(medians["TRACK_PUBLISH off"])
    for name, values in medians.items():
        middle = statistics.median(values)
        spread = f"{1e6 * min(values):.0f}–{1e6 * max(values):.0f}"
        versus = "" if name == "TRACK_PUBLISH off" else f": {100 * (middle / off - 1):+.0f}%"
        print(f"  {name:<28} median latency {1e6 * middle:6.0f} µs  rounds {spread}{versus}")

    # What the write itself costs, without Celery or the broker: the floor of
    # what any synchronous publish write into this table adds.
    rates = alternate(
        {
            "the write alone": write_alone(count, True),
            "the write alone, asynchronous commit": write_alone(count, False),
        },
        rounds,
    )
    report(f"record_published alone, {args.db}, {count} rows per round, one per call", "writes/s", rates)
    for name, values in rates.items():
        print(f"  {name}: {1e6 / statistics.median(values):.0f} µs per write")

    rates = alternate(
        {
            "group of 100, off": groups(app, noop, group_count, 100, False),
            "group of 100, on": groups(app, noop, group_count, 100, True),
        },
        rounds,
    )
    report(
        f"group(100 tasks).apply_async, {args.db}, {group_count} groups per round",
        "groups/s",
        rates,
        "group of 100, off",
    )
    tracking(False)


if __name__ == "__main__":
    main()
