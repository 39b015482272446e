"""``python -m testcelery.demo --no-serve``: the README's demo, run as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.worker
def test_demo_prints_the_records_a_real_worker_stored(tmp_path: Path) -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FULLDBRESULT_", "DJANGO_CELERY_FULLDBRESULT_"))
    }
    env.update(FULLDBRESULT_VAR=str(tmp_path), PYTHONPATH=str(ROOT), DJANGO_SETTINGS_MODULE="testcelery.settings")
    result = subprocess.run(
        [sys.executable, "-m", "testcelery.demo", "--no-serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Created the superuser 'demo' (password 'demo')." in out
    rows = {
        tuple(re.split(r"\s{2,}", line.strip()))
        for line in out.split("Task records:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    }
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    found = {row[1:] for row in rows if re.fullmatch(uuid, row[0])}
    assert ("testcelery.tasks.add", "SUCCESS", "[2, 3]", "{}", "5") in found
    assert ("testcelery.tasks.fail", "FAILURE", '["disk full"]', "{}", "ValueError('disk full')") in found
    assert ("testcelery.tasks.flaky", "SUCCESS", "[]", '{"fail_times": 1}', "1") in found
    assert ("testcelery.tasks.tsum", "SUCCESS", "[[2, 4]]", "{}", "6") in found
    assert {row[:2] for row in found} >= {("testcelery.tasks.echo", "SUCCESS"), ("testcelery.tasks.add", "SUCCESS")}
    assert len(found) == 7
    stale = out.split("Stale tasks:\n", 1)[1]
    assert re.search(rf"^  \S+ \S+ - {uuid}: testcelery.tasks.add$", stale, re.MULTILINE)
    assert "Admin:" not in out
