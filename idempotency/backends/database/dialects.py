"""Which dialect claims keys on a connection's database."""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper

from .base import Dialect
from .mysql import MARIADB
from .postgresql import POSTGRESQL
from .sqlite import SQLITE


class UnsupportedDatabase(Exception):
    """The key table was placed on a database this package cannot claim on."""


def dialect_for(connection: BaseDatabaseWrapper) -> Dialect:
    """The dialect of ``connection``'s database. Telling MariaDB from MySQL
    may ask the server (Django caches its answer on the connection)."""
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
