"""SQLite's own claim path: writers are serialised, so a duplicate cannot run
while the first holds the database's write lock."""

from __future__ import annotations

import pytest

from tests.concurrency import duplicate_of_a_held_request


@pytest.mark.vendor("sqlite")
@pytest.mark.django_db(transaction=True)
def test_a_duplicate_of_a_held_request_gets_409_then_the_replay(user, gate):
    # Django's in-memory test database is shared between threads in SQLite's
    # shared-cache mode, where a locked table fails at once ("database table
    # is locked"); a file database fails after its busy timeout instead.
    duplicate_of_a_held_request(user, gate)
