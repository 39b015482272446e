"""Every benchmark runs, at its tiny ``--smoke`` size (nothing is timed here).

The benchmarks need PostgreSQL, Redis (db 9) and, for the store benchmark,
MariaDB; they run in the PostgreSQL + Redis target of ``dev.py test``, once
per CI run, in their own databases (``fdr_bench_smoke``...).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from .conftest import IN_CI, ROOT, require

BENCHMARKS = [
    ("bench_store.py", "--db", "all"),
    ("bench_statements.py", "--db", "all"),
    ("bench_publish.py",),
    ("bench_worker.py",),
    ("bench_scale.py",),
    ("bench_retry.py",),
    ("bench_admin.py",),
]

pytestmark = pytest.mark.skipif(
    os.environ.get("FULLDBRESULT_DB") != "postgres", reason="the benchmarks run in the PostgreSQL + Redis target"
)


@pytest.mark.parametrize("command", BENCHMARKS, ids=[c[0] for c in BENCHMARKS])
def test_the_benchmark_runs(command: tuple[str, ...], tmp_path: object) -> None:
    script = ROOT / "bench" / command[0]
    if not script.exists():
        pytest.skip(f"{command[0]} is not written yet")
    require("postgresql://127.0.0.1:5432", "PostgreSQL")
    require("redis://127.0.0.1:6379/9", "Redis")
    if "all" in command:
        require("mysql://127.0.0.1:3306", "MariaDB")
        if importlib.util.find_spec("MySQLdb") is None:
            # python dev.py test installs it with --with-mysql, and always in CI.
            message = "the MySQL driver is not installed (python dev.py test --with-mysql)"
            if IN_CI:
                pytest.fail(message + " (required in CI)")
            pytest.skip(message)
    env = {**os.environ, "FDR_BENCH_DB_NAME": "fdr_bench_smoke", "FDR_BENCH_VAR": str(tmp_path)}
    # The admin benchmark (written apart) may take a size instead of --smoke.
    size = ["--smoke"] if script.name != "bench_admin.py" or "--smoke" in script.read_text() else ["--rows", "2000"]
    done = subprocess.run(
        [sys.executable, str(script), *command[1:], *size],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{' '.join(command)} --smoke failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
