"""Records in the Django database, under the table's unique constraint.

How a duplicate learns, without waiting, that the first request is in flight
==========================================================================

The claim is a row inserted in the same transaction as the handler's own
writes, and the stored response is written by the same transaction before it
commits (CONTRACT G2): no extra commit, and a crash rolls back the effects and
the claim together. The database's unique constraint makes the claim
exclusive (G1). The one difficulty is that a plain ``INSERT`` of a duplicate
key waits for the first transaction to finish, whereas a duplicate must get
its 409 at once. Each database gets that answer within the claim statement:

* PostgreSQL: the insert is guarded by ``pg_try_advisory_xact_lock`` on a hash
  of (scope, key) in the same statement. Every writer of a key holds that
  lock until its transaction ends, so a duplicate that cannot take it knows
  the key is in flight without touching the row. The same statement sets
  ``idle_in_transaction_session_timeout`` to ``LOCK_TIMEOUT`` for this
  transaction only, so that a worker that hangs or vanishes without closing
  its connection loses its claim after ``LOCK_TIMEOUT`` (G5).
* MariaDB: ``SET STATEMENT innodb_lock_wait_timeout=0 FOR INSERT`` fails at
  once with error 1205 while another transaction holds the key, and with
  1062 when a committed record exists. InnoDB rolls back only the failed
  statement, so the transaction stays usable. (MySQL, which lacks ``SET
  STATEMENT``, gets the ``SET_VAR`` optimizer hint, whose shortest wait is one
  second.)
* SQLite serialises writers: a duplicate waits for the first transaction
  (up to the connection's ``timeout``), then finds its record and replays it;
  if the wait runs out it gets its 409.

A worker that dies loses its connection, and the database rolls back its
transaction: the claim disappears with the effects, and a retry runs the
handler once. A record whose expiry has passed (a completed one after its
TTL, or one left in flight by a commit the package did not make) is taken
over by an ``UPDATE`` that repeats the expiry test, so two requests can never
both take it over, nor can the purge delete a record that was just renewed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from django.db import DatabaseError, IntegrityError, OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from ..models import IdempotencyKey
from .base import Claim, Outcome, RequestInfo, StoredResponse

# A claim loops only when a record vanishes (purged) between two of its
# statements; two rounds cover that, the third guards against a livelock.
MAX_ATTEMPTS = 3

CLAIMED, BUSY, EXISTS, GONE = "claimed", "busy", "exists", "gone"


@dataclass(frozen=True)
class Attempt:
    # CLAIMED: the row is ours; BUSY: another transaction holds the key;
    # EXISTS: a committed record is in the way; GONE: it vanished meanwhile.
    result: str
    pk: int | None = None


class DatabaseStore:
    """Claims, completes and reads records on one database alias."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.connection = connections[alias]
        self.dialect = dialect_for(self.connection)

    def atomic(self) -> transaction.Atomic:
        return transaction.atomic(using=self.alias)

    def claim(self, info: RequestInfo, lock_timeout: timedelta) -> Claim:
        """Insert the in-flight record for ``info``, or report what holds the key.

        Must run inside ``atomic()``: the claim lasts as long as the transaction.
        """
        values = {
            "scope": info.scope,
            "key": info.key,
            "fingerprint": info.fingerprint,
            "state": IdempotencyKey.State.IN_FLIGHT,
            "method": info.method,
            "path": info.path,
            "status": None,
            "headers": None,
            "body": None,
            "created_at": info.now,
            "completed_at": None,
            "expires_at": info.now + lock_timeout,
        }
        for _attempt in range(MAX_ATTEMPTS):
            attempt = self.dialect.insert(self, values, info, lock_timeout)
            if attempt.result == CLAIMED:
                return Claim(Outcome.CLAIMED, token=(attempt.pk, info.now))
            record = self._fetch(info)
            if attempt.result == BUSY:
                # Someone holds the key. Only a live, completed record may be
                # replayed meanwhile: its holder is another replay. Anything
                # else is being written by the holder.
                if record is not None and _is_live_completed(record, info):
                    return _completed(record)
                return Claim(Outcome.IN_FLIGHT)
            if record is None:
                continue  # purged between our two statements: claim again
            if not record.is_expired(info.now):
                if record.state == IdempotencyKey.State.COMPLETED:
                    return _completed(record)
                return Claim(Outcome.IN_FLIGHT)
            attempt = self.dialect.take_over(self, record.pk, values, info)
            if attempt.result == CLAIMED:
                return Claim(Outcome.CLAIMED, token=(record.pk, info.now))
            if attempt.result == BUSY:
                return Claim(Outcome.IN_FLIGHT)
        return Claim(Outcome.IN_FLIGHT)

    def complete(self, claim: Claim, response: StoredResponse, ttl: timedelta) -> bool:
        """Store the response on the claimed record, in the claim's transaction.

        Returns ``False`` if the record is no longer this request's claim
        (see the module docstring); the caller must then roll back.
        """
        pk, claimed_at = claim.token
        now = timezone.now()
        updated = (
            IdempotencyKey.objects.using(self.alias)
            .filter(pk=pk, created_at=claimed_at, state=IdempotencyKey.State.IN_FLIGHT)
            .update(
                state=IdempotencyKey.State.COMPLETED,
                status=response.status,
                headers=[list(pair) for pair in response.headers],
                body=response.body,
                completed_at=now,
                expires_at=now + ttl,
            )
        )
        return updated == 1

    def _fetch(self, info: RequestInfo) -> IdempotencyKey | None:
        return (
            IdempotencyKey.objects.using(self.alias)
            .filter(scope=info.scope, key=info.key)
            .first()
        )

    # Helpers for the dialects' hand-written SQL.

    def table(self) -> str:
        return self.connection.ops.quote_name(IdempotencyKey._meta.db_table)

    def column(self, name: str) -> str:
        return self.connection.ops.quote_name(IdempotencyKey._meta.get_field(name).column)

    def prepare(self, values: dict[str, Any]) -> tuple[list[str], list[Any]]:
        """Quoted column names and database-ready parameters for ``values``."""
        columns, params = [], []
        for name, value in values.items():
            field = IdempotencyKey._meta.get_field(name)
            columns.append(self.connection.ops.quote_name(field.column))  # type: ignore[union-attr]
            params.append(field.get_db_prep_save(value, connection=self.connection))  # type: ignore[union-attr]
        return columns, params

    def update_sql(self, values: dict[str, Any], pk: int, info: RequestInfo) -> tuple[str, list[Any]]:
        columns, params = self.prepare(values)
        assignments = ", ".join(f"{column} = %s" for column in columns)
        expires = IdempotencyKey._meta.get_field("expires_at")
        sql = (
            f"UPDATE {self.table()} SET {assignments} "
            f"WHERE {self.column('id')} = %s AND {self.column('expires_at')} < %s"
        )
        return sql, [*params, pk, expires.get_db_prep_save(info.now, connection=self.connection)]


