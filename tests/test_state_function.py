"""PostgreSQL: the state write through the PL/pgSQL function of migration 0003, and without it."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator

import pytest
from celery import states
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_celery_fulldbresult import upsert
from django_celery_fulldbresult.models import TaskResultMeta
from testcelery.celery import app

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="PostgreSQL's function"),
]

migration = importlib.import_module("django_celery_fulldbresult.migrations.0003_state_function")


@pytest.fixture(autouse=True)
def unprepared(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Django's default connection (CI's prepared run turns psycopg's prepared statements on, which write the
    statement itself, prepared), and a process that has not called the function yet."""
    monkeypatch.delitem(connection.settings_dict["OPTIONS"], "prepare_threshold", raising=False)
    monkeypatch.setattr(upsert, "_STATE_FUNCTION", {})
    connection.close()
    yield
    connection.close()


def write(task_id: str, state: str = states.STARTED) -> list[str]:
    """A state change as the worker writes it; the statements it sent."""
    with CaptureQueriesContext(connection) as queries:
        app.backend.store_result(task_id, None if state == states.STARTED else 42, state)
    return [query["sql"] for query in queries.captured_queries]


def called(sql: list[str]) -> bool:
    assert len(sql) == 1, sql
    return sql[0].startswith(f"SELECT {upsert.STATE_FUNCTION}(")


def test_the_migration_creates_the_function_the_code_would_write() -> None:
    """A change to the state write needs a new function in a new migration: this fails until it has one."""
    assert migration.CREATE == upsert.state_function_sql(connection)
    assert migration.SIGNATURE.startswith(upsert.STATE_FUNCTION + "(")


def test_state_changes_call_the_function_in_one_round_trip() -> None:
    assert called(write("fn-1"))
    assert called(write("fn-1", states.SUCCESS))
    record = TaskResultMeta.objects.get(task_id="fn-1")
    assert (record.status, record.result) == (states.SUCCESS, 42)
    assert record.date_started is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regprocedure(%s) IS NOT NULL", [migration.SIGNATURE])
        assert cursor.fetchone()[0]


@pytest.fixture
def without_function() -> Iterator[None]:
    """The database as code deployed before ``migrate`` finds it."""
    with connection.cursor() as cursor:
        cursor.execute(migration.DROP)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(migration.CREATE)


