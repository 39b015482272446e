"""``{% fdr_result_list cl %}``: the task records' list, as ``{% result_list cl %}`` writes it, faster.

The headers are the admin's (``result_headers``); the rows are written by
:meth:`TaskResultChangeList.rendered_rows <django_celery_fulldbresult.admin.TaskResultChangeList.rendered_rows>`
when it knows the columns, else by the admin. Both go through the admin's
``change_list_results.html``, so a project's override of it still applies.
"""

from __future__ import annotations

import inspect
from typing import Any

from django import template
from django.contrib.admin.templatetags import admin_list
from django.contrib.admin.templatetags.base import InclusionAdminNode

register = template.Library()


def result_list(cl: Any) -> dict[str, Any]:
    rendered = getattr(cl, "rendered_rows", None)
    rows = rendered() if rendered is not None else None
    if rows is None:
        return admin_list.result_list(cl)
    headers = list(admin_list.result_headers(cl))
    return {
        "cl": cl,
        "result_hidden_fields": [],
        "result_headers": headers,
        "num_sorted_fields": sum(1 for header in headers if header["sortable"] and header["sorted"]),
        # One item a row: the template writes a row's items one after the other.
        "results": [admin_list.ResultList(None, [row]) for row in rows],
    }


#: Django 6.1's InclusionAdminNode takes the tag's name first; 5.2 and 6.0 do not.
NODE_TAKES_NAME = "name" in inspect.signature(InclusionAdminNode).parameters


@register.tag(name="fdr_result_list")
def result_list_tag(parser: Any, token: Any) -> InclusionAdminNode:
    options: dict[str, Any] = {"func": result_list, "template_name": "change_list_results.html", "takes_context": False}
    if NODE_TAKES_NAME:
        return InclusionAdminNode("fdr_result_list", parser, token, **options)
    return InclusionAdminNode(parser, token, **options)
