"""The hand-written SQL of the claim, built once per database alias.

Every statement binds named parameters (``%(name)s``, which Django's
PostgreSQL, MySQL and SQLite backends all accept with a dict): a claim's
values are one dict, named after the record's columns (see ``COLUMNS``),
plus ``now``; storing a response or taking a record over adds the record's
``id`` (and ``row``, ``in_flight``; PostgreSQL's claim ``lock`` and
``idle``), and each statement takes from it the names it uses.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings as django_settings
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field
from django.utils import timezone

# The module, not its model: the models ask the dialects for their SQL, so
# this module may be imported while ``idempotency.models`` is still loading.
from ... import models

if TYPE_CHECKING:
    from .base import Dialect

# A statement's parameters, by name.
Params = Mapping[str, Any]

# The columns a claim writes, which name its parameters.
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
# The columns that storing a response writes.
RESPONSE_COLUMNS = ("state", "status", "headers", "body", "completed_at", "expires_at")


@dataclass(frozen=True)
class Statements:
    """The SQL of one database alias: requests only bind parameters (these
    statements are on every protected request)."""

    table: str
    insert: str  # INSERT INTO table (COLUMNS) VALUES (...)
    select: str  # RECORD_COLUMNS and the expiry test, by scope and key
    update: str  # SET COLUMNS, by id and expiry
    # SET the response, by id, claim time (created_at) and state (in_flight)
    complete: str
    complete_row: str = ""  # PostgreSQL: the same, by ctid (row) and id
    lock: str = ""  # MariaDB: a shared lock on the record of (scope, key), if any
    claim: str = ""  # the dialect's claim, built from the above
    # PostgreSQL at SERIALIZABLE: a claim that takes an expired record over
    # in the same statement (see PostgreSQLDialect.claim_sql).
    claim_and_take_over: str = ""
    take_over: str = ""  # the dialect's takeover, built from ``update``
    # PostgreSQL: after a claim that inserted nothing, the record in the way
    # and the key's lock (see PostgreSQLDialect.probe_sql).
    probe: str = ""


def field(name: str) -> Field[Any, Any]:
    return cast("Field[Any, Any]", models.IdempotencyKey._meta.get_field(name))


_STATEMENTS: dict[tuple[str, str], Statements] = {}


def statements_for(connection: BaseDatabaseWrapper, dialect: Dialect) -> Statements:
    cache_key = (connection.alias, connection.vendor)
    if cache_key not in _STATEMENTS:
        _STATEMENTS[cache_key] = _build(connection, dialect)
    return _STATEMENTS[cache_key]


def _build(connection: BaseDatabaseWrapper, dialect: Dialect) -> Statements:
    quote = connection.ops.quote_name
    table = quote(models.IdempotencyKey._meta.db_table)

    def column(name: str) -> str:
        return quote(cast(str, field(name).column))

    def set_(names: tuple[str, ...], binary: str = "") -> str:
        # ``binary``: the prefix of the body, when it is bytes (never NULL).
        return ", ".join(
            f"{column(name)} = {binary if name == 'body' else ''}%({name})s" for name in names
        )

    where_key = f" WHERE {column('scope')} = %(scope)s AND {column('key')} = %(key)s"
    statements = Statements(
        table=table,
        insert=(
            f"INSERT INTO {table} ({', '.join(column(name) for name in COLUMNS)})"
            f" VALUES ({', '.join(f'%({name})s' for name in COLUMNS)})"
        ),
        select=(
            f"SELECT {', '.join(column(name) for name in RECORD_COLUMNS)},"
            f" CASE WHEN {column('expires_at')} < %(now)s THEN 1 ELSE 0 END"
            f" FROM {table}{where_key}"
        ),
        update=(
            f"UPDATE {table} SET {set_(COLUMNS)}"
            f" WHERE {column('id')} = %(id)s AND {column('expires_at')} < %(now)s"
        ),
        complete=(
            f"UPDATE {table} SET {set_(RESPONSE_COLUMNS, dialect.BINARY_PREFIX)}"
            f" WHERE {column('id')} = %(id)s AND {column('created_at')} = %(created_at)s"
            f" AND {column('state')} = %(in_flight)s"
        ),
        lock=f"SELECT 1 FROM {table}{where_key} LOCK IN SHARE MODE",
    )
    return dataclasses.replace(
        statements,
        claim=dialect.claim_sql(statements, column),
        claim_and_take_over=dialect.claim_sql(statements, column, take_over=True),
        complete_row=dialect.complete_row_sql(statements, column),
        take_over=dialect.take_over_sql(statements),
        probe=dialect.probe_sql(statements),
    )


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


def read_record(connection: BaseDatabaseWrapper, sql: str, params: Params) -> Record | None:
    """The record that ``sql`` (``select``, or a variant of it) reads."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else Record.from_row(row)


def _as_datetime(value: datetime) -> datetime:
    """A datetime column read by a raw cursor, as the ORM would return it:
    MariaDB and SQLite (through Django's converters) give naive UTC,
    PostgreSQL an aware value."""
    if django_settings.USE_TZ and timezone.is_naive(value):
        value = value.replace(tzinfo=dt_timezone.utc)
    return value
