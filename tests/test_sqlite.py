"""SQLite's own claim path: writers are serialised, so a duplicate cannot run
while the first holds the database's write lock."""

from __future__ import annotations

import pytest

from idempotency.backends.database import MySQLDialect
from tests.concurrency import duplicate_of_a_held_request


@pytest.mark.vendor("sqlite")
@pytest.mark.django_db(transaction=True)
def test_a_duplicate_of_a_held_request_gets_409_then_the_replay(user, gate):
    # Django's in-memory test database is shared between threads in SQLite's
    # shared-cache mode, where a locked table fails at once ("database table
    # is locked"); a file database fails after its busy timeout instead.
    duplicate_of_a_held_request(user, gate)


def test_mysql_gets_the_lock_wait_as_an_optimizer_hint():
    # MySQL has no SET STATEMENT; its hint cannot go below one second.
    mysql = MySQLDialect(is_mariadb=False)
    assert mysql.no_wait("INSERT INTO t (a) VALUES (%s)") == (
        "INSERT /*+ SET_VAR(innodb_lock_wait_timeout=1) */ INTO t (a) VALUES (%s)"
    )
    assert MySQLDialect(is_mariadb=True).no_wait("UPDATE t SET a = 1") == (
        "SET STATEMENT innodb_lock_wait_timeout=0 FOR UPDATE t SET a = 1"
    )
