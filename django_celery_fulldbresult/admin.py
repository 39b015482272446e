"""The admin of task records: a read-only list and task page, retry, the stale filter.

Built to stay fast on tables of millions of rows: no full ``COUNT(*)``
(see :class:`EstimatedCountPaginator`), filter choices read along an index
(``distinct_values``), a search that uses the indexes, and a changelist
that reads only the columns it shows.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any

import django
from celery import current_app, states
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import OperationalError, connections, transaction
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.dateformat import DateFormat, re_escaped, re_formatchars
from django.utils.functional import cached_property
from django.utils.html import conditional_escape, format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from . import managers
from .conf import app_settings
from .models import TaskResultMeta
from .retry import RetryReport, retry_queryset
from .serialization import clean_text, decode_result

#: Exact counts stop here; the list pages stop here too (filter or search to go further back).
COUNT_CAP = 10_000
#: A filtered count taking longer than this (PostgreSQL) is given up: the page says "not counted".
#: Choice (issue 5): 20 ms, was 30. At 10 M rows the rest of a filtered page takes ~20 ms (its other
#: queries and rendering, the rows written by ``rendered_rows``), so a count may cost ~30 ms within 50 ms;
#: and PostgreSQL stops a statement some ms after its timeout (a state + name count given 20 ms returns
#: in 21-22 ms on an idle machine, up to 30 under load; given 25 or 30 ms, in 28-36). The counts (warm): one
#: filter or a search 1-2 ms, all stale 5-7 ms, one stale kind (10,000 rows) 18-24 ms, so now and then
#: given up; a state and a name together 150-240 ms, seconds for a pair that never occurs (the short
#: first page then gives the exact count), 26-30 ms for a common pair (over the cap: same pages).
COUNT_TIMEOUT_MS = 20
#: PostgreSQL's SQLSTATE for a statement cancelled by ``statement_timeout``.
QUERY_CANCELED = "57014"
#: The most records one click of a retry action sends.
RETRY_ACTION_LIMIT = 10_000
#: How many task names and states the filters offer.
FILTER_CHOICES = 300
#: How many new ids a message lists before "...".
IDS_IN_MESSAGE = 20
#: Raw text longer than this is cut on the task page when it cannot be decoded.
RAW_TEXT_LIMIT = 20_000
#: The columns the changelist reads (never the arguments, result or traceback).
LIST_COLUMNS = ("id", "task_id", "task", "status", "date_submitted", "date_done", "eta")


class EstimatedCountPaginator(Paginator):  # type: ignore[type-arg]
    """A paginator that never counts the whole table.

    Unfiltered on PostgreSQL, the count is the planner's estimate; otherwise
    rows are counted up to ``COUNT_CAP`` (a ``LIMIT``-ed count), on
    PostgreSQL within ``COUNT_TIMEOUT_MS``: past it the count is left
    unknown (``uncounted``; the changelist settles it when a page is not
    full). Pages stop at ``COUNT_CAP`` rows: deep ``OFFSET`` pages would
    read the table too.
    """

    cap = COUNT_CAP
    count_timeout_ms = COUNT_TIMEOUT_MS
    estimated = False
    capped = False
    #: The count took too long: more than one page is assumed until the page is read.
    uncounted = False

    @cached_property
    def count(self) -> int:
        queryset: QuerySet[Any] = self.object_list  # type: ignore[assignment]
        if not queryset.query.where:
            estimate = queryset.model.objects.using(queryset.db).estimated_count()
            if estimate is not None and estimate > self.cap:
                self.estimated = True
                return int(estimate)
        counted = self._capped_count(queryset)
        if counted is None:
            self.capped = self.uncounted = True
            return self.cap + 1
        if counted > self.cap:
            self.capped = True
        return counted

    def _capped_count(self, queryset: QuerySet[Any]) -> int | None:
        """Rows up to ``cap + 1``; None when PostgreSQL could not count them in ``COUNT_TIMEOUT_MS``.

        Two filters whose indexes each hold many rows (a state and a name
        of 500,000 records each at 10 M rows) are combined in memory by the
        database, whatever the cap: over 100 ms. The count is then given up,
        not the page.
        """
        capped = queryset.order_by()[: self.cap + 1]
        connection = connections[queryset.db]
        if connection.vendor != "postgresql" or not self.count_timeout_ms:
            return int(capped.count())
        in_transaction = connection.in_atomic_block
        try:
            with transaction.atomic(using=queryset.db), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT current_setting('statement_timeout'), set_config('statement_timeout', %s, true)",
                    [str(int(self.count_timeout_ms))],
                )
                previous = cursor.fetchone()[0]
                counted = int(capped.count())
                if in_transaction:  # else the setting ends with this transaction
                    cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])
        except OperationalError as exc:
            cause = exc.__cause__
            if (getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)) != QUERY_CANCELED:
                raise
            return None
        return counted

    @cached_property
    def num_pages(self) -> int:
        pages = super().num_pages
        return min(pages, max(1, self.cap // self.per_page))


class StateFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, value) for value in TaskResultMeta.objects.distinct_values("status", FILTER_CHOICES)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(status=self.value()) if self.value() else queryset


class TaskNameFilter(admin.SimpleListFilter):
    title = _("task name")
    parameter_name = "task"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, value) for value in TaskResultMeta.objects.distinct_values("task", FILTER_CHOICES)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(task=self.value()) if self.value() else queryset


NO_PING = _(
    "The workers could not be asked which tasks they run (is the broker reachable?): "
    "every stale started task is listed."
)


class StaleFilter(admin.SimpleListFilter):
    """Unfinished tasks unchanged for ``STALE_AFTER``, and why (the kinds of ``with_stale_kind``)."""

    title = _("stale")
    parameter_name = "stale"
    ALL = "all"
    #: Telling these apart asks the workers which tasks they run: only done when chosen.
    ASK_WORKERS = (managers.WORKER_GONE, managers.RUNNING)

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            (self.ALL, _("Stale (all)")),
            (managers.NEVER_STARTED, _("Never started")),
            (managers.WAITING_ETA, _("Waiting for its ETA")),
            (managers.WAITING_RETRY, _("Waiting for a retry")),
            (managers.WORKER_GONE, _("Started, worker gone")),
            (managers.RUNNING, _("Started, running now")),
            (managers.OTHER, _("Other state")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        kind = self.value()
        if not kind:
            return queryset
        stale = queryset.get_stale_tasks()  # type: ignore[attr-defined]
        if kind == self.ALL:
            return stale  # type: ignore[no-any-return]
        if kind in self.ASK_WORKERS:
            asked = managers.live_workers_and_tasks()
            if asked is None:
                messages.warning(request, NO_PING)
                return stale.filter(status=states.STARTED)  # type: ignore[no-any-return]
            live, running = asked
            return stale.with_stale_kind(live, running).filter(stale_kind=kind)  # type: ignore[no-any-return]
        # The other kinds do not depend on the workers: do not ask them.
        return stale.with_stale_kind(live_workers=()).filter(stale_kind=kind)  # type: ignore[no-any-return]


class TaskResultChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        paginator = self.paginator
        shown = len(self.result_list)
        if getattr(paginator, "uncounted", False) and shown < self.list_per_page and (shown or self.page_num == 1):
            # Not counted, but this page is the last one: that gives the count.
            count = (self.page_num - 1) * self.list_per_page + shown
            pages = -(-count // self.list_per_page)
            paginator.uncounted = paginator.capped = False
            paginator.__dict__.update(count=count, num_pages=pages or (1 if paginator.allow_empty_first_page else 0))
            self.result_count = count
            self.multi_page = pages > 1
            self.can_show_all = count <= self.list_max_show_all

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        # Arguments, results and tracebacks can be large: the list reads none of them.
        return super().get_queryset(request, exclude_parameters).only(*LIST_COLUMNS)

    def get_ordering(self, request: HttpRequest, queryset: QuerySet[Any]) -> list[Any]:
        """Order by the chosen column, then by what its index holds next, all one way.

        The admin breaks ties by ``-pk``: sorted by name ascending that is
        ``task, id DESC``, which no index serves, and the database sorts a
        whole name's rows for one page. ``task, date_done, id`` in one
        direction walks the (task, date_done) index.
        """
        ordering = super().get_ordering(request, queryset)
        first = ordering[0] if ordering else None
        if not isinstance(first, str) or first.lstrip("-") in ("task_id", "pk", "id"):
            return ordering
        sign = "-" if first.startswith("-") else ""
        then = [sign + "date_done"] if first.lstrip("-") in ("task", "status") else []
        return [first, *then, sign + "pk"]

    def url_for_result(self, result: Any) -> str:
        # The admin reverses one URL a row (a tenth of the page's time): reverse
        # once with a placeholder, then put each row's key in its place.
        if self._change_url_template is None:
            return str(super().url_for_result(result))
        return self._change_url_template.replace(URL_PLACEHOLDER, str(quote(getattr(result, self.pk_attname))), 1)

    @cached_property
    def _change_url_template(self) -> str | None:
        url = str(super().url_for_result(self.model(**{self.pk_attname: URL_PLACEHOLDER})))
        return url if url.count(URL_PLACEHOLDER) == 1 else None

    def rendered_rows(self) -> list[SafeString] | None:
        """Each row of the list as the admin's ``{% result_list %}`` writes it, written directly; or None.

        Choice (issue 5): the admin builds every cell through generic
        lookups, ``format_html`` and a template loop, formats each date from
        scratch and resolves each row's URL again to add the kept filters:
        18-24 ms of a 100-row page. These are the same rows, byte for byte
        (``tests/test_admin.py`` compares them), in a few milliseconds: the
        link with its kept filters is built once a page, and each part of a
        date once a day or minute (:class:`_ListDates`). ``fulldbresult_admin.fdr_result_list``
        uses them. None (the admin's own rendering is used) when the columns
        are not this module's: a subclass that changes ``list_display``, a
        column's method or the links, a popup or an editable list.
        """
        columns = tuple(self.list_display)
        checkbox = columns[:1] == ("action_checkbox",)
        model_admin = self.model_admin
        if (
            columns[checkbox:] != LIST_DISPLAY
            or tuple(self.list_display_links or ()) != LIST_DISPLAY_LINKS
            or self.formset is not None
            or self.is_popup
            or any(
                getattr(getattr(model_admin, name), "__func__", None) is not getattr(TaskResultMetaAdmin, name)
                for name in LEAN_METHODS
            )
        ):
            return None
        try:
            template = self._change_url_template
        except NoReverseMatch:
            return None
        if template is None:
            return None
        # The kept filters, added to the placeholder's URL once: the admin
        # resolves each row's URL to add them (a tenth of its rendering).
        template = add_preserved_filters({"preserved_filters": self.preserved_filters, "opts": self.opts}, template)
        empty = conditional_escape(model_admin.get_empty_value_display())
        select = gettext("Select this object for an action - {}")
        date = _ListDates()
        rows = []
        for record in self.result_list:
            cells = [f'<td class="action-checkbox">{_checkbox(select, record)}</td>'] if checkbox else []
            url = template.replace(URL_PLACEHOLDER, str(quote(record.pk)), 1)
            submitted, done, eta = record.date_submitted, record.date_done, record.eta
            cells += [
                f'<th class="field-task_id"><a href="{_escape(url)}">{_text(record.task_id, empty)}</a></th>',
                f'<td class="field-task">{_text(record.task, empty)}</td>',
                f'<td class="field-date_submitted nowrap">{empty if submitted is None else date(submitted)}</td>',
                f'<td class="field-date_done nowrap">{empty if done is None else date(done)}</td>',
                f'<td class="field-state">{_state(record.status)}</td>',
                # The admin adds "nowrap" to a method's cell when its value is a date.
                f'<td class="field-eta_display nowrap">{date(eta)}</td>'
                if isinstance(eta, datetime)
                else f'<td class="field-eta_display">{empty}</td>',
            ]
            rows.append(SafeString("".join(cells)))
        return rows


#: Stands for a record's key in the changelist's reversed change URL.
URL_PLACEHOLDER = "fdr-pk-placeholder"
#: The list's columns (after the checkbox), and the one linking to the task page.
LIST_DISPLAY = ("task_id", "task", "date_submitted", "date_done", "state", "eta_display")
LIST_DISPLAY_LINKS = ("task_id",)
#: The admin's methods the lean rows write themselves: overriding one in a subclass brings back the admin's rendering.
LEAN_METHODS = ("action_checkbox", "state", "eta_display", "get_empty_value_display")
#: The datetime format letters whose text depends only on the local date, or only on its hour and
#: minute (no seconds, no time zone): a page writes each once a day, or once a minute.
DAY_FORMAT_LETTERS = frozenset("bdDEFjlLmMnNoStwWyYz")
MINUTE_FORMAT_LETTERS = frozenset("aAfgGhHiP")


class _ListDates:
    """Datetimes as the admin's list writes them, escaped: ``formats.localize(timezone.template_localtime(value))``.

    In the active time zone and language, as the admin. Choice (issue 5):
    each costs ~25 us (a quarter of the rows' rendering). When the
    language's ``DATETIME_FORMAT`` shows nothing finer than minutes and no
    time zone (83 of the 84 locales Django 5.2 ships, "N j, Y, P",
    "j. F Y H:i"...; not Bosnian's "j. N. Y. G:i T"), each of its letters
    is written as Django's ``DateFormat`` writes it, once a page for each
    day (a date letter) or minute (a time letter), and the pieces are
    joined as ``Formatter.format`` joins them. Any other format: each date
    is formatted by Django.
    """

    def __init__(self) -> None:
        self.pieces: list[tuple[bool | None, str]] = []  # (None: text; True: a day letter; False: a minute letter)
        self.by_piece = True
        for index, piece in enumerate(re_formatchars.split(str(formats.get_format("DATETIME_FORMAT")))):
            if index % 2 == 0:
                if piece:
                    self.pieces.append((None, re_escaped.sub(r"\1", piece)))
            elif piece in DAY_FORMAT_LETTERS or piece in MINUTE_FORMAT_LETTERS:
                self.pieces.append((piece in DAY_FORMAT_LETTERS, piece))
            else:
                self.by_piece = False
        self.seen: dict[tuple[Any, ...], str] = {}

    def __call__(self, value: Any) -> str:
        # What the admin calls (Django 5.2 to 6.1 have it; django-stubs does not list it).
        local = timezone.template_localtime(value)  # type: ignore[attr-defined]
        if not (self.by_piece and isinstance(local, datetime)):
            return _escape(formats.localize(local))
        formatter = None
        written = []
        for by_day, piece in self.pieces:
            if by_day is None:
                written.append(piece)
                continue
            key = (piece, local.date()) if by_day else (piece, local.hour, local.minute)
            text = self.seen.get(key)
            if text is None:
                formatter = formatter or DateFormat(local)
                text = self.seen[key] = str(getattr(formatter, piece)())
            written.append(text)
        return _escape("".join(written))


#: Django 6.1's admin shows a text without its surrounding spaces; 5.2 and 6.0 as it is.
STRIPS_TEXT = django.VERSION >= (6, 1)


def _text(value: str | None, empty: str) -> str:
    """A text column's cell content, as the admin writes it: blank (or only spaces) is the empty value."""
    stripped = value.strip() if value else ""
    return _escape(stripped if STRIPS_TEXT else value) if stripped else empty


def _state(status: str) -> SafeString:
    return SafeString(f'<span class="fdr-state fdr-state-{_escape(status)}">{_escape(status)}</span>')


def _escape(value: Any) -> str:
    """``django.utils.html.escape`` without its lazy-text wrapper (a tenth of the rows' time): the same text."""
    return html.escape(str(value))


def _checkbox(label: str, record: Any) -> str:
    """A row's selection checkbox, as the admin's (``label``: its translated "Select this object ... - {}").

    The label is a translation, written as is; the record's text is escaped.
    """
    return (
        f'<input type="checkbox" name="{ACTION_CHECKBOX_NAME}" value="{_escape(record.pk)}" class="action-select"'
        f' aria-label="{label.format(_escape(str(record)))}">'
    )


def pretty_json(text: str | None) -> str:
    """Indented JSON for a stored JSON text; the text itself when it is not JSON."""
    if text is None or text == "":
        return ""
    try:
        # clean_text: a lone surrogate (from undecodable bytes) cannot be sent in a page.
        return clean_text(json.dumps(json.loads(text), indent=2, ensure_ascii=False, sort_keys=True)) or ""
    except ValueError:
        return str(_("(not valid JSON, shown as stored)")) + "\n" + text[:RAW_TEXT_LIMIT]


def pretty_value(value: Any) -> str:
    try:
        return clean_text(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=repr)) or ""
    except Exception:  # a value even repr() fails on must not break the page
        return str(_("(a value that cannot be shown)"))


@admin.register(TaskResultMeta)
class TaskResultMetaAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = LIST_DISPLAY
    list_display_links = LIST_DISPLAY_LINKS
    list_filter = (StateFilter, TaskNameFilter, StaleFilter)
    search_fields = ("task_id", "task")
    search_help_text = _("A task id (or its beginning), or a part of a task name.")
    ordering = ("-date_done",)
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = ("retry_tasks", "force_retry_tasks")
    change_form_template = "admin/django_celery_fulldbresult/taskresultmeta/change_form.html"
    fieldsets = (
        (None, {"fields": ("task_id", "task", "status", "periodic_task_name", "not_retryable_reason")}),
        (_("Arguments"), {"fields": ("args_display", "kwargs_display")}),
        (_("Result"), {"fields": ("result_display", "traceback_display", "children_display")}),
        (_("Timing"), {"fields": ("date_submitted", "date_started", "date_done", "runtime", "eta", "expires")}),
        (_("Routing"), {"fields": ("hostname", "queue", "exchange", "routing_key", "priority")}),
        (
            _("Lineage"),
            {"fields": ("retry_of_link", "retried_as_link", "retries", "parent_link", "root_link", "group_id")},
        ),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [name for _title, options in self.fieldsets for name in options["fields"] if isinstance(name, str)]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A record is what happened: it is viewed, retried or deleted, never edited.
        return False

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(f"{self.opts.app_label}.retry_taskresultmeta"))

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return TaskResultChangeList

    # -- search ---------------------------------------------------------------

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Each word matches a task id exactly or by its beginning, or a part of a task name.

        ``icontains`` on task ids would read the whole table. A range on the
        unique index finds an id by its beginning; names are matched against
        the list of distinct names, then found through the (task, date_done)
        index.
        """
        words = search_term.split()
        if not words:
            return queryset, False
        names = TaskResultMeta.objects.using(queryset.db).distinct_values("task", 10 * FILTER_CHOICES)
        for word in words:
            matching_names = [name for name in names if word.lower() in name.lower()]
            condition = _id_prefix(word)
            if matching_names:
                # "id begins with it OR name is one of these" cannot walk one
                # index: the database reads the table until it has counted
                # enough rows. When no id begins with the word (one probe of
                # the unique index), only the names are searched.
                if TaskResultMeta.objects.using(queryset.db).filter(condition).exists():
                    condition |= Q(task__in=matching_names)
                else:
                    condition = Q(task__in=matching_names)
            queryset = queryset.filter(condition)
        return queryset, False

    # -- list columns ---------------------------------------------------------

    def action_checkbox(self, obj: Any) -> SafeString:
        # The admin's own renders a form widget through a template for each
        # row (a third of the list's rendering): the same tag, written directly.
        return SafeString(_checkbox(gettext("Select this object for an action - {}"), obj))

    @admin.display(description=_("state"), ordering="status")
    def state(self, record: TaskResultMeta) -> str:
        return _state(record.status)

    @admin.display(description=_("ETA"))
    def eta_display(self, record: TaskResultMeta) -> Any:
        # Not sortable: no index on eta, and sorting a large table by it is slow.
        return record.eta

    # -- task page ------------------------------------------------------------

    @admin.display(description=_("positional arguments"))
    def args_display(self, record: TaskResultMeta) -> str:
        return format_html("<pre>{}</pre>", pretty_json(record.args))

    @admin.display(description=_("keyword arguments"))
    def kwargs_display(self, record: TaskResultMeta) -> str:
        return format_html("<pre>{}</pre>", pretty_json(record.kwargs))

    @admin.display(description=_("result"))
    def result_display(self, record: TaskResultMeta) -> str:
        if record.encoded_result in (None, ""):
            return "-"
        try:
            value = decode_result(
                current_app.backend, record.content_type, record.content_encoding, record.encoded_result
            )
        except Exception as exc:  # refused (pickle not accepted) or corrupt: show it, never fail
            note = _("Cannot be decoded (%(type)s, %(error)s). Stored text:") % {
                "type": record.content_type,
                "error": exc,
            }
            return format_html("<p>{}</p><pre>{}</pre>", note, record.encoded_result[:RAW_TEXT_LIMIT])
        return format_html("<pre>{}</pre>", pretty_value(value))

    @admin.display(description=_("traceback"))
    def traceback_display(self, record: TaskResultMeta) -> str:
        return format_html("<pre>{}</pre>", record.traceback) if record.traceback else "-"

    @admin.display(description=_("children"))
    def children_display(self, record: TaskResultMeta) -> str:
        return format_html("<pre>{}</pre>", pretty_json(record.meta)) if record.meta else "-"

    @admin.display(description=_("run time"))
    def runtime(self, record: TaskResultMeta) -> Any:
        if record.date_started and record.date_done and record.is_finished:
            return record.date_done - record.date_started
        return "-"

    def _task_link(self, task_id: str | None) -> str:
        """A link to the record of ``task_id`` when it is stored here, else the id as text."""
        if not task_id:
            return "-"
        pk = TaskResultMeta.objects.filter(task_id=task_id).values_list("pk", flat=True).first()
        if pk is None:
            return task_id
        url = reverse(f"{self.admin_site.name}:django_celery_fulldbresult_taskresultmeta_change", args=[pk])
        return format_html('<a href="{}">{}</a>', url, task_id)

    @admin.display(description=_("retry of"))
    def retry_of_link(self, record: TaskResultMeta) -> str:
        return self._task_link(record.retry_of)

    @admin.display(description=_("retried as"))
    def retried_as_link(self, record: TaskResultMeta) -> str:
        return self._task_link(record.retried_as)

    @admin.display(description=_("parent"))
    def parent_link(self, record: TaskResultMeta) -> str:
        return self._task_link(record.parent_id)

    @admin.display(description=_("root"))
    def root_link(self, record: TaskResultMeta) -> str:
        return self._task_link(record.root_id if record.root_id != record.task_id else None)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        extra_context = dict(extra_context or {}, has_retry_permission=self.has_retry_permission(request))
        return super().change_view(request, object_id, form_url, extra_context)

    # -- retry ----------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        retry = self.admin_site.admin_view(require_POST(self.retry_view))
        info = self.opts.app_label, self.opts.model_name
        return [path("<path:object_id>/retry/", retry, name="%s_%s_retry" % info), *super().get_urls()]

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The task page's "Retry" button: send this one task again."""
        if not self.has_retry_permission(request):
            raise PermissionDenied
        record = self.get_object(request, object_id)
        if record is None:
            raise Http404
        # Written where the router writes (the database the record was read from, without a router).
        self.report_retry(request, record.retry(force=request.POST.get("force") == "1"))
        url = reverse(f"{self.admin_site.name}:django_celery_fulldbresult_taskresultmeta_change", args=[record.pk])
        return HttpResponseRedirect(url)

    @admin.action(description=_("Retry Tasks"), permissions=["retry"])
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self.retry_selected(request, queryset, force=False)

    @admin.action(description=_("Retry Tasks, even if already retried"), permissions=["retry"])
    def force_retry_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self.retry_selected(request, queryset, force=True)

    def retry_selected(self, request: HttpRequest, queryset: QuerySet[Any], force: bool) -> None:
        """Send the selection again, unless it is too big for one click ("select all" can reach millions)."""
        if queryset.order_by()[: RETRY_ACTION_LIMIT + 1].count() <= RETRY_ACTION_LIMIT:
            # On the selection's database when the admin chose one (.using(), Django's multi-database recipe).
            self.report_retry(request, retry_queryset(queryset, force=force))
            return
        message = gettext(
            "Nothing was sent: more than %(limit)d tasks are selected, and the admin sends at most %(limit)d "
            "at once. Filter the list further, or use QuerySet.retry() or find_stale_tasks --retry."
        ) % {"limit": RETRY_ACTION_LIMIT}
        self.message_user(request, message, messages.ERROR)

    def report_retry(self, request: HttpRequest, report: RetryReport) -> None:
        if report.sent:
            count = len(report.sent)
            message = ngettext(
                "Sent %(count)d task again, as: %(ids)s",
                "Sent %(count)d tasks again, as: %(ids)s",
                count,
            ) % {"count": count, "ids": _id_list(report.sent.values())}
            self.message_user(request, message, messages.SUCCESS)
        if report.refused:
            count = len(report.refused)
            reasons = "; ".join(
                f"{task_id}: {reason}" for task_id, reason in list(report.refused.items())[:IDS_IN_MESSAGE]
            )
            message = ngettext(
                "%(count)d task was not sent: %(reasons)s",
                "%(count)d tasks were not sent: %(reasons)s",
                count,
            ) % {"count": count, "reasons": reasons}
            self.message_user(request, message, messages.WARNING)


def _id_prefix(word: str) -> Q:
    """Task ids that begin with ``word``, as a range the unique index serves.

    ``LIKE 'abc%'`` alone cannot use a PostgreSQL index outside the C
    collation; the range can, and ``startswith`` keeps the match exact.
    Trailing punctuation is left out of the bounds: some collations ignore
    it when comparing.
    """
    stem = word.rstrip("-_.:")
    upper = _above_prefix(stem)
    if upper is None:
        return Q(task_id__startswith=word)
    return Q(task_id__gte=stem, task_id__lt=upper, task_id__startswith=word)


def _above_prefix(stem: str) -> str | None:
    """A string above every string that begins with ``stem``, whatever the collation; None if there is none here.

    Its last letter or digit that has a next one of its kind, stepped, and
    what follows it dropped: "ab9" -> "aba", "a-z" -> "b". Not the last
    character plus one: "9" + 1 is ":", which Unicode collations
    (utf8mb4_unicode_ci, ICU, glibc's) sort before the digits, so an id ending
    in 9 was not found.
    """
    for at in range(len(stem) - 1, -1, -1):
        char = stem[at]
        if char == "9":
            return stem[:at] + "a"  # (digits sort before letters everywhere)
        if "0" <= char < "9" or "a" <= char < "z" or "A" <= char < "Z":
            return stem[:at] + chr(ord(char) + 1)
    return None


def _id_list(ids: Any) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:IDS_IN_MESSAGE])
    return shown + (", ..." if len(ids) > IDS_IN_MESSAGE else "")


def _install_beat_override() -> None:
    # Read once, when the admin is loaded: a change needs a restart. Beat is
    # imported only when it is installed (checks.E003 reports the rest).
    from django.apps import apps

    if app_settings.OVERRIDE_DJCELERY_ADMIN and apps.is_installed("django_celery_beat"):
        from .admin_beat import install

        install(admin.site)


_install_beat_override()
