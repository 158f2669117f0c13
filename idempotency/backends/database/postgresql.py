"""PostgreSQL: a duplicate learns from the key's advisory lock, taken in the
claim statement itself, that the key is in flight."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta

from django.db import DatabaseError, OperationalError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from .base import Attempt, Dialect, Result
from .statements import COLUMNS, Params, Record, Statements


class PostgreSQLDialect(Dialect):
    def alive(self, connection: BaseDatabaseWrapper) -> bool:
        # Not is_usable(): its SELECT 1 also fails on a live session whose
        # transaction an earlier error aborted (an outer ATOMIC_REQUESTS
        # block), which is the application's 500, not an outage. psycopg 3
        # marks a lost connection closed and broken; psycopg 2 closed (2).
        raw = connection.connection
        return not raw.closed and not getattr(raw, "broken", False)

    # libpq's PQTRANS_INERROR, as both psycopg 3 and psycopg 2 (2.8+) report
    # it in connection.info.transaction_status: read without a round trip.
    IN_ERROR = 3

    def aborted(self, connection: BaseDatabaseWrapper) -> bool:
        return bool(connection.connection.info.transaction_status == self.IN_ERROR)

    def claim_sql(
        self, sql: Statements, column: Callable[[str], str], take_over: bool = False
    ) -> str:
        # A plain INSERT … SELECT, guarded by the key's advisory lock taken in
        # its WHERE: it returns the claimed row, or nothing if the lock or a
        # record was in the way, and then ``probe`` tells which. A first
        # execution, the common request, sends this statement only. (One
        # statement that also read the record in the way, with common table
        # expressions, cost a first execution 0.25 ms more in parsing and
        # planning than this one does: more than the second statement costs
        # a replay.) Inserting first matters at SERIALIZABLE: a read of the
        # unique index takes a predicate lock on its page, where concurrent
        # claims of other keys insert theirs, and would fail them at commit;
        # ON CONFLICT finds the record in the way without one. (A claim that
        # meets a record burns an id.)
        #
        # ``take_over``: at SERIALIZABLE the takeover of an expired record
        # must not read it first either (the update rewrites index entries
        # that the read locked, and concurrent takeovers of other keys would
        # fail at commit): ON CONFLICT DO UPDATE takes it over in the same
        # statement. It locks the record in the way even when it has not
        # expired, so a replay then writes a row lock (and waits for its
        # commit to reach the disk): other levels read first, and take over
        # with a statement of its own.
        #
        # The statement also sets idle_in_transaction_session_timeout to
        # LOCK_TIMEOUT for this transaction only: a worker that hangs or
        # vanishes without closing its connection loses its claim (and the
        # key's lock) once its lease is over.
        columns = [column(name) for name in COLUMNS]
        if take_over:
            action = (
                f"UPDATE SET ({', '.join(columns)}) = "
                f"({', '.join(f'EXCLUDED.{name}' for name in columns)})"
                f" WHERE {sql.table}.{column('expires_at')} < %(now)s"
            )
        else:
            action = "NOTHING"
        return (
            f"INSERT INTO {sql.table} ({', '.join(columns)})"
            f" SELECT {', '.join(f'%({name})s' for name in COLUMNS)}"
            " WHERE pg_try_advisory_xact_lock(%(lock)s)"
            " AND set_config('idle_in_transaction_session_timeout', %(idle)s, true) IS NOT NULL"
            f" ON CONFLICT ({column('scope')}, {column('key')}) DO {action}"
            f" RETURNING {column('id')}, ctid::text"
        )

    def probe_sql(self, sql: Statements) -> str:
        # After a claim that inserted nothing: the record in the way, and
        # whether this transaction has the key's lock. It has it if the
        # claim had it (taking it again changes nothing), and it may get it
        # now if the transaction that held it has just ended: then this one
        # may take an expired record over, so it sets the timeout too, as
        # the claim does. No record, no lock taken: the answer is a 409.
        return sql.select.replace(
            "SELECT ",
            "SELECT (pg_try_advisory_xact_lock(%(lock)s) AND"
            " set_config('idle_in_transaction_session_timeout', %(idle)s, true) IS NOT NULL), ",
            1,
        )

    def complete_row_sql(self, sql: Statements, column: Callable[[str], str]) -> str:
        by_id = f" WHERE {column('id')} = %(id)s"
        return sql.complete.replace(
            by_id, f" WHERE ctid = %(row)s::tid AND {column('id')} = %(id)s"
        )

    def take_over_sql(self, sql: Statements) -> str:
        # The row's new address, to store the response by (see the store's keep()).
        return f"{sql.update} RETURNING ctid::text"

    def delete_batch_sql(self, table: str, pk: str, expires_at: str) -> str:
        # ARRAY() runs the batch's SELECT once, before the DELETE looks up
        # each id by primary key. With IN, the planner may hash-join the
        # batch against a scan of the whole table, once per batch.
        return f"DELETE FROM {table} WHERE {pk} = ANY(ARRAY({{select}})) AND {expires_at} < %s"

    # "could not serialize access" (a row written, by ON CONFLICT or UPDATE,
    # by a transaction that committed after this one's snapshot was taken; or
    # read/write dependencies at SERIALIZABLE), and "deadlock detected".
    CONFLICTS = frozenset({"40001", "40P01"})

    def conflict(self, exc: DatabaseError) -> bool:
        return sqlstate(exc) in self.CONFLICTS

    # "cannot execute ... in a read-only transaction": a hot standby, or
    # default_transaction_read_only.
    READ_ONLY = "25006"

    def read_only(self, exc: DatabaseError) -> bool:
        return sqlstate(exc) == self.READ_ONLY

    def standby(self, connection: BaseDatabaseWrapper) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_is_in_recovery()")
            return bool(cursor.fetchone()[0])

    # lock_timeout ran out.
    LOCK_NOT_AVAILABLE = "55P03"

    def wait_insert(
        self,
        connection: BaseDatabaseWrapper,
        sql: Statements,
        params: Params,
        lease: timedelta,
        timeout: timedelta,
    ) -> Attempt:
        """Wait for the key's advisory lock, which the request in flight
        holds until its transaction ends, then claim as usual: the claim
        statement's fresh snapshot (READ COMMITTED) sees what it committed.
        A blocking lock with a lock_timeout, for this statement only: no
        polling. The lock, once had, is kept until this transaction ends, so
        waiters get the key one after another."""
        from django.db.backends.postgresql.psycopg_any import IsolationLevel

        if connection.isolation_level in (  # type: ignore[attr-defined]
            IsolationLevel.REPEATABLE_READ,
            IsolationLevel.SERIALIZABLE,
        ):
            # The transaction's snapshot was taken by its first statement, the
            # claim that found the key in flight: it could never see what the
            # first request commits. Waiting would hold the worker for a 409.
            return Attempt(Result.BUSY)
        lock = advisory_lock_id(params["scope"], params["key"])
        timeout_ms = min(max(1, int(timeout / timedelta(milliseconds=1))), 2**31 - 1)
        with connection.cursor() as cursor:
            # The materialized CTE reads the old value before it is set.
            cursor.execute(
                "WITH old AS MATERIALIZED (SELECT current_setting('lock_timeout') AS value)"
                " SELECT old.value, set_config('lock_timeout', %s, true) FROM old",
                [f"{timeout_ms}ms"],
            )
            previous = cursor.fetchone()[0]
            try:
                # A savepoint: the timeout fails this statement, not the claim's transaction.
                with transaction.atomic(using=connection.alias):
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock])
            except OperationalError as exc:
                if sqlstate(exc) != self.LOCK_NOT_AVAILABLE:
                    raise
                return Attempt(Result.BUSY)
            finally:
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [previous])
        return self.insert(connection, sql, params, lease)

    def insert(
        self, connection: BaseDatabaseWrapper, sql: Statements, params: Params, lease: timedelta
    ) -> Attempt:
        from django.db.backends.postgresql.psycopg_any import IsolationLevel

        # The setting is an int4 of milliseconds; the checks keep LOCK_TIMEOUT
        # within it, and the clamp keeps a skipped check from failing requests.
        idle_ms = min(max(1, int(lease / timedelta(milliseconds=1))), 2**31 - 1)
        params = {
            **params,
            "lock": advisory_lock_id(params["scope"], params["key"]),
            "idle": str(idle_ms),
        }
        # The level Django asks for (OPTIONS["isolation_level"]), as its
        # backend read it; set it even where it is the server's default.
        level = connection.isolation_level  # type: ignore[attr-defined]
        statement = sql.claim_and_take_over if level == IsolationLevel.SERIALIZABLE else sql.claim
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            claimed = cursor.fetchone()
            if claimed is not None:
                return Attempt(Result.CLAIMED, claimed[0], row=claimed[1])
            cursor.execute(sql.probe, params)
            found = cursor.fetchone()
        if found is None:
            # Another transaction holds the key's lock and has not committed
            # its record, or the purge deleted an expired one since the
            # claim ran (the store answers a 409).
            return Attempt(Result.SHARED)
        # The committed record: one that has not expired, or (without the
        # lock) one that another request may be renewing right now.
        acquired, *existing = found
        return Attempt(
            Result.EXISTS if acquired else Result.SHARED, record=Record.from_row(tuple(existing))
        )

    def take_over(
        self, connection: BaseDatabaseWrapper, sql: Statements, params: Params
    ) -> Attempt:
        with connection.cursor() as cursor:
            cursor.execute(sql.take_over, params)
            row = cursor.fetchone()
        if row is None:
            return Attempt(Result.GONE, params["id"])
        return Attempt(Result.CLAIMED, params["id"], row=row[0])


def sqlstate(exc: DatabaseError) -> str | None:
    cause = exc.__cause__  # psycopg 3 names the SQLSTATE sqlstate, psycopg2 pgcode
    return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)


def advisory_lock_id(scope: str, key: str) -> int:
    """A signed 64-bit lock id for (scope, key). A collision between two keys
    only makes one of them answer 409 for a moment; it can never run a handler
    twice, because the unique constraint still guards the row."""
    digest = hashlib.sha256(f"{scope}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


POSTGRESQL = PostgreSQLDialect()
