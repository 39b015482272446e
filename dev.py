#!/usr/bin/env python3
"""The project's two commands, for a fresh clone with nothing but Python 3.11+.

    python dev.py demo      # the example project: a worker, tasks, their records, the admin
    python dev.py test      # the test suite
    python dev.py lint      # ruff, mypy and the packaging test (CI runs them too)

Each makes (once) a virtual environment in ``.venv`` with what it needs.
``test`` runs the suite once per database and broker pair: SQLite with the
embedded broker always, and PostgreSQL + Redis, MariaDB + RabbitMQ where those
servers run on this machine. With ``CI=true`` every pair is required, a
missing server fails the run, and the suite also runs at both ends of the
supported range: Python 3.11 + Django 5.2 + Celery 5.5, and Python 3.13 +
Django 6.1 + Celery 5.7.

Arguments after ``--`` go to pytest: ``python dev.py test -- -k stale -x``.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import venv
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

POSTGRES = "postgresql://127.0.0.1:5432"
MARIADB = "mysql://127.0.0.1:3306"
REDIS = "redis://127.0.0.1:6379/5"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"

#: name -> (database, broker URL, servers it needs)
TARGETS = {
    "sqlite": ("sqlite", "fdrfs://", ()),
    "postgres-redis": ("postgres", REDIS, (POSTGRES, REDIS)),
    "mariadb-rabbitmq": ("mysql", RABBITMQ, (MARIADB, RABBITMQ)),
}

#: The ends of the supported range CI runs: (venv, python, requirements, pins, targets).
MATRIX = [
    (
        "lowest",
        "3.11",
        "requirements/ci.txt",
        ["Django==5.2.*", "celery==5.5.*", "django-celery-results==2.6.0", "django-celery-beat==2.9.0"],
        ["sqlite", "postgres-redis"],
    ),
    (
        "newest",
        "3.13",
        "requirements/ci-nobeat.txt",
        ["Django==6.1.*", "celery==5.7.*", "django-celery-results==2.6.*"],
        ["sqlite", "postgres-redis", "mariadb-rabbitmq"],
    ),
]


#: CI runs the slow tests (1,000- and 10,000-task runs, the benchmarks' smoke
#: runs) in one run of the matrix only; the others deselect them, so that CI
#: stays well under 30 minutes on two cores.
HEAVY_RUN = ("newest", "postgres-redis")
#: The run whose PostgreSQL connections prepare their statements (Django's
#: ``OPTIONS["prepare_threshold"]``); the other PostgreSQL run keeps Django's default.
PREPARED_RUN = ("newest", "postgres-redis")
LIGHT_ARGS = ["-m", "not load and not packaging", "--ignore=tests/test_bench_smoke.py"]
#: The packaging tests build and install wheels: ``lint`` runs them, once.
HEAVY_ARGS = ["-m", "not packaging"]


def say(message: str) -> None:
    print(f"[dev.py] {message}", flush=True)


def reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=1).close()
    except OSError:
        return False
    return True


def find_python(version: str) -> str | None:
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    # pyenv's own builds first: its shim on PATH fails for a version that is
    # installed but not selected.
    candidates = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    if candidates:
        return candidates[-1]
    found = shutil.which(f"python{version}")
    return found if found and "/shims/" not in found else None


def ensure_venv(name: str, python: str, requirements: str, pins: list[str] = ()) -> Path:  # type: ignore[assignment]
    """A virtual environment with the requirements, re-installed when they change."""
    path = ROOT / name
    bin_python = path / "bin" / "python"
    stamp_text = "\n".join(
        [python, *pins]
        + [
            (ROOT / f).read_text()
            for f in ("pyproject.toml", "requirements/test.txt", "requirements/tools.txt", requirements)
        ]
    )
    stamp = hashlib.sha256(stamp_text.encode()).hexdigest()
    stamp_file = path / ".dev-stamp"
    if bin_python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return bin_python
    say(f"installing {name} ({python}) ...")
    if python == sys.executable:
        venv.create(path, with_pip=True, clear=True)
    else:
        subprocess.run([python, "-m", "venv", "--clear", str(path)], check=True)
    pip = [str(bin_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(ROOT / requirements), *pins], check=True, cwd=ROOT)
    stamp_file.write_text(stamp)
    return bin_python


def run_pytest(python: Path, target: str, pytest_args: list[str], label: str) -> int:
    database, broker, _ = TARGETS[target]
    env = dict(os.environ, FULLDBRESULT_DB=database, FULLDBRESULT_BROKER=broker, PYTHONPATH=str(ROOT))
    env["FULLDBRESULT_VAR"] = str(ROOT / "var" / f"{label}-{target}")
    shutil.rmtree(env["FULLDBRESULT_VAR"], ignore_errors=True)
    if database != "sqlite":
        # One test database per run, so two runs on one server never collide.
        env["FULLDBRESULT_DB_NAME"] = f"fulldbresult_{label}".replace("-", "_")
    if (label, target) == PREPARED_RUN:
        env["FULLDBRESULT_DB_PREPARE"] = "5"
    say(f"pytest: {label}, {target} ({database} + {broker})")
    durations = ["--durations=15"] if IN_CI else []
    code = subprocess.run([str(python), "-m", "pytest", *durations, *pytest_args], cwd=ROOT, env=env).returncode
    if code == 5:
        say("pytest collected no tests: that is a failure here")
    return code


def available_targets(names: list[str]) -> list[str]:
    chosen = []
    for name in names:
        missing = [url for url in TARGETS[name][2] if not reachable(url)]
        if missing and not IN_CI:
            say(f"skipping {name}: not running here: {', '.join(missing)}")
            continue
        chosen.append(name)
    return chosen


def lint(args: argparse.Namespace) -> int:
    """ruff (lint and format), mypy and the packaging test, in a virtual environment of their own."""
    python = ensure_venv(".venv-lint", sys.executable, "requirements/lint.txt")
    env = dict(os.environ, PYTHONPATH=str(ROOT), FULLDBRESULT_VAR=str(ROOT / "var" / "lint"))
    checks = {
        "ruff check": ["ruff", "check"],
        "ruff format": ["ruff", "format", "--check"],
        "mypy": ["mypy"],
        # The sdist, the wheel, twine check, the wheel alone in a new venv (needs build and twine: here).
        "packaging": ["pytest", "-m", "packaging", "tests/test_packaging.py"],
    }
    failed = []
    for name, command in checks.items():
        if subprocess.run([str(python), "-m", *command], cwd=ROOT, env=env).returncode:
            failed.append(name)
    say(("lint FAILED: " + ", ".join(failed)) if failed else "lint passed")
    return 1 if failed else 0


def test(args: argparse.Namespace) -> int:
    failures = []
    if IN_CI and lint(args):
        failures.append("lint")
    if IN_CI:
        runs = []
        for label, version, requirements, pins, targets in MATRIX:
            python = find_python(version)
            if python is None:
                say(f"Python {version} is not installed: required in CI")
                return 1
            runs.append((label, ensure_venv(f".venv-{label}", python, requirements, pins), targets))
    else:
        requirements = "requirements/ci.txt" if args.with_mysql else "requirements/test.txt"
        runs = [("local", ensure_venv(".venv", sys.executable, requirements), list(TARGETS))]
    for label, python, targets in runs:
        if not IN_CI and not args.with_mysql and "mariadb-rabbitmq" in targets:
            code = subprocess.run([str(python), "-c", "import MySQLdb"], capture_output=True).returncode
            if code:
                say("skipping mariadb-rabbitmq: the MySQL driver is not installed (python dev.py test --with-mysql)")
                targets = [t for t in targets if t != "mariadb-rabbitmq"]
        for target in args.target or available_targets(targets):
            extra = []
            if IN_CI and not args.pytest_args:
                extra = HEAVY_ARGS if (label, target) == HEAVY_RUN else LIGHT_ARGS
            if run_pytest(python, target, [*extra, *args.pytest_args], label):
                failures.append(f"{label}/{target}")
    if failures:
        say("FAILED: " + ", ".join(failures))
        return 1
    say("all test runs passed")
    return 0


def demo(args: argparse.Namespace) -> int:
    python = ensure_venv(".venv", sys.executable, "requirements/test.txt")
    command = [str(python), "-m", "testcelery.demo"] + ([] if args.serve else ["--no-serve"])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        return subprocess.run(command, cwd=ROOT, env=env).returncode
    except KeyboardInterrupt:
        return 0


def main() -> int:
    if sys.version_info < (3, 11):
        sys.exit("django-celery-fulldbresult needs Python 3.11 or newer.")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="run the example project")
    demo_parser.add_argument("--no-serve", dest="serve", action="store_false", help="do not serve the admin at the end")
    commands.add_parser("lint", help="run ruff, mypy and the packaging test (CI runs them before the tests)")
    test_parser = commands.add_parser("test", help="run the test suite")
    test_parser.add_argument(
        "--target", action="append", choices=sorted(TARGETS), help="only this database/broker pair"
    )
    test_parser.add_argument(
        "--with-mysql", action="store_true", help="install the MySQL driver (needs libmariadb-dev)"
    )
    argv = sys.argv[1:]
    pytest_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, pytest_args = argv[:at], argv[at + 1 :]
    args = parser.parse_args(argv)
    args.pytest_args = pytest_args
    return {"demo": demo, "test": test, "lint": lint}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