def test_without_the_function_state_changes_are_written_and_it_is_used_once_migrated(
    without_function: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level(logging.WARNING, logger="django_celery_fulldbresult.upsert"):
        sql = write("fn-missing")
    # Tried, refused, looked for, then the statement itself: once, not at each write.
    assert len(sql) == 3 and sql[0].startswith(f"SELECT {upsert.STATE_FUNCTION}(")
    assert "to_regprocedure" in sql[1]
    assert sql[2].startswith(f'INSERT INTO "{TaskResultMeta._meta.db_table}"')
    assert "manage.py migrate django_celery_fulldbresult" in caplog.text
    assert not called(write("fn-missing", states.SUCCESS)), "not tried again at each write"
    assert TaskResultMeta.objects.get(task_id="fn-missing").status == states.SUCCESS

    # After STATE_FUNCTION_RECHECK_SECONDS, the process looks in the catalog (never a blind call again)...
    expired = dict.fromkeys(upsert._STATE_FUNCTION, 0.0)
    monkeypatch.setattr(upsert, "_STATE_FUNCTION", expired)
    sql = write("fn-still-missing")
    assert len(sql) == 2 and "to_regprocedure" in sql[0] and sql[1].startswith("INSERT")
    assert upsert._STATE_FUNCTION[next(iter(expired))] > 0.0, "missing for another while"

    # ... and uses it once migrated.
    with connection.cursor() as cursor:
        cursor.execute(migration.CREATE)
    monkeypatch.setattr(upsert, "_STATE_FUNCTION", dict.fromkeys(upsert._STATE_FUNCTION, 0.0))
    sql = write("fn-migrated")
    assert len(sql) == 2 and "to_regprocedure" in sql[0] and called(sql[1:])
    assert called(write("fn-migrated", states.SUCCESS))


def test_inside_a_transaction_the_function_is_not_tried_before_it_has_answered(without_function: None) -> None:
    """A refused call would abort the caller's transaction: there the statement is written out until it has."""
    with transaction.atomic():
        sql = write("fn-atomic")
        assert len(sql) == 1 and not called(sql)
        assert TaskResultMeta.objects.filter(task_id="fn-atomic").exists(), "the transaction goes on"
    assert TaskResultMeta.objects.get(task_id="fn-atomic").status == states.STARTED

    # Autocommit turned off by hand (no atomic block) is a transaction too.
    transaction.set_autocommit(False)
    try:
        sql = write("fn-no-autocommit")
        assert len(sql) == 1 and not called(sql)
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    assert TaskResultMeta.objects.get(task_id="fn-no-autocommit").status == states.STARTED
    assert upsert._STATE_FUNCTION == {}, "nothing learnt: it was never tried"


@pytest.mark.parametrize("atomic", [False, True], ids=["autocommit", "atomic"])
def test_values_of_another_type_are_converted_as_the_statement_converts_them(atomic: bool) -> None:
    """An integer id in a text column (ids come from the message as they were sent)."""
    assert called(write("fn-warm"))
    row = {"task_id": "fn-int-ids", "status": states.STARTED, "root_id": 123, "group_id": 7, "priority": 5}
    row["date_done"] = timezone.now()
    with transaction.atomic() if atomic else contextlib.nullcontext(), CaptureQueriesContext(connection) as queries:
        upsert.store_state(connection, row)
    assert called([q["sql"] for q in queries.captured_queries])
    record = TaskResultMeta.objects.get(task_id="fn-int-ids")
    assert (record.root_id, record.group_id, record.priority) == ("123", "7", 5)


def test_a_database_user_not_allowed_to_call_it_writes_the_statement(caplog: pytest.LogCaptureFixture) -> None:
    """EXECUTE revoked from PUBLIC (an app user apart from the migrating one): a warning, no lost write."""
    table = TaskResultMeta._meta.db_table
    role = "fdr_noexec_" + str(connection.settings_dict["NAME"]).replace("-", "_")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP ROLE IF EXISTS {role}")
        cursor.execute(f"CREATE ROLE {role}")
        cursor.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO {role}")
        cursor.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
        cursor.execute(f"REVOKE EXECUTE ON FUNCTION {migration.SIGNATURE} FROM PUBLIC")
        cursor.execute(f"SET ROLE {role}")
    try:
        with caplog.at_level(logging.WARNING, logger="django_celery_fulldbresult.upsert"):
            sql = write("fn-denied")
        assert called(sql[:1]) and sql[-1].startswith("INSERT")
        assert "GRANT EXECUTE" in caplog.text
        assert not called(write("fn-denied", states.SUCCESS))
        assert TaskResultMeta.objects.get(task_id="fn-denied").status == states.SUCCESS
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")
            cursor.execute(f"GRANT EXECUTE ON FUNCTION {migration.SIGNATURE} TO PUBLIC")
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")


def test_once_it_has_answered_the_function_is_called_inside_transactions_too() -> None:
    assert called(write("fn-before"))
    with transaction.atomic():
        assert called(write("fn-in-atomic"))
    assert TaskResultMeta.objects.get(task_id="fn-in-atomic").status == states.STARTED


def test_other_errors_are_not_taken_for_a_missing_function() -> None:
    from django.db import DataError

    with pytest.raises(DataError):
        app.backend.store_result("x" * 300, 1, states.SUCCESS)  # task_id is varchar(255)
    assert upsert._STATE_FUNCTION == {}
    assert called(write("fn-after-error"))


def test_migrating_back_drops_the_function_and_forward_creates_it() -> None:
    from django.core.management import call_command

    def exists() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regprocedure(%s) IS NOT NULL", [migration.SIGNATURE])
            return bool(cursor.fetchone()[0])

    call_command("migrate", "django_celery_fulldbresult", "0002", verbosity=0)
    try:
        assert not exists()
    finally:
        call_command("migrate", "django_celery_fulldbresult", verbosity=0)
    assert exists()


def test_a_value_the_function_cannot_take_is_not_taken_for_a_missing_function(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An integer beyond bigint: no function takes it ("does not exist"), the statement itself says why."""
    from django.db import DataError

    assert called(write("fn-first"))
    row = {"task_id": "fn-huge", "status": states.STARTED, "retries": 10**20, "date_done": timezone.now()}
    with caplog.at_level(logging.WARNING, logger="django_celery_fulldbresult.upsert"), pytest.raises(DataError):
        upsert.store_state(connection, row)
    assert "is missing" not in caplog.text
    assert upsert._STATE_FUNCTION == {upsert._state_function_key(connection): True}
    assert called(write("fn-after-huge"))


def test_a_tenant_schema_that_lacks_the_function_gets_the_statement_inside_a_transaction() -> None:
    """django-tenants moves a connection from schema to schema (``search_path``) and names it in
    ``connection.schema_name``; ``migrate_schemas`` migrates the tenants one by one, so during a deploy one
    tenant's schema has the function and the next not yet. A state write inside a transaction there (a task's
    ``update_state()`` in ``atomic()``) must not call it on the strength of another schema's answer: a missing
    function would abort the caller's transaction."""
    table = connection.ops.quote_name(TaskResultMeta._meta.db_table)
    assert called(write("fn-public"))  # answered, in the schema the connection started in
    with connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA fdr_tenant_b")
        cursor.execute(f"CREATE TABLE fdr_tenant_b.{table} (LIKE public.{table} INCLUDING ALL)")
    try:
        connection.schema_name = "fdr_tenant_b"  # what django-tenants' set_schema() does
        with connection.cursor() as cursor:
            cursor.execute("SET search_path TO fdr_tenant_b")
        with transaction.atomic():
            assert not called(write("fn-tenant-b", "PROGRESS"))
            assert TaskResultMeta.objects.get(task_id="fn-tenant-b").status == "PROGRESS"
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM fdr_tenant_b.{table} WHERE task_id = 'fn-tenant-b'")
            assert cursor.fetchone()[0] == 1, "written in the tenant's own table"
    finally:
        del connection.schema_name
        with connection.cursor() as cursor:
            cursor.execute("RESET search_path")
            cursor.execute("DROP SCHEMA fdr_tenant_b CASCADE")
    assert not TaskResultMeta.objects.filter(task_id="fn-tenant-b").exists()