def _is_live_completed(record: IdempotencyKey, info: RequestInfo) -> bool:
    return record.state == IdempotencyKey.State.COMPLETED and not record.is_expired(info.now)


def _completed(record: IdempotencyKey) -> Claim:
    return Claim(
        Outcome.COMPLETED,
        fingerprint=record.fingerprint,
        response=StoredResponse(
            status=cast(int, record.status),
            headers=[(name, value) for name, value in record.headers or []],
            body=bytes(record.body or b""),
        ),
    )


class Dialect:
    """The claim and takeover statements, which differ by database."""

    def insert(
        self, store: DatabaseStore, values: dict[str, Any], info: RequestInfo, lock_timeout: timedelta
    ) -> Attempt:
        raise NotImplementedError

    def take_over(
        self, store: DatabaseStore, pk: int, values: dict[str, Any], info: RequestInfo
    ) -> Attempt:
        sql, params = store.update_sql(values, pk, info)
        with store.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return Attempt(CLAIMED if cursor.rowcount == 1 else GONE, pk)


class PostgreSQLDialect(Dialect):
    def insert(
        self, store: DatabaseStore, values: dict[str, Any], info: RequestInfo, lock_timeout: timedelta
    ) -> Attempt:
        columns, params = store.prepare(values)
        sql = (
            "WITH claim AS ("
            " SELECT pg_try_advisory_xact_lock(%s) AS acquired,"
            " set_config('idle_in_transaction_session_timeout', %s, true)"
            "), inserted AS ("
            f" INSERT INTO {store.table()} ({', '.join(columns)})"
            f" SELECT {', '.join(['%s'] * len(params))} FROM claim WHERE claim.acquired"
            f" ON CONFLICT ({store.column('scope')}, {store.column('key')}) DO NOTHING"
            f" RETURNING {store.column('id')}"
            ") SELECT claim.acquired, inserted.id FROM claim LEFT JOIN inserted ON true"
        )
        idle_ms = str(max(1, int(lock_timeout / timedelta(milliseconds=1))))
        with store.connection.cursor() as cursor:
            cursor.execute(sql, [advisory_lock_id(info), idle_ms, *params])
            acquired, pk = cursor.fetchone()
        if pk is not None:
            return Attempt(CLAIMED, pk)
        # Holding the lock, no other transaction can be writing this key: the
        # conflict is a committed record, which may be taken over if expired.
        return Attempt(EXISTS if acquired else BUSY)


