"""MariaDB (Django's ``mysql`` backend): a claim that meets another
transaction's lock fails at once instead of waiting for it."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, IntegrityError, OperationalError
from django.db.backends.base.base import BaseDatabaseWrapper

from .base import Attempt, Dialect, Result
from .statements import Params, Record, Statements, read_record


class MariaDBDialect(Dialect):
    # What the claim's errors mean: 1062 (duplicate entry) a committed record
    # is in the way; 1205 (lock wait timeout, at once with a zero wait) and
    # 1969 (max_statement_time, a waiting duplicate's deadline) another
    # transaction is writing the key.
    ERRORS = {1062: Result.EXISTS, 1205: Result.BUSY, 1969: Result.BUSY}
    # InnoDB would wait 50 seconds for the lock of a key in flight; a
    # duplicate must get its 409 at once. InnoDB rolls back only the failed
    # statement, so the transaction stays usable.
    NO_WAIT = "SET STATEMENT innodb_lock_wait_timeout=0 FOR "
    # How long a claim waits for a lock on the gap where its key sorts, once
    # it knows that no transaction holds the key itself.
    GAP_WAIT = "SET STATEMENT innodb_lock_wait_timeout=1, max_statement_time=0.5 FOR "
    # Without the introducer MariaDB checks the bytes against the connection's
    # character set, and warns.
    BINARY_PREFIX = "_binary "
    # Binary and NO PAD: the default collations compare case-insensitively
    # (``abc`` and ``ABC`` would be one key, and one client's new request
    # would get another's replay), and utf8mb4_bin would make "a" equal "a ".
    KEY_COLLATION = "utf8mb4_nopad_bin"

    # InnoDB keeps a deleted row's index entries until its purge thread
    # removes them: batches chosen from the index's beginning would step
    # over those of every batch before.
    PURGE_IN_ORDER = True

    # A claim that meets a lock asks whether the lock is on its own key, and
    # tries again while it is not, this many times in all.
    ATTEMPTS = 3

    # The statement storing a response must fit in the server's
    # max_allowed_packet: past it MariaDB drops the connection, and the
    # request would roll back and answer 503 "retry" on every attempt.
    # What mysqlclient escapes with a backslash inside a quoted literal.
    ESCAPED = tuple(bytes([byte]) for byte in b"\x00\n\r\x1a'\"\\")

    def fits(self, connection: BaseDatabaseWrapper, sql: str, params: Params) -> bool:
        size = len(sql) + sum(self._escaped_size(param) for param in params.values())
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

    def delete_batch_sql(self, table: str, pk: str, expires_at: str) -> str:
        # ``{select}`` is the list of the batch's ids, which its locking
        # SELECT chose in the order of the expiry index (see PURGE_IN_ORDER).
        # By the primary key only (an index hint needs the multiple-table
        # form): on a small table the optimizer may range over the expiry
        # index instead, and wait for the lock of a row the batch skipped
        # (one being taken over).
        return (
            f"DELETE {table} FROM {table} FORCE INDEX (PRIMARY)"
            f" WHERE {pk} IN ({{select}}) AND {expires_at} < %s"
        )

    # Error 1020 (ER_CHECKREAD, "Record has changed since last read"): with
    # innodb_snapshot_isolation=ON (the default from MariaDB 11.6.2), a
    # locking read or write of a record committed after the read view; and
    # 1213, a deadlock. InnoDB rolls back the whole transaction for both.
    CONFLICTS = frozenset({1020, 1213})

    def conflict(self, exc: DatabaseError) -> bool:
        return bool(exc.args) and exc.args[0] in self.CONFLICTS

    # 1792: the transaction is READ ONLY; 1836: the server is in read-only
    # mode. 1290 is any server option that prevents the statement: only
    # --read-only (a replica's) is this case, not --secure-file-priv.
    READ_ONLY = frozenset({1792, 1836})
    OPTION_PREVENTS_STATEMENT = 1290

    def read_only(self, exc: DatabaseError) -> bool:
        code = exc.args[0] if exc.args else None
        return code in self.READ_ONLY or (
            code == self.OPTION_PREVENTS_STATEMENT and "--read-only" in str(exc.args[-1])
        )

    def fetch(
        self, connection: BaseDatabaseWrapper, sql: Statements, params: Params
    ) -> Record | None:
        record = read_record(connection, sql.select, params)
        if record is not None:
            return record
        # At REPEATABLE READ a plain read reads the transaction's read view,
        # which (under ATOMIC_REQUESTS, taken by the request's first read)
        # may predate the record the insert met. A locking read reads the
        # latest committed version. Only then: its shared lock would stop
        # the takeover of an expired record by any concurrent duplicate.
        try:
            return read_record(
                connection, self.NO_WAIT + sql.select + " LOCK IN SHARE MODE", params
            )
        except OperationalError as exc:
            self._refusal(exc)  # raises anything but a lock wait
            return None

    def insert(
        self, connection: BaseDatabaseWrapper, sql: Statements, params: Params, lease: timedelta
    ) -> Attempt:
        statement = sql.claim
        for _ in range(self.ATTEMPTS):
            attempt = self._run(connection, statement, params)
            if attempt.result is not Result.BUSY:
                return attempt
            # The lock that stopped the insert may not be on this key: a
            # replay's failed insert holds a next-key lock on the record it
            # met, which covers the gap before it, where this key may sort. A
            # locking read of the key itself tells: it fails at once if a
            # transaction is writing the key, finds a record committed
            # meanwhile, or finds nothing, and then the gap was all.
            try:
                with connection.cursor() as cursor:
                    cursor.execute(self.NO_WAIT + sql.lock, params)
                    if cursor.fetchone() is not None:
                        return Attempt(Result.EXISTS)
            except OperationalError as exc:
                self._refusal(exc)  # raises anything but a lock wait
                return attempt
            # Nobody holds this key: the gap's holder, another key's short
            # transaction, is worth waiting for (briefly), where an insert
            # that does not wait could meet its lock again, and answer a
            # 409 for a key nobody else uses.
            statement = f"{self.GAP_WAIT}{sql.insert}"
        return attempt

    def wait_insert(
        self,
        connection: BaseDatabaseWrapper,
        sql: Statements,
        params: Params,
        lease: timedelta,
        timeout: timedelta,
    ) -> Attempt:
        """The claim's INSERT, waiting for the transaction that inserted the
        key to end: it then meets the committed record (EXISTS, and the
        failed insert leaves it locked for this transaction to read), or
        inserts its own if that one rolled back.

        Waiters take turns under a named lock (GET_LOCK), released as soon
        as the INSERT returns: two INSERTs that waited together for a record
        that then rolled back would deadlock (each holds the shared lock of
        the duplicate check, and wants the other's), and InnoDB would roll
        one back whole. The lock wait is bounded by max_statement_time, in
        fractions of a second, since innodb_lock_wait_timeout counts whole
        seconds."""
        deadline = time.monotonic() + max(timeout.total_seconds(), 0.001)
        name = (
            "idempotency:"
            + hashlib.sha256(f"{params['scope']}\n{params['key']}".encode()).hexdigest()[:48]
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, %s)", [name, _left(deadline)])
            if cursor.fetchone()[0] != 1:
                return Attempt(Result.BUSY)
            try:
                seconds = _left(deadline)
                waiting = (
                    f"SET STATEMENT innodb_lock_wait_timeout={math.ceil(seconds)},"
                    f" max_statement_time={seconds:.3f} FOR {sql.insert}"
                )
                return self._run(connection, waiting, params)
            finally:
                cursor.execute("SELECT RELEASE_LOCK(%s)", [name])

    def take_over(
        self, connection: BaseDatabaseWrapper, sql: Statements, params: Params
    ) -> Attempt:
        return self._run(connection, sql.take_over, params)

    def _run(self, connection: BaseDatabaseWrapper, sql: str, params: Params) -> Attempt:
        """Run a claim (``params`` without an id) or a takeover (of the
        record ``params["id"]``)."""
        pk = params.get("id")
        # InnoDB rolls back only the failed statement, so catching its error
        # leaves the transaction (and any savepoint around it) usable.
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                if pk is None:
                    return Attempt(Result.CLAIMED, cursor.lastrowid)
                return Attempt(Result.CLAIMED if cursor.rowcount == 1 else Result.GONE, pk)
        except (IntegrityError, OperationalError) as exc:
            return Attempt(self._refusal(exc))

    def _refusal(self, exc: IntegrityError | OperationalError) -> Result:
        """What an error of the claim's statements means, or the error again."""
        code = exc.args[0] if exc.args else None
        if code not in self.ERRORS:
            raise exc
        return self.ERRORS[code]


def _left(deadline: float) -> float:
    """Seconds until ``deadline`` (a ``time.monotonic()``), a millisecond at least."""
    return max(deadline - time.monotonic(), 0.001)


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

MARIADB = MariaDBDialect()
