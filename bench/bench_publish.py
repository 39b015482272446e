#!/usr/bin/env python
"""Publish tracking: ``apply_async`` latency with TRACK_PUBLISH on and off, and a group of 100.

    .venv/bin/python bench/bench_publish.py --db postgres     # Redis broker, db 9

Messages go to a queue no worker consumes (purged after each round), so only
the publishing side is measured: Celery building the message, the broker
round-trip, and with TRACK_PUBLISH on, the record's write. Contenders
alternate round by round. Figures: publishes per second (and the latency,
its inverse), round-trips per publish (``CaptureQueriesContext``), and for a
group of 100: groups per second and statements per group, without and with
``publish.batch()``.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import alternate, parser, rate, report, setup, versions

QUEUE = "fdr-bench-parked"


def purge(app: Any) -> None:
    with app.connection_for_write() as conn, contextlib.suppress(Exception):  # not declared yet
        conn.default_channel.queue_purge(QUEUE)


def tracking(on: bool) -> None:
    from django.conf import settings

    settings.DJANGO_CELERY_FULLDBRESULT_TRACK_PUBLISH = on


def publishes(app: Any, task: Any, count: int, on: bool) -> Callable[[], float]:
    def run() -> float:
        tracking(on)
        with app.producer_or_acquire() as producer:

            def work() -> None:
                for i in range(count):
                    task.apply_async((i,), {"payload": "x" * 40}, queue=QUEUE, producer=producer)

            result = rate(count, work)
        purge(app)
        return result

    return run


def groups(app: Any, task: Any, count: int, size: int, on: bool, batched: bool) -> Callable[[], float]:
    from contextlib import nullcontext

    from celery import group

    from django_celery_fulldbresult import publish

    def run() -> float:
        tracking(on)

        def work() -> None:
            for _ in range(count):
                with publish.batch() if batched else nullcontext():
                    group(task.s(i) for i in range(size)).apply_async(queue=QUEUE)

        result = rate(count, work)
        purge(app)
        return result

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
    from django_celery_fulldbresult.models import TaskResultMeta

    TaskResultMeta.objects.all().delete()
    print(f"bench_publish --db {args.db}, broker {app.conf.broker_url}: {versions()}")
    tracking(True)
    one = statements(lambda: noop.apply_async((1,), queue=QUEUE))
    plain = statements(lambda: group(noop.s(i) for i in range(100)).apply_async(queue=QUEUE))
    with_batch = statements(lambda: _batched(group, noop))
    purge(app)
    print(f"  round-trips per publish, TRACK_PUBLISH on: {len(one)} ({' '.join(one)})")
    print(f"  statements for a group of 100: {len(plain)} without publish.batch(), {len(with_batch)} with it")

    rates = alternate(
        {
            "TRACK_PUBLISH off": publishes(app, noop, count, False),
            "TRACK_PUBLISH on": publishes(app, noop, count, True),
        },
        rounds,
    )
    report(f"apply_async, {args.db}, {count} publishes per round", "publishes/s", rates, "TRACK_PUBLISH off")
    off, on = (statistics.median(rates[k]) for k in ("TRACK_PUBLISH off", "TRACK_PUBLISH on"))
    print(f"  latency: {1e6 / off:.0f} µs off, {1e6 / on:.0f} µs on: +{100 * (off / on - 1):.0f}%")

    rates = alternate(
        {
            "group of 100, off": groups(app, noop, group_count, 100, False, False),
            "group of 100, on": groups(app, noop, group_count, 100, True, False),
            "group of 100, on + batch()": groups(app, noop, group_count, 100, True, True),
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


def _batched(group: Any, task: Any) -> None:
    from django_celery_fulldbresult import publish

    with publish.batch():
        group(task.s(i) for i in range(100)).apply_async(queue=QUEUE)


if __name__ == "__main__":
    main()
