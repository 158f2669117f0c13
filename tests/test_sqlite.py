"""SQLite's own claim path: writers are serialised, so a duplicate cannot run
while the first holds the database's write lock."""

from __future__ import annotations

import uuid

import pytest

from idempotency.backends.database import MySQLDialect
from tests.concurrency import URL, Threads, send
from tests.testapp.models import Execution


@pytest.mark.vendor("sqlite")
@pytest.mark.django_db(transaction=True)
def test_a_duplicate_of_a_held_request_gets_409_then_the_replay(user, gate):
    # Django's in-memory test database is shared between threads in SQLite's
    # shared-cache mode, where a locked table fails at once ("database table
    # is locked"); a file database fails after its busy timeout instead.
    name, held = gate
    key = str(uuid.uuid4())
    url = f"{URL}?gate={name}"
    first = Threads([lambda: send(user, key, url)])
    assert held.entered.wait(timeout=10)
    duplicate = send(user, key, url)
    assert duplicate.status_code == 409
    held.release.set()
    (original,) = first.join()
    assert original.status_code == 201
    replay = send(user, key, url)
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == original.content
    assert Execution.objects.filter(key=key).count() == 1


def test_mysql_gets_the_lock_wait_as_an_optimizer_hint():
    # MySQL has no SET STATEMENT; its hint cannot go below one second.
    mysql = MySQLDialect(is_mariadb=False)
    assert mysql.no_wait("INSERT INTO t (a) VALUES (%s)") == (
        "INSERT /*+ SET_VAR(innodb_lock_wait_timeout=1) */ INTO t (a) VALUES (%s)"
    )
    assert MySQLDialect(is_mariadb=True).no_wait("UPDATE t SET a = 1") == (
        "SET STATEMENT innodb_lock_wait_timeout=0 FOR UPDATE t SET a = 1"
    )
