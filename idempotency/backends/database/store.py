"""The database store: records in the Django database, claimed in the
transaction the handler runs in (the package's docstring says how)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, cast

from django.db import DatabaseError, OperationalError, connections, transaction
from django.utils import timezone

# The module, not its model: see statements.py.
from ... import models, problems
from ..base import (
    Claim,
    Completion,
    Failure,
    Outcome,
    RequestInfo,
    ResponseTooLarge,
    Store,
    StoredResponse,
)
from .base import Dialect, Result
from .dialects import dialect_for
from .statements import COLUMNS, Record, Statements, field, statements_for


class DatabaseStore(Store):
    """Claims, completes and reads records on one database alias."""

    name = "database"
    transactional = True
    unavailable = problems.DATABASE_UNAVAILABLE
    outage = "Database session lost"

    def __init__(self, alias: str) -> None:
        # No I/O: the dialect (MariaDB or MySQL may take a query to tell) is
        # resolved on entering the unit of work.
        self.alias = alias
        self.connection = connections[alias]
        self._dialect: Dialect | None = None
        self._session: object | None = None
        # The handler rolled its own work back: so must any transaction
        # around the unit (ATOMIC_REQUESTS), as without the package.
        self._roll_back_around = False
        # The claim met a database that takes no writes.
        self._read_only = False

    @property
    def dialect(self) -> Dialect:
        if self._dialect is None:
            self._dialect = dialect_for(self.connection)
        return self._dialect

    @property
    def sql(self) -> Statements:
        return statements_for(self.connection, self.dialect)

    @contextmanager
    def unit(self) -> Iterator[None]:
        """The claim's transaction, which the handler's writes join."""
        # Telling MariaDB from MySQL may connect: a refused connection
        # raises here, with no session to lose.
        self.dialect  # noqa: B018
        self._session = self._open_session()
        try:
            with transaction.atomic(using=self.alias):
                yield
        finally:
            if self._roll_back_around and self.connection.in_atomic_block:
                transaction.set_rollback(True, using=self.alias)

    def _open_session(self) -> object:
        """The database session: the driver's connection under Django's,
        opened now if need be (a refused connection raises here)."""
        self.connection.ensure_connection()
        return self.connection.connection

    def _session_alive(self, session: object) -> bool:
        """Whether ``session`` survived an error. Django closes a connection
        whose rollback failed, and leaving the atomic block may open a new
        one at once: a lost session is a different connection, or none, or
        one its driver reports lost."""
        return (
            session is not None
            and self.connection.connection is session
            and self.dialect.alive(self.connection)
        )

    def failure(self, exc: Exception, storing: bool) -> Failure | None:
        # Whatever the error's class (PostgreSQL reports a session ended for
        # idling as an InternalError), what matters is whether the session
        # survived it. If the database refused the connection, restarted or
        # ended this session, whatever the handler did either committed with
        # its stored response or vanished with the claim: a retry is safe.
        # Errors on a live connection stay the 500 they are, but two: the
        # claim refused by a database that takes no writes (a replica, a
        # primary being failed over), before anything ran; and storing the
        # response, or committing, lost to a concurrent transaction, which
        # rolled everything back.
        if not isinstance(exc, DatabaseError):
            return None
        if self._dialect is None or not self._session_alive(self._session):
            return Failure.UNAVAILABLE
        if self._read_only:
            self.outage = "Database took no writes (a replica, or a primary being failed over)"
            return Failure.UNAVAILABLE
        if storing and self._dialect.conflict(exc):
            return Failure.CONFLICT
        return None

    def rolled_back(self) -> bool:
        """Whether the claim's transaction can only roll back now: the
        handler marked it (``transaction.set_rollback(True)``, or an error
        inside an ``atomic(savepoint=False)`` or an ORM write), or, on
        PostgreSQL, an error it caught aborted the transaction. If so, any
        transaction around the unit rolls back too once it is left."""
        self._roll_back_around = self.connection.needs_rollback or self.dialect.aborted(
            self.connection
        )
        return self._roll_back_around

    def release(self, claim: Claim) -> None:
        # The claim goes with the handler's effects when the unit is left.
        transaction.set_rollback(True, using=self.alias)

    def claim(self, info: RequestInfo, lease: timedelta) -> Claim:
        """Insert the in-flight record for ``info``, or report what holds the key.

        Must run inside ``unit()``: the claim lasts as long as the transaction.
        """
        return self._claim_or_conflict(info, lease, None)

    def wait(self, info: RequestInfo, lease: timedelta, timeout: timedelta) -> Claim:
        """Wait on the key's lock (PostgreSQL) or its record's (MariaDB) for
        the transaction that holds it to end, then claim again, in the same
        statement where the database allows."""
        return self._claim_or_conflict(info, lease, timeout)

    def _claim_or_conflict(
        self, info: RequestInfo, lease: timedelta, wait: timedelta | None
    ) -> Claim:
        try:
            return self._claim(info, lease, wait)
        except DatabaseError as exc:
            # Only the claim's own refusal counts: the first write of the
            # request, before the handler ran. The same error from the
            # handler's statements (on another alias, say) says nothing of
            # the key table's database, and stays the 500 it is.
            self._read_only = self.dialect.read_only(exc)
            if not isinstance(exc, OperationalError) or not self.dialect.conflict(exc):
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

    def parameters(self, info: RequestInfo, lease: timedelta) -> dict[str, Any]:
        """A claim's parameters: the in-flight record's columns, and ``now``
        for the expiry tests."""
        adapt = self.connection.ops.adapt_datetimefield_value
        values = dict.fromkeys(COLUMNS)
        values.update(
            scope=info.scope,
            key=info.key,
            fingerprint=info.fingerprint,
            state=str(models.IdempotencyKey.State.IN_FLIGHT),
            method=info.method,
            path=info.path,
            created_at=adapt(info.now),
            expires_at=adapt(info.now + lease),
        )
        return {**values, "now": adapt(info.now)}

    def _claim(self, info: RequestInfo, lease: timedelta, wait: timedelta | None) -> Claim:
        dialect, sql = self.dialect, self.sql
        params = self.parameters(info, lease)
        if wait is None:
            attempt = dialect.insert(self.connection, sql, params, lease)
        else:
            attempt = dialect.wait_insert(self.connection, sql, params, lease, wait)
        if attempt.result is Result.CLAIMED:
            return Claim(
                Outcome.CLAIMED, token=(attempt.pk, info.now, attempt.row), record_id=attempt.pk
            )
        if attempt.result is Result.BUSY:
            return Claim(Outcome.IN_FLIGHT)
        record = attempt.record
        if record is None and attempt.result is Result.EXISTS:
            # MariaDB and SQLite: the failed insert left the record locked
            # for this transaction, so it is there to read.
            record = dialect.fetch(self.connection, sql, params)
        if record is None:
            # PostgreSQL: another transaction holds the key's lock, or
            # committed its record, or the purge deleted an expired one, in
            # the instant since this statement began. In flight, or free
            # again for the client's retry: a 409 is the honest answer.
            return Claim(Outcome.IN_FLIGHT)
        if not record.expired and record.state == models.IdempotencyKey.State.COMPLETED:
            return _completed(record)
        if not record.expired or attempt.result is Result.SHARED:
            # In flight, or (PostgreSQL) another transaction holds the key's
            # lock and may be renewing this expired record.
            return Claim(Outcome.IN_FLIGHT)
        # An expired record (a completed one after its TTL, or one left in
        # flight by a commit the package did not make) is taken over by an
        # UPDATE that repeats the expiry test, so that two requests can never
        # both take it over, nor the purge delete one just renewed.
        taken = dialect.take_over(self.connection, sql, {**params, "id": record.pk})
        if taken.result is Result.CLAIMED:
            return Claim(
                Outcome.CLAIMED, token=(record.pk, info.now, taken.row), record_id=record.pk
            )
        # Taken over, renewed or purged since we read it: in flight, or free
        # again for the client's retry.
        return Claim(Outcome.IN_FLIGHT)

    def complete(self, claim: Claim, response: StoredResponse, ttl: timedelta) -> Completion:
        try:
            expires_at = self.keep(claim, response, ttl)
        except ResponseTooLarge:
            return Completion.TOO_LARGE
        return Completion.TAKEN_OVER if expires_at is None else Completion.STORED

    def keep(self, claim: Claim, response: StoredResponse, ttl: timedelta) -> datetime | None:
        """Store the response on the claimed record, in the claim's transaction,
        and return the record's new expiry.

        Returns ``None`` if the record is no longer this request's claim (its
        lease ran out and another request took it over); the caller must then
        roll back. Raises ``ResponseTooLarge`` if the database would refuse
        the statement.
        """
        pk, claimed_at, row = claim.token
        now = timezone.now()
        adapt = self.connection.ops.adapt_datetimefield_value
        headers = [list(pair) for pair in response.headers]
        params = {
            "state": str(models.IdempotencyKey.State.COMPLETED),
            "status": response.status,
            "headers": field("headers").get_db_prep_save(headers, connection=self.connection),
            "body": field("body").get_db_prep_save(response.body, connection=self.connection),
            "completed_at": adapt(now),
            "expires_at": adapt(now + ttl),
            "id": pk,
            "created_at": adapt(claimed_at),
            "in_flight": str(models.IdempotencyKey.State.IN_FLIGHT),
        }
        sql = self.sql
        if not self.dialect.fits(self.connection, sql.complete, params):
            raise ResponseTooLarge
        with self.connection.cursor() as cursor:
            if row is not None:
                # PostgreSQL: the claimed row by its ctid, without the search
                # of the primary key's index, whose predicate lock (at
                # SERIALIZABLE) would cover the page where every concurrent
                # claim inserts its new id, and fail them at commit. The
                # search by id remains for a row that moved meanwhile (the
                # handler updated it).
                cursor.execute(sql.complete_row, {**params, "row": row})
                if cursor.rowcount == 1:
                    return now + ttl
            cursor.execute(sql.complete, params)
            return now + ttl if cursor.rowcount == 1 else None


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
