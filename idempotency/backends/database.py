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
  statement, so the transaction stays usable.
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

import abc
import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from django.db import IntegrityError, OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field
from django.utils import timezone

from ..models import IdempotencyKey
from .base import Claim, Outcome, RequestInfo, StoredResponse

CLAIMED, BUSY, SHARED, EXISTS, GONE = "claimed", "busy", "shared", "exists", "gone"


@dataclass(frozen=True)
class Attempt:
    # CLAIMED: the row is ours. BUSY: another transaction is writing the key.
    # SHARED: another transaction holds the key's lock, which replays take
    # too, so a completed record may still be replayed. EXISTS: a committed
    # record is in the way. GONE: it vanished meanwhile.
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
        attempt = self.dialect.insert(self, values, info, lock_timeout)
        if attempt.result == CLAIMED:
            return Claim(Outcome.CLAIMED, token=(attempt.pk, info.now))
        if attempt.result == BUSY:
            return Claim(Outcome.IN_FLIGHT)
        record = self._fetch(info)
        if record is None:
            # Purged between the two statements (possible on PostgreSQL only,
            # where the claim takes no row lock). It had expired, so the
            # client's retry will claim it: a 409 is the honest answer.
            return Claim(Outcome.IN_FLIGHT)
        live = not record.is_expired(info.now)
        if live and record.state == IdempotencyKey.State.COMPLETED:
            return _completed(record)
        if live or attempt.result == SHARED:
            # In flight, or (PostgreSQL) another transaction holds the key's
            # lock and may be renewing this expired record.
            return Claim(Outcome.IN_FLIGHT)
        if self.dialect.take_over(self, record.pk, values, info).result == CLAIMED:
            return Claim(Outcome.CLAIMED, token=(record.pk, info.now))
        # Taken over, renewed or purged since we read it: in flight, or free
        # again for the client's retry.
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
            IdempotencyKey.objects.using(self.alias).filter(scope=info.scope, key=info.key).first()
        )

    # Helpers for the dialects' hand-written SQL.

    def table(self) -> str:
        return self.connection.ops.quote_name(IdempotencyKey._meta.db_table)

    def column(self, name: str) -> str:
        return self.connection.ops.quote_name(cast(str, _field(name).column))

    def param(self, name: str, value: Any) -> Any:
        return _field(name).get_db_prep_save(value, connection=self.connection)

    def prepare(self, values: dict[str, Any]) -> tuple[list[str], list[Any]]:
        """Quoted column names and database-ready parameters for ``values``."""
        columns = [self.column(name) for name in values]
        params = [self.param(name, value) for name, value in values.items()]
        return columns, params

    def insert_sql(self, values: dict[str, Any]) -> tuple[str, list[Any]]:
        columns, params = self.prepare(values)
        placeholders = ", ".join(["%s"] * len(params))
        return f"INSERT INTO {self.table()} ({', '.join(columns)}) VALUES ({placeholders})", params

    def update_sql(
        self, values: dict[str, Any], pk: int, info: RequestInfo
    ) -> tuple[str, list[Any]]:
        columns, params = self.prepare(values)
        assignments = ", ".join(f"{column} = %s" for column in columns)
        sql = (
            f"UPDATE {self.table()} SET {assignments} "
            f"WHERE {self.column('id')} = %s AND {self.column('expires_at')} < %s"
        )
        return sql, [*params, pk, self.param("expires_at", info.now)]


def _field(name: str) -> Field[Any, Any]:
    return cast("Field[Any, Any]", IdempotencyKey._meta.get_field(name))


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


class Dialect(abc.ABC):
    """The claim and takeover statements, which differ by database."""

    @abc.abstractmethod
    def insert(
        self,
        store: DatabaseStore,
        values: dict[str, Any],
        info: RequestInfo,
        lock_timeout: timedelta,
    ) -> Attempt: ...

    def take_over(
        self, store: DatabaseStore, pk: int, values: dict[str, Any], info: RequestInfo
    ) -> Attempt:
        sql, params = store.update_sql(values, pk, info)
        with store.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return Attempt(CLAIMED if cursor.rowcount == 1 else GONE, pk)


