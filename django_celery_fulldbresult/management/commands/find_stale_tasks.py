"""``manage.py find_stale_tasks``: list (and optionally retry) the tasks that never finished."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from celery import states
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from ...conf import app_settings
from ...managers import NEVER_STARTED, STALE_KINDS, WAITING_ETA, WAITING_RETRY, WORKER_GONE
from ...models import TaskResultMeta
from ...retry import RetryReport, retry_records

UNITS = ("weeks", "days", "hours", "minutes", "seconds", "microseconds")
#: The kinds of stale task --retry sends again: those that will never finish by
#: themselves. A task running on a live worker (slow, not lost), or STARTED
#: when no worker could be asked, is not sent twice.
RETRYABLE_KINDS = frozenset({NEVER_STARTED, WORKER_GONE, WAITING_RETRY, WAITING_ETA})
#: Larger windows than this are a typo, not a question.
MAX_WINDOW = timedelta(days=365 * 100)


def _non_negative_number(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_("%r is not a number") % text) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(_("%r is not a finite number") % text)
    if value < 0:
        raise argparse.ArgumentTypeError(_("%r is negative; give how long ago, as a positive number") % text)
    return value


class Command(BaseCommand):
    # A plain string, as in Django's own commands: argparse needs str, and
    # the options' help below is translated when the parser is built.
    help = (
        "List the tasks that have not reached a finished state and whose record has not changed for the given time "
        "(default: DJANGO_CELERY_FULLDBRESULT_STALE_AFTER, one hour)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        for unit in UNITS:
            parser.add_argument(
                f"--{unit}",
                type=_non_negative_number,
                default=None,
                help=_("Add this many %(unit)s to the window.") % {"unit": unit},
            )
        parser.add_argument(
            "--terminal-state",
            action="append",
            dest="terminal_states",
            metavar="STATE",
            help=_("A state that counts as finished (repeatable). Default: SUCCESS, FAILURE and REVOKED."),
        )
        parser.add_argument(
            "--task",
            action="append",
            dest="task_names",
            metavar="NAME",
            help=_("Only tasks of this name (repeatable)."),
        )
        parser.add_argument(
            "--queue",
            action="append",
            dest="queues",
            metavar="QUEUE",
            help=_("Only tasks sent to this queue (repeatable)."),
        )
        parser.add_argument(
            "--format",
            choices=("text", "json"),
            default="text",
            help=_("text (the default) or json: one JSON document."),
        )
        parser.add_argument(
            "--kind",
            action="store_true",
            help=_("In text mode, add why each task is stale (asks the workers which tasks they run)."),
        )
        parser.add_argument(
            "--retry",
            action="store_true",
            help=_(
                "Send again each stale task that is lost (never started, worker gone, waiting for a retry or an "
                "ETA long past), once. Lists only those: not a task retried already, one whose arguments cannot "
                "be sent again, or one running on a live worker (run without --retry to see them). Exits with "
                "status 1 if the broker or the database failed a retry."
            ),
        )
        parser.add_argument(
            "--fail-if-found", action="store_true", help=_("Exit with status 1 when stale tasks are found.")
        )
        parser.add_argument(
            "--not-retried",
            action="store_true",
            help=_(
                "Leave out the tasks sent again already (their new task has a record of its own): with "
                "--fail-if-found, a probe clears once the lost tasks are retried."
            ),
        )
        parser.add_argument(
            "--limit", type=int, default=None, help=_("List at most this many tasks (the oldest first).")
        )

    def window(self, options: dict[str, Any]) -> timedelta:
        given = {unit: options[unit] for unit in UNITS if options[unit] is not None}
        if not given:  # (--hours 0 is a window of zero, not the default)
            return app_settings.STALE_AFTER
        try:
            window = timedelta(**given)
        except OverflowError:
            raise CommandError(_("The window is too large.")) from None
        if window > MAX_WINDOW:
            raise CommandError(_("The window is too large: at most %(days)d days.") % {"days": MAX_WINDOW.days})
        return window

    def handle(self, *args: Any, **options: Any) -> None:
        window = self.window(options)
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError(_("--limit must be at least 1."))
        terminal = options["terminal_states"]
        unknown = sorted(set(terminal or ()) - set(states.ALL_STATES))
        if unknown:
            # Custom states are allowed, but say what was asked for.
            self.stderr.write(_("Note: %(states)s are not Celery states.") % {"states": ", ".join(unknown)})
        stale = TaskResultMeta.objects.get_stale_tasks(window, terminal).order_by("date_done", "id")
        if options["task_names"]:
            stale = stale.filter(task__in=options["task_names"])
        if options["queues"]:
            stale = stale.filter(queue__in=options["queues"])
        if options["not_retried"] or options["retry"]:
            stale = stale.filter(retried_as__isnull=True)
        if options["retry"]:
            # Only what can be sent: a task sent again already, one whose
            # arguments cannot be sent (not_retryable_reason) or one running
            # on a live worker must not take the place of one that can, run
            # after run (--limit, oldest first).
            stale = stale.filter(models.Q(not_retryable_reason="") | models.Q(not_retryable_reason__isnull=True))
            stale = stale.exclude(task__isnull=True).exclude(task="")
        want_kind = options["format"] == "json" or options["kind"] or options["retry"]
        if want_kind:
            stale = stale.with_stale_kind()
        if options["retry"]:
            stale = stale.filter(stale_kind__in=sorted(RETRYABLE_KINDS))
        if options["limit"]:
            stale = stale[: options["limit"]]
        records = list(stale)
        retried = self.retry(records) if options["retry"] and records else None
        if options["format"] == "json":
            self.write_json(records, window, retried)
        else:
            self.write_text(records, options["kind"], retried)
        if retried is not None and retried.failed:
            raise CommandError(
                ngettext(
                    "%(count)d stale task could not be sent again (see above): try again later.",
                    "%(count)d stale tasks could not be sent again (see above): try again later.",
                    len(retried.failed),
                )
                % {"count": len(retried.failed)},
                returncode=1,
            )
        if options["fail_if_found"] and records:
            raise CommandError(
                ngettext("%(count)d stale task found.", "%(count)d stale tasks found.", len(records))
                % {"count": len(records)},
                returncode=1,
            )

    def retry(self, records: list[TaskResultMeta]) -> RetryReport:
        """Send again the stale tasks that are lost; a task still running is not sent twice."""
        lost = [r for r in records if r.stale_kind in RETRYABLE_KINDS]  # type: ignore[attr-defined]
        report = retry_records(lost, progress=self.progress(len(lost)))
        for record in records:
            if record.stale_kind not in RETRYABLE_KINDS:  # type: ignore[attr-defined]
                report.refused[record.task_id] = _("not lost (%(kind)s): not sent again") % {
                    "kind": record.stale_kind  # type: ignore[attr-defined]
                }
        return report

    def progress(self, total: int) -> Any:
        if total < 100 or not self.stderr.isatty():
            return None
        done = [0]

        def report(count: int) -> None:
            done[0] += count
            self.stderr.write(f"\r{_('Retrying')}: {done[0]}/{total}", ending="")
            if done[0] >= total:
                self.stderr.write("")

        return report

    def write_text(self, records: list[TaskResultMeta], with_kind: bool, retried: Any) -> None:
        self.stdout.write(_("Stale tasks:"))
        for record in records:
            when = record.date_submitted or record.date_done
            line = f"  {when} - {record.task_id}: {record.task}"
            if with_kind:
                line += f" [{record.stale_kind}]"  # type: ignore[attr-defined]
            self.stdout.write(line)
        if retried is not None:
            for old, new in retried.sent.items():
                self.stdout.write(_("Retried %(old)s as %(new)s") % {"old": old, "new": new})
            for old, reason in retried.refused.items():
                self.stderr.write(_("Not retried %(old)s: %(reason)s") % {"old": old, "reason": reason})

    def write_json(self, records: list[TaskResultMeta], window: timedelta, retried: Any) -> None:
        document = {
            "window_seconds": window.total_seconds(),
            "count": len(records),
            "kinds": sorted(STALE_KINDS),
            "tasks": [
                {
                    "task_id": r.task_id,
                    "task": r.task,
                    "status": r.status,
                    "kind": r.stale_kind,  # type: ignore[attr-defined]
                    "queue": r.queue,
                    "hostname": r.hostname,
                    "date_submitted": r.date_submitted.isoformat() if r.date_submitted else None,
                    "date_started": r.date_started.isoformat() if r.date_started else None,
                    "date_done": r.date_done.isoformat(),
                    "eta": r.eta.isoformat() if r.eta else None,
                    "retried_as": (retried.sent.get(r.task_id) if retried else None) or r.retried_as,
                    "retry_refused": retried.refused.get(r.task_id) if retried else None,
                }
                for r in records
            ],
        }
        self.stdout.write(json.dumps(document, indent=2))
