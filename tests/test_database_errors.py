"""When the database gets in the way: lost connections, unexpected errors,
records purged in the middle of a claim. Nothing may run twice, and nothing
may be left half-written."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import DatabaseError, connection
from django.utils import timezone

from idempotency.backends.database import UnsupportedDatabase, dialect_for
from idempotency.backends.database.postgresql import advisory_lock_id
from idempotency.models import IdempotencyKey
from tests.concurrency import in_another_thread, kill_session
from tests.helpers import executions, in_flight_record, new_key, send
from tests.testapp.models import Execution
from tests.testapp.views import READ_ONLY_SESSION, backend_id


def test_an_unsupported_database_is_refused():
    with pytest.raises(UnsupportedDatabase) as excinfo:
        dialect_for(SimpleNamespace(vendor="oracle"))
    assert str(excinfo.value) == (
        "django-idempotency supports PostgreSQL, MariaDB and SQLite, not oracle."
    )


def test_mysql_is_refused():
    # MySQL cannot give one statement a zero lock wait; MariaDB can.
    with pytest.raises(UnsupportedDatabase) as excinfo:
        dialect_for(SimpleNamespace(vendor="mysql", mysql_is_mariadb=False))
    assert str(excinfo.value) == (
        "django-idempotency supports MariaDB but not MySQL: MySQL cannot shorten one "
        "statement's lock wait, so a duplicate request would wait instead of getting its 409."
    )


def assert_database_unavailable(response) -> None:
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response["Retry-After"] == "1"
    assert json.loads(response.content) == {
        "type": "tag:django-idempotency,2026:database-unavailable",
        "title": "Database unavailable",
        "status": 503,
        "detail": "The database could not be reached, or took no writes, while this request was "
        "processed. "
        "Its effects and its stored response commit together or not at all, so retry with "
        "the same Idempotency-Key: the request then runs once, or its stored response is "
        "replayed.",
    }


# The statement before which the session ends: the claim, the handler's own
# write, and the stored response.
PHASES = {
    "claim": lambda sql: IdempotencyKey._meta.db_table in sql and not sql.startswith("UPDATE"),
    "handler": lambda sql: Execution._meta.db_table in sql,
    "store": lambda sql: IdempotencyKey._meta.db_table in sql and sql.startswith("UPDATE"),
}


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("phase", PHASES)
def test_a_connection_lost_mid_request_answers_503_and_runs_nothing(user, phase):
    session = backend_id()
    killed = []

    def kill_before(execute, sql, params, many, context):
        if not killed and PHASES[phase](sql):
            killed.append(sql)
            in_another_thread(lambda: kill_session(session))
        return execute(sql, params, many, context)

    key = new_key()
    with connection.execute_wrapper(kill_before):
        response = send(user, key)
    assert killed
    assert_database_unavailable(response)
    connection.close()  # as Django does with an unusable connection between requests
    assert not Execution.objects.exists()
    assert not IdempotencyKey.objects.exists()
    retry = send(user, key)  # the key was never taken: it runs, once
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert Execution.objects.count() == 1


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_a_connection_lost_at_commit_answers_503_and_runs_nothing(user, monkeypatch):
    session = backend_id()
    commit = connection._commit
    killed = []

    def kill_then_commit():
        if not killed:
            killed.append(True)
            in_another_thread(lambda: kill_session(session))
        return commit()

    monkeypatch.setattr(connection, "_commit", kill_then_commit)
    key = new_key()
    response = send(user, key)
    monkeypatch.undo()
    assert killed
    assert_database_unavailable(response)
    connection.close()
    assert not Execution.objects.exists()
    assert not IdempotencyKey.objects.exists()
    assert send(user, key).status_code == 201
    assert Execution.objects.count() == 1


@pytest.mark.vendor("postgresql")
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("atomic_requests")
def test_an_error_on_a_live_session_stays_a_500(user):
    # Something before the package failed a statement in the request's
    # transaction and carried on: PostgreSQL has aborted that transaction, so
    # the package's first statement fails on a session that is alive. That is
    # the application's error, a 500; a 503 would have the client retry in vain.
    aborted = []

    def abort_before_the_savepoint(execute, sql, params, many, context):
        if not aborted and sql.startswith("SAVEPOINT"):
            aborted.append(sql)
            with contextlib.suppress(DatabaseError):
                execute("SELECT 1 / 0", None, False, context)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(abort_before_the_savepoint):
        response = send(user, new_key())
    assert aborted
    assert response.status_code == 500
    assert response["Content-Type"] != "application/problem+json"
    assert not Execution.objects.exists()


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_an_unreachable_database_answers_503(user):
    key = new_key()
    connection.close()
    # A worker that never reached the server: even telling MariaDB from MySQL
    # would need it.
    for known in ("mysql_server_data", "mysql_is_mariadb"):
        connection.__dict__.pop(known, None)
    port = connection.settings_dict["PORT"]
    connection.settings_dict["PORT"] = "1"  # nothing listens there
    try:
        response = send(user, key)
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    assert_database_unavailable(response)
    assert send(user, key).status_code == 201
    assert executions(key) == 1


@pytest.mark.vendor("sqlite")
@pytest.mark.django_db
def test_an_unexpected_sqlite_error_propagates(user):
    with connection.cursor() as cursor:  # rolled back with the test's transaction
        cursor.execute(f"DROP TABLE {IdempotencyKey._meta.db_table}")
    response = send(user, "k", data={})
    assert response.status_code == 500
    assert not Execution.objects.exists()


@pytest.mark.vendor("postgresql")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "after",
    [
        "INSERT",  # before the probe reads the record: it finds none
        "SELECT (pg_try_advisory_xact_lock",  # after: the takeover finds none
    ],
)
def test_a_record_purged_in_the_middle_of_a_claim_answers_409(user, after):
    # On PostgreSQL the claim holds the key's advisory lock but no row lock,
    # so the purge can delete an expired record between the claim's insert,
    # the probe that reads it, and the takeover.
    key = new_key()
    send(user, key)
    IdempotencyKey.objects.filter(key=key).update(expires_at=timezone.now() - timedelta(1))
    purged = []

    def purge_midway(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not purged and sql.startswith(after) and "pg_try_advisory_xact_lock" in sql:
            in_another_thread(lambda: IdempotencyKey.objects.filter(key=key).delete())
            purged.append(sql)
        return result

    with connection.execute_wrapper(purge_midway):
        response = send(user, key)
    assert purged
    assert response.status_code == 409
    assert executions(key) == 1
    retry = send(user, key)
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert executions(key) == 2


@pytest.mark.vendor("postgresql")
@pytest.mark.django_db(transaction=True)
def test_a_lock_freed_between_the_claim_and_its_probe_still_bounds_the_takeover(user):
    # Another request holds the key's lock while the claim's insert runs, and
    # ends before the probe reads the record: the probe gets the lock, and
    # takes the expired record over. The handler must run under the claim's
    # idle timeout all the same, or a hung worker would hold the key forever.
    key = new_key()
    in_flight_record(user, key, timedelta(minutes=-5))
    lock = advisory_lock_id(f"testapp.user:{user.pk}", key)
    holder = connection.get_new_connection(connection.get_connection_params())
    holder.autocommit = True
    holder.execute("SELECT pg_advisory_lock(%s)", [lock])
    seen = {}

    def release_after_the_insert(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith("INSERT") and "pg_try_advisory_xact_lock" in sql:
            holder.execute("SELECT pg_advisory_unlock(%s)", [lock])
        elif sql.startswith("UPDATE") and "RETURNING ctid" in sql:  # the takeover
            with context["connection"].cursor() as cursor:
                cursor.execute("SHOW idle_in_transaction_session_timeout")
                seen["idle"] = cursor.fetchone()[0]
        return result

    try:
        with connection.execute_wrapper(release_after_the_insert):
            response = send(user, key)
    finally:
        holder.close()
    assert response.status_code == 201
    assert seen == {"idle": "1min"}  # LOCK_TIMEOUT's default
    assert executions(key) == 1


def test_the_key_column_on_an_unsupported_database_keeps_its_defaults(monkeypatch):
    """The checks refuse such a database before ``migrate``; until then, the
    key field's column must still be describable (``makemigrations``)."""
    from django.db import connection

    from idempotency.models import IdempotencyKey

    field = IdempotencyKey._meta.get_field("key")
    monkeypatch.setattr(connection, "vendor", "oracle")
    assert field.db_parameters(connection).get("collation") is None


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_a_database_that_takes_no_writes_answers_503_and_runs_nothing(user, caplog):
    key = new_key()
    with connection.cursor() as cursor:
        cursor.execute(READ_ONLY_SESSION[connection.vendor])
    try:
        # The test client runs the request in this thread, on this session.
        refused = send(user, key)
    finally:
        connection.close()
    assert refused.status_code == 503, refused.content
    assert json.loads(refused.content)["type"].endswith(":database-unavailable")
    assert executions(key) == 0
    assert "Database took no writes" in caplog.text
    # Once the database takes writes again, the retry runs once.
    assert send(user, key).status_code == 201
    assert executions(key) == 1


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_a_handler_refused_by_another_read_only_database_is_its_own_500(user, caplog):
    """Only the claim's refusal means the key table's database takes no
    writes. The handler's, on another alias, says nothing of it: a 503
    would tell the client that retrying is safe, and whatever the handler
    committed elsewhere before would run again."""
    key = new_key()
    response = send(user, key, url="/read-only-elsewhere/")
    assert response.status_code == 500
    assert "Database took no writes" not in caplog.text
    assert executions(key) == 0
