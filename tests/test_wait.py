"""WAIT: a duplicate of a request in flight waits for it and replays its
response, instead of a 409 at once; exactly once per key still, proven with
real concurrent transactions on PostgreSQL and MariaDB."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import OperationalError, connection, connections, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from idempotency.backends.database.postgresql import advisory_lock_id
from idempotency.backends.redis.records import Mine
from tests.concurrency import Threads, tally
from tests.helpers import URL, executions, in_flight_record, new_key, send
from tests.testapp.views import OUTSIDE_RUNS

pytestmark = pytest.mark.django_db(transaction=True)

DUPLICATES = 8
# What a waiting duplicate sends beyond what a later replay does: its first
# claim (PostgreSQL: the insert and the probe that finds the key locked),
# then waiting and claiming again (PostgreSQL: the lock_timeout set and
# restored, a savepoint around the lock; MariaDB: a named lock taken and
# released around the waiting INSERT). A constant: waiting longer sends no
# more.
WAITER_EXTRA_STATEMENTS = {"postgresql": 7, "mysql": 4}


def held_duplicates(user, gate, *, fail: bool = False, hold: float = 0.5, url: str = URL):
    """DUPLICATES requests with one key; the one that claims it is held for
    ``hold`` seconds after all have been sent, then released (and raises, if
    ``fail``). Returns the responses and each request's time."""
    name, held = gate
    held.fail_once = fail
    key = new_key()
    # Held by the query string (database views) or a header (the Redis view).
    headers = {"X-Gate": name}
    if not url.startswith("/redis/"):
        url, headers = f"{url}?gate={name}", {}

    def timed():
        start = time.monotonic()
        with CaptureQueriesContext(connection) as statements:
            response = send(user, key, url, headers=headers)
        response.elapsed = time.monotonic() - start
        response.statements = len(statements.captured_queries)
        return response

    threads = Threads([timed] * DUPLICATES)
    assert held.entered.wait(timeout=10)
    time.sleep(hold)  # the others meet the key in flight, and wait
    held.release.set()
    return key, threads.join()


@override_settings(IDEMPOTENCY={"WAIT": 10})
@pytest.mark.server_db
def test_duplicates_wait_and_all_get_the_replay(user, gate):
    key, responses = held_duplicates(user, gate)
    tally("wait: duplicates of a held request", responses, executions(key))
    assert executions(key) == 1
    assert [r.status_code for r in responses] == [201] * DUPLICATES
    originals = [r for r in responses if "Idempotent-Replayed" not in r]
    assert len(originals) == 1
    for response in responses:
        assert response.content == originals[0].content
    assert Counter(r.get("Idempotent-Replayed") for r in responses) == {
        None: 1,
        "true": DUPLICATES - 1,
    }
    # Waiting is blocking on a lock, not polling: a waiter's statements do
    # not grow with the wait (here half a second and more).
    waiters = [r for r in responses if "Idempotent-Replayed" in r]
    assert all(r.elapsed >= 0.4 for r in waiters)
    with CaptureQueriesContext(connection) as replay:
        again = send(user, key, f"{URL}?gate={gate[0]}")
    assert again["Idempotent-Replayed"] == "true"
    extra = max(r.statements for r in waiters) - len(replay.captured_queries)
    assert extra <= WAITER_EXTRA_STATEMENTS[connection.vendor]
    print(
        f"\nwait on {connection.vendor}: waiters waited "
        f"{min(r.elapsed for r in waiters):.2f}-{max(r.elapsed for r in waiters):.2f} s, "
        f"{extra} statements more than a replay"
    )


@override_settings(IDEMPOTENCY={"WAIT": 10})
@pytest.mark.server_db
def test_a_first_request_that_fails_lets_exactly_one_waiter_run(user, gate):
    key, responses = held_duplicates(user, gate, fail=True)
    tally("wait: the held request fails", responses, executions(key))
    assert executions(key) == 1
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {500: 1, 201: DUPLICATES - 1}  # the first failed; none waited in vain
    ran = [r for r in responses if r.status_code == 201 and "Idempotent-Replayed" not in r]
    assert len(ran) == 1
    for response in responses:
        if response.status_code == 201:
            assert response.content == ran[0].content


@override_settings(IDEMPOTENCY={"WAIT": 0.3})
@pytest.mark.server_db
def test_the_deadline_gives_409(user, gate):
    key, responses = held_duplicates(user, gate, hold=1.5)
    assert executions(key) == 1
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 409: DUPLICATES - 1}
    for response in responses:
        if response.status_code == 409:
            assert response["Retry-After"] == "1"
            assert 0.3 <= response.elapsed < 1.4, response.elapsed


REDIS_URL = "/redis/charge/"
REDIS = {"REDIS": "idempotency", "REDIS_ACCELERATOR": False}


