"""What every database's dialect offers the store, and what its claim found."""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError
from django.db.backends.base.base import BaseDatabaseWrapper

from .statements import Params, Record, Statements, read_record


class Result(enum.Enum):
    """What one claim or takeover statement found."""

    CLAIMED = "claimed"  # the row is this request's
    BUSY = "busy"  # another transaction is writing the key
    # Another transaction holds the key's lock (PostgreSQL), which replays
    # take too: a completed record may still be replayed, but an expired one
    # may be being renewed, so it is not taken over.
    SHARED = "shared"
    EXISTS = "exists"  # a committed record is in the way
    GONE = "gone"  # the record to take over was renewed or deleted meanwhile


@dataclass(frozen=True)
class Attempt:
    result: Result
    pk: int | None = None
    # The record in the way, when the claim statement could read it too.
    record: Record | None = None
    # PostgreSQL: the claimed row's ctid, to store the response by.
    row: str | None = None


class Dialect(abc.ABC):
    """The statements that differ by database, and how to read its errors."""

    # What comes before a bytes parameter in SQL (Django's own
    # binary_placeholder_sql() changed its signature in Django 6.0).
    BINARY_PREFIX = ""
    # Whether the purge's batches follow the expiry index in order, each
    # picking up where the last one ended (see IdempotencyKeyQuerySet).
    PURGE_IN_ORDER = False
    # The collation of the scope and key columns, where the database's
    # default would not compare them byte for byte.
    KEY_COLLATION: str | None = None

    @abc.abstractmethod
    def claim_sql(
        self, sql: Statements, column: Callable[[str], str], take_over: bool = False
    ) -> str: ...

    def take_over_sql(self, sql: Statements) -> str:
        return sql.update

    def probe_sql(self, sql: Statements) -> str:
        return ""

    def complete_row_sql(self, sql: Statements, column: Callable[[str], str]) -> str:
        return ""

    def delete_batch_sql(self, table: str, pk: str, expires_at: str) -> str:
        """The purge's ``DELETE`` of the rows that ``{select}`` (the ORM's
        query of a batch) chooses, if still expired (positional ``%s``, as
        the ORM's own parameters are). Names come quoted."""
        return f"DELETE FROM {table} WHERE {pk} IN ({{select}}) AND {expires_at} < %s"

    def conflict(self, exc: DatabaseError) -> bool:
        """Whether ``exc`` says that the transaction lost to a concurrent one
        and was (or must be) rolled back whole: a snapshot that predates a
        committed write of the record it meant to write, a serialization
        failure, a deadlock."""
        return False

    def read_only(self, exc: DatabaseError) -> bool:
        """Whether ``exc`` says that the database takes no writes: a replica,
        or a primary demoted or made read-only during a failover. Nothing
        was written, so a retry is safe once writes are taken again."""
        return False

    def standby(self, connection: BaseDatabaseWrapper) -> bool:
        """Whether the server is a replica that takes no writes (the system
        checks ask; requests learn it from :meth:`read_only`)."""
        return False

    def fetch(
        self, connection: BaseDatabaseWrapper, sql: Statements, params: Params
    ) -> Record | None:
        """The record of the claim's key, after an insert that met it."""
        return read_record(connection, sql.select, params)

    def alive(self, connection: BaseDatabaseWrapper) -> bool:
        return connection.is_usable()

    def aborted(self, connection: BaseDatabaseWrapper) -> bool:
        """Whether an error aborted the transaction (MariaDB and SQLite roll
        back only the failed statement)."""
        return False

    def fits(self, connection: BaseDatabaseWrapper, sql: str, params: Params) -> bool:
        """Whether the server accepts ``sql`` with ``params`` as one statement."""
        return True

    @abc.abstractmethod
    def insert(
        self, connection: BaseDatabaseWrapper, sql: Statements, params: Params, lease: timedelta
    ) -> Attempt:
        """Run the claim statement with the claim's ``params``."""

    def wait_insert(
        self,
        connection: BaseDatabaseWrapper,
        sql: Statements,
        params: Params,
        lease: timedelta,
        timeout: timedelta,
    ) -> Attempt:
        """Run the claim statement after waiting up to ``timeout`` for the
        transaction that holds the key to end; ``BUSY`` if it still holds it
        then. SQLite makes a duplicate wait for the first already."""
        return Attempt(Result.BUSY)

    def take_over(
        self, connection: BaseDatabaseWrapper, sql: Statements, params: Params
    ) -> Attempt:
        """Take the expired record ``params["id"]`` over with the claim's
        ``params``, unless it was renewed meanwhile."""
        with connection.cursor() as cursor:
            cursor.execute(sql.take_over, params)
            claimed = cursor.rowcount == 1
        return Attempt(Result.CLAIMED if claimed else Result.GONE, params["id"])