class MySQLDialect(Dialect):
    LOCK_WAIT_TIMEOUT = 1205
    DUPLICATE_ENTRY = 1062

    def __init__(self, is_mariadb: bool) -> None:
        self.is_mariadb = is_mariadb

    def no_wait(self, statement: str) -> str:
        if self.is_mariadb:
            return f"SET STATEMENT innodb_lock_wait_timeout=0 FOR {statement}"
        verb, rest = statement.split(" ", 1)
        return f"{verb} /*+ SET_VAR(innodb_lock_wait_timeout=1) */ {rest}"

    def insert(
        self, store: DatabaseStore, values: dict[str, Any], info: RequestInfo, lock_timeout: timedelta
    ) -> Attempt:
        columns, params = store.prepare(values)
        sql = self.no_wait(
            f"INSERT INTO {store.table()} ({', '.join(columns)}) "
            f"VALUES ({', '.join(['%s'] * len(params))})"
        )
        try:
            with store.connection.cursor() as cursor:
                cursor.execute(sql, params)
                return Attempt(CLAIMED, cursor.lastrowid)
        except IntegrityError as exc:
            if _error_code(exc) != self.DUPLICATE_ENTRY:
                raise
            return Attempt(EXISTS)
        except OperationalError as exc:
            if _error_code(exc) != self.LOCK_WAIT_TIMEOUT:
                raise
            return Attempt(BUSY)

    def take_over(
        self, store: DatabaseStore, pk: int, values: dict[str, Any], info: RequestInfo
    ) -> Attempt:
        sql, params = store.update_sql(values, pk, info)
        try:
            with store.connection.cursor() as cursor:
                cursor.execute(self.no_wait(sql), params)
                return Attempt(CLAIMED if cursor.rowcount == 1 else GONE, pk)
        except OperationalError as exc:
            if _error_code(exc) != self.LOCK_WAIT_TIMEOUT:
                raise
            return Attempt(BUSY)


class SQLiteDialect(Dialect):
    def insert(
        self, store: DatabaseStore, values: dict[str, Any], info: RequestInfo, lock_timeout: timedelta
    ) -> Attempt:
        columns, params = store.prepare(values)
        sql = (
            f"INSERT INTO {store.table()} ({', '.join(columns)}) "
            f"VALUES ({', '.join(['%s'] * len(params))}) "
            f"ON CONFLICT ({store.column('scope')}, {store.column('key')}) DO NOTHING"
        )
        try:
            with store.connection.cursor() as cursor:
                cursor.execute(sql, params)
                if cursor.rowcount == 1:
                    return Attempt(CLAIMED, cursor.lastrowid)
                return Attempt(EXISTS)
        except OperationalError as exc:
            if not _sqlite_locked(exc):
                raise
            return Attempt(BUSY)

    def take_over(
        self, store: DatabaseStore, pk: int, values: dict[str, Any], info: RequestInfo
    ) -> Attempt:
        try:
            return super().take_over(store, pk, values, info)
        except OperationalError as exc:
            if not _sqlite_locked(exc):
                raise
            return Attempt(BUSY)


def _error_code(exc: DatabaseError) -> int | None:
    code = exc.args[0] if exc.args else None
    return code if isinstance(code, int) else None


def _sqlite_locked(exc: OperationalError) -> bool:
    # "database is locked" (another connection writes) or "database table is
    # locked" (shared-cache connections, as in Django's in-memory test database).
    return "locked" in str(exc)


def advisory_lock_id(info: RequestInfo) -> int:
    """A signed 64-bit lock id for (scope, key). A collision between two keys
    only makes one of them answer 409 for a moment; it can never run a handler
    twice, because the unique constraint still guards the row."""
    digest = hashlib.sha256(f"{info.scope}\0{info.key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class UnsupportedDatabase(Exception):
    """The key table was placed on a database this package cannot claim on."""


def dialect_for(connection: BaseDatabaseWrapper) -> Dialect:
    if connection.vendor == "postgresql":
        return PostgreSQLDialect()
    if connection.vendor == "mysql":
        return MySQLDialect(is_mariadb=bool(getattr(connection, "mysql_is_mariadb", False)))
    if connection.vendor == "sqlite":
        return SQLiteDialect()
    raise UnsupportedDatabase(
        f"django-idempotency supports PostgreSQL, MariaDB/MySQL and SQLite, "
        f"not {connection.vendor}."
    )


SUPPORTED_VENDORS = frozenset({"postgresql", "mysql", "sqlite"})