@pytest.mark.redis
@override_settings(IDEMPOTENCY={**REDIS, "WAIT": 10})
def test_the_redis_store_wakes_its_waiters_with_the_replay(user, gate, redis_db):
    key, responses = held_duplicates(user, gate, url=REDIS_URL)
    assert OUTSIDE_RUNS[key] == 1
    originals = [r for r in responses if "Idempotent-Replayed" not in r]
    assert [r.status_code for r in responses] == [201] * DUPLICATES
    assert len(originals) == 1
    for response in responses:
        assert response.content == originals[0].content


@pytest.mark.redis
@override_settings(IDEMPOTENCY={**REDIS, "WAIT": 10})
def test_the_redis_store_lets_one_waiter_run_after_a_failure(user, gate, redis_db):
    key, responses = held_duplicates(user, gate, url=REDIS_URL, fail=True)
    # The failed run's effects are outside any transaction: they stand.
    assert OUTSIDE_RUNS[key] == 2
    assert Counter(r.status_code for r in responses) == {500: 1, 201: DUPLICATES - 1}
    assert (
        len([r for r in responses if "Idempotent-Replayed" not in r and r.status_code == 201]) == 1
    )


@pytest.mark.redis
@override_settings(IDEMPOTENCY={**REDIS, "WAIT": 0.3})
def test_the_redis_store_gives_409_at_the_deadline(user, gate, redis_db):
    key, responses = held_duplicates(user, gate, url=REDIS_URL, hold=1.5)
    assert OUTSIDE_RUNS[key] == 1
    assert Counter(r.status_code for r in responses) == {201: 1, 409: DUPLICATES - 1}
    for response in responses:
        if response.status_code == 409:
            assert 0.3 <= response.elapsed < 1.4, response.elapsed


@pytest.mark.redis
@override_settings(IDEMPOTENCY={**REDIS, "WAIT": 8})
def test_the_redis_store_waits_no_longer_than_a_dead_holders_lease(user, redis_db):
    """A worker that died publishes nothing: the wait ends with its lease."""
    from idempotency.backends.redis import scripts
    from idempotency.backends.redis.records import record_key

    key = new_key()
    held = record_key("redis", f"testapp.user:{user.pk}", key)
    assert isinstance(scripts.claim_or_read(redis_db, held, "-", timedelta(seconds=1)), Mine)
    start = time.monotonic()
    response = send(user, key, REDIS_URL)
    assert response.status_code == 201
    assert 0.9 <= time.monotonic() - start < 4
    assert OUTSIDE_RUNS[key] == 1


@pytest.mark.server_db
@pytest.mark.redis
@override_settings(IDEMPOTENCY={"REDIS": "idempotency", "WAIT": 10})
def test_behind_the_accelerator_a_waiter_waits_on_the_database(user, gate, redis_db):
    """The in-flight marker in Redis would answer 409: a waiter goes on to the
    database, and waits there on the key's lock."""
    key, responses = held_duplicates(user, gate)
    assert executions(key) == 1
    assert [r.status_code for r in responses] == [201] * DUPLICATES
    assert len([r for r in responses if "Idempotent-Replayed" not in r]) == 1


@pytest.mark.server_db
def test_a_view_chooses_to_wait(user, gate):
    """idempotency_wait on the view, with the WAIT setting at its default, 0."""
    key, responses = held_duplicates(user, gate, url="/waiting/")
    assert executions(key) == 1
    assert [r.status_code for r in responses] == [201] * DUPLICATES


@override_settings(IDEMPOTENCY={"WAIT": 5})
def test_a_record_nobody_holds_gets_409_at_once(user):
    """A record left in flight by a commit the package did not make: nothing
    will finish it before its lease runs out, so nothing is waited for."""
    key = new_key()
    in_flight_record(user, key, timedelta(minutes=1))
    start = time.monotonic()
    response = send(user, key)
    assert response.status_code == 409
    assert time.monotonic() - start < 1.0
    assert executions(key) == 0


@pytest.mark.vendor("postgresql")
def test_an_error_other_than_the_timeout_is_not_a_409(user):
    """Only lock_timeout means "still in flight"; anything else (here a
    statement_timeout) is raised as it would be without waiting."""
    from idempotency.backends.database import dialect_for
    from idempotency.backends.database.statements import statements_for

    holder = connections.create_connection("default")
    try:
        holder.set_autocommit(False)
        lock = advisory_lock_id("s", "k")
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock])
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL statement_timeout = 100")
            dialect = dialect_for(connection)
            with pytest.raises(OperationalError) as excinfo:
                dialect.wait_insert(
                    connection,
                    statements_for(connection, dialect),
                    {"scope": "s", "key": "k"},
                    timedelta(seconds=60),
                    timedelta(seconds=5),
                )
            transaction.set_rollback(True)
        assert excinfo.value.__cause__.sqlstate == "57014"  # canceled, not timed out
    finally:
        holder.rollback()
        holder.close()
