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
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, cast

from django.conf import settings as django_settings
from django.db import DatabaseError, IntegrityError, OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field
from django.utils import timezone

from ..models import IdempotencyKey
from .base import Claim, Outcome, RequestInfo, ResponseTooLarge, StoredResponse

CLAIMED, BUSY, SHARED, EXISTS, GONE = "claimed", "busy", "shared", "exists", "gone"

IN_FLIGHT = str(IdempotencyKey.State.IN_FLIGHT)
COMPLETED = str(IdempotencyKey.State.COMPLETED)

# The columns of a claim, in the order of the claim statements' parameters.
COLUMNS = (
    "scope",
    "key",
    "fingerprint",
    "state",
    "method",
    "path",
    "status",
    "headers",
    "body",
    "created_at",
    "completed_at",
    "expires_at",
)
# What a reader needs of a record, in this order; the database compares the
# expiry itself (the claim's CASE), and the value is read for Redis's copy.
RECORD_COLUMNS = ("id", "state", "fingerprint", "status", "headers", "body", "expires_at")


@dataclass(frozen=True)
class Record:
    """A record as the claim finds it."""

    pk: int
    state: str
    fingerprint: str
    status: int | None
    headers: list[list[str]] | None
    body: bytes | None
    expires_at: datetime
    expired: bool

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Record:
        pk, state, fingerprint, status, headers, body, expires_at, expired = row
        if isinstance(headers, str):  # every driver but psycopg2 without Django's loader
            headers = json.loads(headers)
        return cls(
            pk=pk,
            state=state,
            fingerprint=fingerprint,
            status=status,
            headers=headers,
            body=None if body is None else bytes(body),
            expires_at=_as_datetime(expires_at),
            expired=bool(expired),
        )


def _as_datetime(value: datetime) -> datetime:
    """A datetime column read by a raw cursor, as the ORM would return it:
    MariaDB and SQLite (through Django's converters) give naive UTC,
    PostgreSQL an aware value."""
    if django_settings.USE_TZ and timezone.is_naive(value):
        value = value.replace(tzinfo=dt_timezone.utc)
    return value


@dataclass(frozen=True)
class Attempt:
    # CLAIMED: the row is ours. BUSY: another transaction is writing the key.
    # SHARED: another transaction holds the key's lock, which replays take
    # too, so a completed record may still be replayed. EXISTS: a committed
    # record is in the way. GONE: it vanished meanwhile.
    result: str
    pk: int | None = None
    # The record in the way, when the claim statement could read it too.
    record: Record | None = None
    # PostgreSQL: the claimed row's ctid, to store the response by.
    row: str | None = None


@dataclass(frozen=True)
class Statements:
    """The hand-written SQL of one database alias, built once: requests only
    bind parameters (these statements are on every protected request)."""

    table: str
    insert: str  # INSERT INTO table (COLUMNS) VALUES (...)
    select: str  # RECORD_COLUMNS and the expiry test, by scope and key
    update: str  # SET COLUMNS, by id and expiry
    complete: str  # SET the response, by id, claim time and state
    complete_row: str = ""  # PostgreSQL: the same, by ctid and id
    lock: str = ""  # MariaDB: a shared lock on the record of (scope, key), if any
    claim: str = ""  # the dialect's claim, built from the above
    # PostgreSQL at SERIALIZABLE: a claim that takes an expired record over
    # in the same statement (see PostgreSQLDialect.claim_sql).
    claim_and_take_over: str = ""
    take_over: str = ""  # the dialect's takeover, built from ``update``


