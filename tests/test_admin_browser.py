"""The admin in a real browser (Debian's chromium through Playwright), against a real worker.

Saves the changelist's screenshot the README shows: docs/admin_screenshot.png.
Skipped where chromium or Playwright is missing, except in CI, where that fails.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from celery import states
from django.contrib.auth.models import User
from django.db import connections

from django_celery_fulldbresult.models import TaskResultMeta
from tests.conftest import IN_CI, ROOT, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
CHANGELIST = "/admin/django_celery_fulldbresult/taskresultmeta/"
SCREENSHOT = ROOT / "docs" / "admin_screenshot.png"


def require_browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = []
    if sync_playwright is None:
        missing.append("Playwright (pip install playwright)")
    if not shutil.which(CHROMIUM):
        missing.append(f"chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        message = "missing: " + ", ".join(missing)
        if IN_CI:
            pytest.fail(message + " (required in CI)")
        pytest.skip(message)
    return sync_playwright


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    sync_playwright = require_browser()
    # Playwright's sync API runs an event loop in this thread; the test's own
    # ORM calls are synchronous all the same (Django's documented escape hatch).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 600})
            # The navigation sidebar closed: the screenshot shows the list.
            context.add_init_script("localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            # With Playwright's loop running, Django keeps this thread's
            # connections per asyncio context: close them while it still runs,
            # or the test database cannot be dropped at the end of the session.
            connections.close_all()
            browser.close()


def run_tasks() -> dict[str, str]:
    """A few real tasks, run by the worker: what an operator finds in the admin."""
    from testcelery import tasks

    sent = {
        "add": tasks.add.delay(2, 3).id,
        "echo": tasks.echo.delay("hello", when="2015-05-27").id,
        "tsum": tasks.tsum.delay([1, 2, 3]).id,
        "fail": tasks.fail.delay("disk full").id,
    }
    finished = (states.SUCCESS, states.FAILURE)
    wait_for(lambda: TaskResultMeta.objects.filter(task_id__in=sent.values(), status__in=finished).count() == len(sent))
    return sent


@pytest.mark.worker
def test_operator_retries_failed_tasks_in_a_browser(start_worker: Any, live_server: Any, page: Any) -> None:
    start_worker()
    User.objects.create_superuser("operator", password="correct horse")
    failed_id = run_tasks()["fail"]

    page.goto(live_server.url + "/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "correct horse")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
    page.goto(live_server.url + CHANGELIST)
    page.locator("#changelist-filter").get_by_role("link", name="FAILURE", exact=True).click()
    page.wait_for_url("**status=FAILURE**")
    assert page.locator("#result_list tbody tr").count() == 1
    assert failed_id in page.inner_text("#result_list")

    page.check("#action-toggle")
    page.select_option("select[name=action]", "retry_tasks")
    page.click("button[name=index]")
    message = page.inner_text(".messagelist .success")
    assert message.startswith("Sent 1 task again, as: ")
    new_id = message.rsplit(" ", 1)[1]

    retried = wait_for(lambda: TaskResultMeta.objects.filter(task_id=new_id, status=states.FAILURE).first())
    assert retried.retry_of == failed_id and retried.hostname

    page.goto(live_server.url + CHANGELIST)
    assert new_id in page.inner_text("#result_list")
    with page.expect_navigation():  # the task page loaded, not only requested
        page.click(f"text={new_id}")
    assert "disk full" in page.inner_text("#content-main")
    assert failed_id in page.inner_text("#content-main")

    # The screenshot: every task, the failed ones selected for "Retry Tasks".
    page.goto(live_server.url + CHANGELIST)
    for row in page.locator("#result_list tbody tr", has_text="FAILURE").all():
        row.locator("input.action-select").check()
    page.select_option("select[name=action]", "retry_tasks")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
