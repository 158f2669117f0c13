"""SQLite: writers take turns, so a duplicate waits for the first request's
transaction, then replays its record."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from django.db import OperationalError
from django.db.backends.base.base import BaseDatabaseWrapper

from .base import Attempt, Dialect, Result
from .statements import Params, Statements


class SQLiteDialect(Dialect):
    """SQLite has one writer at a time. A failed claim is the only statement
    that can meet the lock: once it has run, this transaction holds the
    database's write lock, so a takeover after it never waits."""

    def claim_sql(
        self, sql: Statements, column: Callable[[str], str], take_over: bool = False
    ) -> str:
        return f"{sql.insert} ON CONFLICT ({column('scope')}, {column('key')}) DO NOTHING"

    def insert(
        self, connection: BaseDatabaseWrapper, sql: Statements, params: Params, lease: timedelta
    ) -> Attempt:
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql.claim, params)
                if cursor.rowcount == 1:
                    return Attempt(Result.CLAIMED, cursor.lastrowid)
                return Attempt(Result.EXISTS)
        except OperationalError as exc:
            if not _locked(exc):
                raise
            # The wait for the other writer (the connection's ``timeout``)
            # ran out: it is still in flight.
            return Attempt(Result.BUSY)


def _locked(exc: OperationalError) -> bool:
    # "database is locked" (another connection writes) or "database table is
    # locked" (shared-cache connections, as in Django's in-memory test database).
    return "locked" in str(exc)


SQLITE = SQLiteDialect()