class DatabaseStore:
    """Claims, completes and reads records on one database alias."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.connection = connections[alias]
        self.dialect = dialect_for(self.connection)
        self.sql = _statements(self.connection, self.dialect)

    def atomic(self) -> transaction.Atomic:
        return transaction.atomic(using=self.alias)

    def session(self) -> object:
        """The database session: the driver's connection under Django's,
        opened now if need be (a refused connection raises here)."""
        self.connection.ensure_connection()
        return self.connection.connection

    def session_alive(self, session: object) -> bool:
        """Whether ``session`` survived an error. Django closes a connection
        whose rollback failed, and leaving the atomic block may open a new
        one at once: a lost session is a different connection, or none, or
        one its driver reports lost."""
        return (
            session is not None
            and self.connection.connection is session
            and self.dialect.alive(self.connection)
        )

    def conflict(self, exc: DatabaseError) -> bool:
        """Whether ``exc`` is a conflict with a concurrent transaction, after
        which this one can only be rolled back whole."""
        return self.dialect.conflict(exc)

    def rolled_back(self) -> bool:
        """Whether the claim's transaction can only roll back now: the
        handler marked it (``transaction.set_rollback(True)``, or an error
        inside an ``atomic(savepoint=False)`` or an ORM write), or, on
        PostgreSQL, an error it caught aborted the transaction."""
        return self.connection.needs_rollback or self.dialect.aborted(self.connection)

    def claim(self, info: RequestInfo, lock_timeout: timedelta) -> Claim:
        """Insert the in-flight record for ``info``, or report what holds the key.

        Must run inside ``atomic()``: the claim lasts as long as the transaction.
        """
        try:
            return self._claim(info, lock_timeout)
        except OperationalError as exc:
            if not self.dialect.conflict(exc):
                raise
            # REPEATABLE READ or SERIALIZABLE, and the transaction's snapshot
            # was taken (under ATOMIC_REQUESTS, by the request's first read)
            # before another transaction wrote this key's record: this one
            # can neither see that record nor write over it. The other has
            # committed, but its response cannot be read from this snapshot:
            # a 409, and the client's retry gets the replay. The error
            # aborted the transaction (PostgreSQL) or rolled it back
            # (MariaDB): leaving the block rolls back the claim's savepoint
            # or, if that is gone, the request's transaction.
            transaction.set_rollback(True, using=self.alias)
            return Claim(Outcome.IN_FLIGHT)

    def _claim(self, info: RequestInfo, lock_timeout: timedelta) -> Claim:
        adapt = self.connection.ops.adapt_datetimefield_value
        params = [
            info.scope,
            info.key,
            info.fingerprint,
            IN_FLIGHT,
            info.method,
            info.path,
            None,
            None,
            None,
            adapt(info.now),
            None,
            adapt(info.now + lock_timeout),
        ]
        attempt = self.dialect.insert(self, params, info, lock_timeout)
        if attempt.result == CLAIMED:
            return Claim(
                Outcome.CLAIMED, token=(attempt.pk, info.now, attempt.row), record_id=attempt.pk
            )
        if attempt.result == BUSY:
            return Claim(Outcome.IN_FLIGHT)
        record = attempt.record
        if record is None and attempt.result == EXISTS:
            # MariaDB and SQLite: the failed insert left the record locked
            # for this transaction, so it is there to read.
            record = self.dialect.fetch(self, info)
        if record is None:
            # PostgreSQL: another transaction holds the key's lock, or
            # committed its record, or the purge deleted an expired one, in
            # the instant since this statement began. In flight, or free
            # again for the client's retry: a 409 is the honest answer.
            return Claim(Outcome.IN_FLIGHT)
        if not record.expired and record.state == COMPLETED:
            return _completed(record)
        if not record.expired or attempt.result == SHARED:
            # In flight, or (PostgreSQL) another transaction holds the key's
            # lock and may be renewing this expired record.
            return Claim(Outcome.IN_FLIGHT)
        taken = self.dialect.take_over(self, record.pk, params, info)
        if taken.result == CLAIMED:
            return Claim(
                Outcome.CLAIMED, token=(record.pk, info.now, taken.row), record_id=record.pk
            )
        # Taken over, renewed or purged since we read it: in flight, or free
        # again for the client's retry.
        return Claim(Outcome.IN_FLIGHT)

    def complete(self, claim: Claim, response: StoredResponse, ttl: timedelta) -> datetime | None:
        """Store the response on the claimed record, in the claim's transaction,
        and return the record's new expiry.

        Returns ``None`` if the record is no longer this request's claim
        (see the module docstring); the caller must then roll back.
        """
        pk, claimed_at, row = claim.token
        now = timezone.now()
        adapt = self.connection.ops.adapt_datetimefield_value
        params = [
            COMPLETED,
            response.status,
            _field("headers").get_db_prep_save(
                [list(pair) for pair in response.headers], connection=self.connection
            ),
            _field("body").get_db_prep_save(response.body, connection=self.connection),
            adapt(now),
            adapt(now + ttl),
            pk,
            adapt(claimed_at),
            IN_FLIGHT,
        ]
        if not self.dialect.fits(self.connection, self.sql.complete, params):
            raise ResponseTooLarge
        with self.connection.cursor() as cursor:
            if row is not None:
                # PostgreSQL: the claimed row by its ctid, without the search
                # of the primary key's index, whose predicate lock (at
                # SERIALIZABLE) would cover the page where every concurrent
                # claim inserts its new id, and fail them at commit. The
                # search by id remains for a row that moved meanwhile (the
                # handler updated it).
                cursor.execute(self.sql.complete_row, [*params[:6], row, *params[6:]])
                if cursor.rowcount == 1:
                    return now + ttl
            cursor.execute(self.sql.complete, params)
            return now + ttl if cursor.rowcount == 1 else None

    def _fetch(self, info: RequestInfo, sql: str = "") -> Record | None:
        with self.connection.cursor() as cursor:
            cursor.execute(sql or self.sql.select, self.select_params(info))
            row = cursor.fetchone()
        return None if row is None else Record.from_row(row)

    def select_params(self, info: RequestInfo) -> list[Any]:
        return [self.connection.ops.adapt_datetimefield_value(info.now), info.scope, info.key]


def _field(name: str) -> Field[Any, Any]:
    return cast("Field[Any, Any]", IdempotencyKey._meta.get_field(name))


_STATEMENTS: dict[tuple[str, str], Statements] = {}


def _statements(connection: BaseDatabaseWrapper, dialect: Dialect) -> Statements:
    cache_key = (connection.alias, connection.vendor)
    if cache_key not in _STATEMENTS:
        quote = connection.ops.quote_name
        table = quote(IdempotencyKey._meta.db_table)

        def column(name: str) -> str:
            return quote(cast(str, _field(name).column))

        columns = ", ".join(column(name) for name in COLUMNS)
        placeholders = ", ".join(["%s"] * len(COLUMNS))
        assignments = ", ".join(f"{column(name)} = %s" for name in COLUMNS)
        body = dialect.BINARY_PLACEHOLDER
        response = ", ".join(
            f"{column(name)} = {body if name == 'body' else '%s'}"
            for name in ("state", "status", "headers", "body", "completed_at", "expires_at")
        )
        statements = Statements(
            table=table,
            insert=f"INSERT INTO {table} ({columns}) VALUES ({placeholders})",
            select=(
                f"SELECT {', '.join(column(name) for name in RECORD_COLUMNS)},"
                f" CASE WHEN {column('expires_at')} < %s THEN 1 ELSE 0 END"
                f" FROM {table} WHERE {column('scope')} = %s AND {column('key')} = %s"
            ),
            update=(
                f"UPDATE {table} SET {assignments}"
                f" WHERE {column('id')} = %s AND {column('expires_at')} < %s"
            ),
            complete=(
                f"UPDATE {table} SET {response} WHERE {column('id')} = %s"
                f" AND {column('created_at')} = %s AND {column('state')} = %s"
            ),
            lock=(
                f"SELECT 1 FROM {table} WHERE {column('scope')} = %s AND {column('key')} = %s"
                " LOCK IN SHARE MODE"
            ),
        )
        _STATEMENTS[cache_key] = dataclasses.replace(
            statements,
            claim=dialect.claim_sql(statements, column),
            claim_and_take_over=dialect.claim_sql(statements, column, take_over=True),
            complete_row=dialect.complete_row_sql(statements, column),
            take_over=dialect.take_over_sql(statements),
        )
    return _STATEMENTS[cache_key]


def _completed(record: Record) -> Claim:
    return Claim(
        Outcome.COMPLETED,
        fingerprint=record.fingerprint,
        response=StoredResponse(
            status=cast(int, record.status),
            headers=[(name, value) for name, value in record.headers or []],
            body=record.body or b"",
        ),
        expires_at=record.expires_at,
        record_id=record.pk,
    )


class Dialect(abc.ABC):
    """The claim and takeover statements, which differ by database."""

    # How a bytes parameter is written in SQL (Django's own
    # binary_placeholder_sql() changed its signature in Django 6.0).
    BINARY_PLACEHOLDER = "%s"

    @abc.abstractmethod
    def claim_sql(
        self, sql: Statements, column: Callable[[str], str], take_over: bool = False
    ) -> str: ...

    def take_over_sql(self, sql: Statements) -> str:
        return sql.update

    def complete_row_sql(self, sql: Statements, column: Callable[[str], str]) -> str:
        return ""

    def conflict(self, exc: DatabaseError) -> bool:
        """Whether ``exc`` says that the transaction lost to a concurrent one
        and was (or must be) rolled back whole: a snapshot that predates a
        committed write of the record it meant to write, a serialization
        failure, a deadlock."""
        return False

    def fetch(self, store: DatabaseStore, info: RequestInfo) -> Record | None:
        return store._fetch(info)

    def alive(self, connection: BaseDatabaseWrapper) -> bool:
        return connection.is_usable()

    def aborted(self, connection: BaseDatabaseWrapper) -> bool:
        """Whether an error aborted the transaction (MariaDB and SQLite roll
        back only the failed statement)."""
        return False

    def fits(self, connection: BaseDatabaseWrapper, sql: str, params: list[Any]) -> bool:
        """Whether the server accepts ``sql`` with ``params`` as one statement."""
        return True

    @abc.abstractmethod
    def insert(
        self, store: DatabaseStore, params: list[Any], info: RequestInfo, lock_timeout: timedelta
    ) -> Attempt: ...

    def take_over(
        self, store: DatabaseStore, pk: int, params: list[Any], info: RequestInfo
    ) -> Attempt:
        with store.connection.cursor() as cursor:
            cursor.execute(store.sql.take_over, takeover_params(store, pk, params, info))
            return Attempt(CLAIMED if cursor.rowcount == 1 else GONE, pk)


def takeover_params(
    store: DatabaseStore, pk: int, params: list[Any], info: RequestInfo
) -> list[Any]:
    return [*params, pk, store.connection.ops.adapt_datetimefield_value(info.now)]


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
        # One statement answers every case: it takes the key's advisory lock;
        # holding it, it inserts the claim; and it reads the record in the
        # way (all a replay needs) only when there was one. Inserting first
        # matters at SERIALIZABLE: a read of the unique index takes a
        # predicate lock on its page, where concurrent claims of other keys
        # insert theirs, and would fail them at commit; ON CONFLICT finds the
        # record in the way without one. (A claim that meets a record burns
        # an id.) OFFSET 0 keeps the read a subquery of its own, which a
        # One-Time Filter skips when the insert happened.
        #
        # ``take_over``: at SERIALIZABLE the takeover of an expired record
        # must not read it first either (the update rewrites index entries
        # that the read locked, and concurrent takeovers of other keys would
        # fail at commit): ON CONFLICT DO UPDATE takes it over in the same
        # statement. It locks the record in the way even when it has not
        # expired, so a replay then writes a row lock (and waits for its
        # commit to reach the disk): other levels read first, and take over
        # with a statement of its own.
        columns = [column(name) for name in COLUMNS]
        if take_over:
            action = (
                f"UPDATE SET ({', '.join(columns)}) = "
                f"({', '.join(f'EXCLUDED.{name}' for name in columns)})"
                f" WHERE {sql.table}.{column('expires_at')} < %s"
            )
        else:
            action = "NOTHING"
        return (
            "WITH claim AS ("
            " SELECT pg_try_advisory_xact_lock(%s) AS acquired,"
            " set_config('idle_in_transaction_session_timeout', %s, true)"
            "), claimed AS ("
            f" INSERT INTO {sql.table} ({', '.join(columns)})"
            f" SELECT {', '.join(['%s'] * len(COLUMNS))} FROM claim"
            " WHERE claim.acquired"
            f" ON CONFLICT ({column('scope')}, {column('key')}) DO {action}"
            f" RETURNING {column('id')}, ctid"
            f") SELECT claim.acquired, claimed.{column('id')}, claimed.ctid::text,"
            " existing.* FROM claim LEFT JOIN claimed ON true LEFT JOIN LATERAL ("
            f"{sql.select} AND claimed.{column('id')} IS NULL OFFSET 0"
            ") existing ON true"
        )

    def complete_row_sql(self, sql: Statements, column: Callable[[str], str]) -> str:
        by_id = f" WHERE {column('id')} = %s"
        return sql.complete.replace(by_id, f" WHERE ctid = %s::tid AND {column('id')} = %s")

    def take_over_sql(self, sql: Statements) -> str:
        # The row's new address, to store the response by (see complete()).
        return f"{sql.update} RETURNING ctid::text"

    def take_over(
        self, store: DatabaseStore, pk: int, params: list[Any], info: RequestInfo
    ) -> Attempt:
        with store.connection.cursor() as cursor:
            cursor.execute(store.sql.take_over, takeover_params(store, pk, params, info))
            row = cursor.fetchone()
        return Attempt(CLAIMED, pk, row=row[0]) if row else Attempt(GONE, pk)

    # "could not serialize access" (a row written, by ON CONFLICT or UPDATE,
    # by a transaction that committed after this one's snapshot was taken; or
    # read/write dependencies at SERIALIZABLE), and "deadlock detected".
    CONFLICTS = frozenset({"40001", "40P01"})

    def conflict(self, exc: DatabaseError) -> bool:
        cause = exc.__cause__  # psycopg 3 names the SQLSTATE sqlstate, psycopg2 pgcode
        code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        return code in self.CONFLICTS

    def insert(
        self, store: DatabaseStore, params: list[Any], info: RequestInfo, lock_timeout: timedelta
    ) -> Attempt:
        # The setting is an int4 of milliseconds; the checks keep LOCK_TIMEOUT
        # within it, and the clamp keeps a skipped check from failing requests.
        idle_ms = str(min(max(1, int(lock_timeout / timedelta(milliseconds=1))), 2**31 - 1))
        from django.db.backends.postgresql.psycopg_any import IsolationLevel

        head = [advisory_lock_id(info), idle_ms, *params]
        # The level Django asks for (OPTIONS["isolation_level"]), as its
        # backend read it; set it even where it is the server's default.
        level = store.connection.isolation_level  # type: ignore[attr-defined]
        if level == IsolationLevel.SERIALIZABLE:
            sql = store.sql.claim_and_take_over
            head.append(store.connection.ops.adapt_datetimefield_value(info.now))
        else:
            sql = store.sql.claim
        with store.connection.cursor() as cursor:
            cursor.execute(sql, [*head, *store.select_params(info)])
            acquired, pk, row, *existing = cursor.fetchone()
        if pk is not None:
            return Attempt(CLAIMED, pk, row=row)
        # The committed record this statement's snapshot saw, if any: one
        # that has not expired, or (without the lock) one that another
        # request may be renewing right now.
        record = None if existing[0] is None else Record.from_row(tuple(existing))
        return Attempt(EXISTS if acquired else SHARED, record=record)


class MariaDBDialect(Dialect):
    # What the claim's errors mean: 1062 (duplicate entry) a committed record
    # is in the way; 1205 (lock wait timeout, at once with a zero wait)
    # another transaction is writing the key.
    ERRORS = {1062: EXISTS, 1205: BUSY}
    # InnoDB would wait 50 seconds for the lock of a key in flight; a
    # duplicate must get its 409 at once.
    NO_WAIT = "SET STATEMENT innodb_lock_wait_timeout=0 FOR "
    # Without the introducer MariaDB checks the bytes against the connection's
    # character set, and warns.
    BINARY_PLACEHOLDER = "_binary %s"

    # A claim that meets a lock asks whether the lock is on its own key, and
    # tries again while it is not, this many times in all.
    ATTEMPTS = 3

    # The statement storing a response must fit in the server's
    # max_allowed_packet: past it MariaDB drops the connection, and the
    # request would roll back and answer 503 "retry" on every attempt.
    # What mysqlclient escapes with a backslash inside a quoted literal.
    ESCAPED = tuple(bytes([byte]) for byte in b"\x00\n\r\x1a'\"\\")

    def fits(self, connection: BaseDatabaseWrapper, sql: str, params: list[Any]) -> bool:
        size = len(sql) + sum(self._escaped_size(param) for param in params)
        return size <= max_allowed_packet(connection)

    def _escaped_size(self, value: Any) -> int:
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, (bytes, bytearray, memoryview)):
            return len(str(value)) + 2
        data = bytes(value)
        return len(data) + sum(data.count(char) for char in self.ESCAPED) + 10

    def claim_sql(
        self, sql: Statements, column: Callable[[str], str], take_over: bool = False
    ) -> str:
        return self.NO_WAIT + sql.insert

    def take_over_sql(self, sql: Statements) -> str:
        # By the primary key only: on a small table the optimizer may range
        # over the expiry index instead, and lock other keys' expired rows,
        # which their own takeovers then meet (a false 409).
        return self.NO_WAIT + sql.update.replace(
            f"UPDATE {sql.table} SET", f"UPDATE {sql.table} FORCE INDEX (PRIMARY) SET", 1
        )

    # Error 1020 (ER_CHECKREAD, "Record has changed since last read"): with
    # innodb_snapshot_isolation=ON (the default from MariaDB 11.6.2), a
    # locking read or write of a record committed after the read view; and
    # 1213, a deadlock. InnoDB rolls back the whole transaction for both.
    CONFLICTS = frozenset({1020, 1213})

    def conflict(self, exc: DatabaseError) -> bool:
        return bool(exc.args) and exc.args[0] in self.CONFLICTS

    def fetch(self, store: DatabaseStore, info: RequestInfo) -> Record | None:
        record = store._fetch(info)
        if record is not None:
            return record
        # At REPEATABLE READ a plain read reads the transaction's read view,
        # which (under ATOMIC_REQUESTS, taken by the request's first read)
        # may predate the record the insert met. A locking read reads the
        # latest committed version. Only then: its shared lock would stop
        # the takeover of an expired record by any concurrent duplicate.
        try:
            return store._fetch(info, self.NO_WAIT + store.sql.select + " LOCK IN SHARE MODE")
        except OperationalError as exc:
            self._refusal(exc)  # raises anything but a lock wait
            return None

    def insert(
        self, store: DatabaseStore, params: list[Any], info: RequestInfo, lock_timeout: timedelta
    ) -> Attempt:
        for _ in range(self.ATTEMPTS):
            attempt = self._run(store, store.sql.claim, params, pk=None)
            if attempt.result != BUSY:
                return attempt
            # The lock that stopped the insert may not be on this key: a
            # replay's failed insert holds a next-key lock on the record it
            # met, which covers the gap before it, where this key may sort. A
            # locking read of the key itself tells: it fails at once if a
            # transaction is writing the key, finds a record committed
            # meanwhile, or finds nothing, and then the gap was all.
            try:
                with store.connection.cursor() as cursor:
                    cursor.execute(self.NO_WAIT + store.sql.lock, [info.scope, info.key])
                    if cursor.fetchone() is not None:
                        return Attempt(EXISTS)
            except OperationalError as exc:
                self._refusal(exc)  # raises anything but a lock wait
                return attempt
        return attempt

    def take_over(
        self, store: DatabaseStore, pk: int, params: list[Any], info: RequestInfo
    ) -> Attempt:
        params = takeover_params(store, pk, params, info)
        return self._run(store, store.sql.take_over, params, pk=pk)

    def _run(self, store: DatabaseStore, sql: str, params: list[Any], pk: int | None) -> Attempt:
        # InnoDB rolls back only the failed statement, so catching its error
        # leaves the transaction (and any savepoint around it) usable.
        try:
            with store.connection.cursor() as cursor:
                cursor.execute(sql, params)
                if pk is None:
                    return Attempt(CLAIMED, cursor.lastrowid)
                return Attempt(CLAIMED if cursor.rowcount == 1 else GONE, pk)
        except (IntegrityError, OperationalError) as exc:
            return Attempt(self._refusal(exc))

    def _refusal(self, exc: IntegrityError | OperationalError) -> str:
        """What an error of the claim's statements means, or the error again."""
        code = exc.args[0] if exc.args else None
        if code not in self.ERRORS:
            raise exc
        return self.ERRORS[code]