class PostgreSQLDialect(Dialect):
    def insert(
        self,
        store: DatabaseStore,
        values: dict[str, Any],
        info: RequestInfo,
        lock_timeout: timedelta,
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
        # The setting is an int4 of milliseconds; the checks keep LOCK_TIMEOUT
        # within it, and the clamp keeps a skipped check from failing requests.
        idle_ms = str(min(max(1, int(lock_timeout / timedelta(milliseconds=1))), 2**31 - 1))
        with store.connection.cursor() as cursor:
            cursor.execute(sql, [advisory_lock_id(info), idle_ms, *params])
            acquired, pk = cursor.fetchone()
        if pk is not None:
            return Attempt(CLAIMED, pk)
        # Holding the lock, no other transaction can be writing this key: the
        # conflict is a committed record, which may be taken over if expired.
        return Attempt(EXISTS if acquired else SHARED)


class MariaDBDialect(Dialect):
    # What the claim's errors mean: 1062 (duplicate entry) a committed record
    # is in the way; 1205 (lock wait timeout, at once with a zero wait)
    # another transaction is writing the key.
    ERRORS = {1062: EXISTS, 1205: BUSY}

    def insert(
        self,
        store: DatabaseStore,
        values: dict[str, Any],
        info: RequestInfo,
        lock_timeout: timedelta,
    ) -> Attempt:
        sql, params = store.insert_sql(values)
        return self._run(store, sql, params, pk=None)

    def take_over(
        self, store: DatabaseStore, pk: int, values: dict[str, Any], info: RequestInfo
    ) -> Attempt:
        sql, params = store.update_sql(values, pk, info)
        return self._run(store, sql, params, pk=pk)

    def _run(self, store: DatabaseStore, sql: str, params: list[Any], pk: int | None) -> Attempt:
        # InnoDB rolls back only the failed statement, so catching its error
        # leaves the transaction (and any savepoint around it) usable.
        try:
            with store.connection.cursor() as cursor:
                cursor.execute(f"SET STATEMENT innodb_lock_wait_timeout=0 FOR {sql}", params)
                if pk is None:
                    return Attempt(CLAIMED, cursor.lastrowid)
                return Attempt(CLAIMED if cursor.rowcount == 1 else GONE, pk)
        except (IntegrityError, OperationalError) as exc:
            code = exc.args[0] if exc.args else None
            if code not in self.ERRORS:
                raise
            return Attempt(self.ERRORS[code])


class SQLiteDialect(Dialect):
    """SQLite has one writer at a time. A failed claim is the only statement
    that can meet the lock: once it has run, this transaction holds the
    database's write lock, so a takeover after it never waits."""

    def insert(
        self,
        store: DatabaseStore,
        values: dict[str, Any],
        info: RequestInfo,
        lock_timeout: timedelta,
    ) -> Attempt:
        sql, params = store.insert_sql(values)
        sql += f" ON CONFLICT ({store.column('scope')}, {store.column('key')}) DO NOTHING"
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
    if connection.vendor == "sqlite":
        return SQLiteDialect()
    if connection.vendor == "mysql" and connection.mysql_is_mariadb:  # type: ignore[attr-defined]
        return MariaDBDialect()
    if connection.vendor == "mysql":
        # MySQL has no SET STATEMENT, and its SET_VAR hint does not reach
        # innodb_lock_wait_timeout: a duplicate would wait 50 seconds for its
        # 409 instead of none. Not in CI, so not claimed to work.
        raise UnsupportedDatabase(
            "django-idempotency supports MariaDB but not MySQL: MySQL cannot shorten one "
            "statement's lock wait, so a duplicate request would wait instead of getting "
            "its 409."
        )
    raise UnsupportedDatabase(
        f"django-idempotency supports PostgreSQL, MariaDB and SQLite, not {connection.vendor}."
    )