class SQLiteDialect(Dialect):
    """SQLite has one writer at a time. A failed claim is the only statement
    that can meet the lock: once it has run, this transaction holds the
    database's write lock, so a takeover after it never waits."""

    def claim_sql(
        self, sql: Statements, column: Callable[[str], str], take_over: bool = False
    ) -> str:
        return f"{sql.insert} ON CONFLICT ({column('scope')}, {column('key')}) DO NOTHING"

    def insert(
        self, store: DatabaseStore, params: list[Any], info: RequestInfo, lock_timeout: timedelta
    ) -> Attempt:
        try:
            with store.connection.cursor() as cursor:
                cursor.execute(store.sql.claim, params)
                if cursor.rowcount == 1:
                    return Attempt(CLAIMED, cursor.lastrowid)
                return Attempt(EXISTS)
        except OperationalError as exc:
            if not _sqlite_locked(exc):
                raise
            return Attempt(BUSY)


def max_allowed_packet(connection: BaseDatabaseWrapper, fresh: bool = False) -> int:
    """The largest statement the MariaDB server of ``connection`` accepts.

    Read once per process and database: it is a global of the server that
    a session cannot change, and reading it on every new connection would
    cost a statement per request where connections are not kept. A server
    reconfigured meanwhile is seen by processes started after it (and by the
    system checks, which read it ``fresh``).
    """
    where = connection.settings_dict
    known = (connection.alias, where.get("HOST"), where.get("PORT"), where.get("NAME"))
    if fresh or known not in MAX_ALLOWED_PACKETS:
        with connection.cursor() as cursor:
            cursor.execute("SELECT @@max_allowed_packet")
            MAX_ALLOWED_PACKETS[known] = int(cursor.fetchone()[0])
    return MAX_ALLOWED_PACKETS[known]


MAX_ALLOWED_PACKETS: dict[tuple[Any, ...], int] = {}


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


POSTGRESQL, MARIADB, SQLITE = PostgreSQLDialect(), MariaDBDialect(), SQLiteDialect()


def dialect_for(connection: BaseDatabaseWrapper) -> Dialect:
    if connection.vendor == "postgresql":
        return POSTGRESQL
    if connection.vendor == "sqlite":
        return SQLITE
    if connection.vendor == "mysql" and connection.mysql_is_mariadb:  # type: ignore[attr-defined]
        return MARIADB
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
