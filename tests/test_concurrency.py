"""Exactly once, atomic, scoped and crash safe, under real concurrent transactions.

Each request runs in its own thread with its own database connection, so the
transactions really overlap on PostgreSQL and MariaDB. What counts as an
execution is a committed ``Execution`` row, read back from the database.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import IntegrityError, OperationalError, connection, connections, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from idempotency.models import IdempotencyKey
from tests.concurrency import (
    Threads,
    assert_one_original,
    duplicate_of_a_held_request,
    in_another_thread,
    kill_session,
    tally,
)
from tests.helpers import URL, executions, new_key, send
from tests.testapp.models import Execution

pytestmark = [pytest.mark.server_db, pytest.mark.django_db(transaction=True)]

DUPLICATES = 12
ROUNDS = 5


def duplicates_while_the_first_is_held(user, gate, label: str) -> None:
    """One round: DUPLICATES requests with one key, released together; the one
    that claims it is held until every other has been answered."""
    name, held = gate
    key = new_key()
    held.entered.clear()
    held.release.clear()
    threads = Threads([lambda: send(user, key, f"{URL}?gate={name}")] * DUPLICATES)
    assert held.entered.wait(timeout=10)
    threads.wait_until_finished(DUPLICATES - 1)
    held.release.set()
    responses = threads.join()
    tally(label, responses, executions(key))
    assert Counter(r.status_code for r in responses) == {201: 1, 409: DUPLICATES - 1}
    assert executions(key) == 1


def test_g1_simultaneous_duplicates_run_once_while_the_first_is_held(user, gate):
    for _round in range(ROUNDS):
        duplicates_while_the_first_is_held(user, gate, "duplicates while the first is held")


def test_g1_simultaneous_duplicates_run_once(user):
    for _round in range(ROUNDS):
        key = new_key()
        responses = Threads([lambda key=key: send(user, key)] * DUPLICATES).join()
        tally("duplicates released together", responses, executions(key))
        assert executions(key) == 1
        assert_one_original(responses)


def test_g1_anonymous_duplicates_run_once():
    # Anonymous clients share one scope: simultaneous copies of one request
    # with one key run once, whoever sends them.
    def anonymous(key: str):
        client = APIClient(raise_request_exception=False)
        return client.post(
            "/anonymous/", {"a": 1}, format="json", headers={"Idempotency-Key": key}
        )

    for _round in range(ROUNDS):
        key = new_key()
        responses = Threads([lambda key=key: anonymous(key)] * DUPLICATES).join()
        tally("anonymous duplicates released together", responses, executions(key))
        assert executions(key) == 1
        bodies = {r.content for r in responses if r.status_code == 201}
        assert len(bodies) == 1
        assert {r.status_code for r in responses} <= {201, 409}


def test_a_duplicate_gets_a_prompt_409_then_the_replay(user, gate):
    elapsed = duplicate_of_a_held_request(user, gate)
    assert elapsed < 1.0  # the contract's "well under a second": no lock wait


def test_distinct_keys_run_in_parallel(user, barrier):
    # All handlers must be inside their transactions at the same moment: if one
    # claim waited for another, the barrier in the handler would break.
    name = barrier(DUPLICATES)
    url = f"{URL}?barrier={name}"
    keys = [new_key() for _ in range(DUPLICATES)]
    responses = Threads([lambda key=key: send(user, key, url) for key in keys]).join()
    assert [r.status_code for r in responses] == [201] * DUPLICATES
    assert Execution.objects.filter(key__in=keys).count() == DUPLICATES


def test_g4_two_users_with_one_key_run_in_parallel(user, other_user, barrier):
    name = barrier(2)
    key = new_key()
    url = f"{URL}?barrier={name}"
    alice, bob = Threads([lambda: send(user, key, url), lambda: send(other_user, key, url)]).join()
    assert alice.status_code == bob.status_code == 201
    assert alice.json()["execution"] != bob.json()["execution"]
    assert executions(key) == 2
    assert send(user, key, url).content == alice.content
    assert send(other_user, key, url).content == bob.content


def test_g2_nothing_is_visible_until_effects_and_record_commit_together(user, gate):
    name, held = gate
    key = new_key()
    first = Threads([lambda key=key: send(user, key, f"{URL}?gate={name}")])
    assert held.entered.wait(timeout=10)
    # Seen from another connection, the handler's write and the claim are
    # both still uncommitted.
    assert executions(key) == 0
    assert not IdempotencyKey.objects.filter(key=key).exists()
    held.release.set()
    first.join()
    assert executions(key) == 1
    assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.COMPLETED


def test_g5_a_worker_that_loses_its_connection_frees_the_key_and_never_runs_twice(user, gate):
    name, held = gate
    key = new_key()
    url = f"{URL}?gate={name}"
    first = Threads([lambda: send(user, key, url)])
    assert held.entered.wait(timeout=10)
    assert send(user, key, url).status_code == 409
    kill_session(held.backend_id)  # the worker "dies": its session is gone
    retry = send(user, key, url.replace(name, "none"))
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    held.release.set()
    (dead,) = first.join()
    # Its store statement found no connection: the client is told to retry.
    assert dead.status_code == 503
    assert dead["Content-Type"] == "application/problem+json"
    assert executions(key) == 1
    assert send(user, key, url.replace(name, "none"))["Idempotent-Replayed"] == "true"


@pytest.mark.vendor("postgresql")
def test_g5_a_hung_worker_loses_its_claim_after_lock_timeout(user, gate, settings):
    # The worker neither finishes nor drops its connection. PostgreSQL ends its
    # session once it has sat idle in its transaction for LOCK_TIMEOUT.
    settings.IDEMPOTENCY = {"LOCK_TIMEOUT": 1}
    name, held = gate
    key = new_key()
    url = f"{URL}?gate={name}"
    first = Threads([lambda: send(user, key, url)])
    assert held.entered.wait(timeout=10)
    assert send(user, key, url).status_code == 409
    deadline = time.monotonic() + 10
    while (retry := send(user, key, url.replace(name, "none"))).status_code == 409:
        assert time.monotonic() < deadline, "the hung worker kept its claim"
        time.sleep(0.2)
    assert retry.status_code == 201
    held.release.set()
    (hung,) = first.join()
    assert hung.status_code == 503
    assert hung["Content-Type"] == "application/problem+json"
    assert executions(key) == 1


def test_an_expired_record_is_taken_over_exactly_once(user):
    for _round in range(ROUNDS):
        key = new_key()
        send(user, key)
        IdempotencyKey.objects.filter(key=key).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
        responses = Threads([lambda key=key: send(user, key)] * DUPLICATES).join()
        fresh = [r for r in responses if r.status_code == 201 and "Idempotent-Replayed" not in r]
        assert len(fresh) == 1
        assert {r.status_code for r in responses} <= {201, 409}
        assert executions(key) == 2  # the expired run, and exactly one new run


@pytest.mark.usefixtures("atomic_requests")
def test_g8_atomic_requests_duplicates_run_once(user, gate):
    for _round in range(2):
        duplicates_while_the_first_is_held(user, gate, "the same under ATOMIC_REQUESTS")


def test_the_purge_skips_a_record_being_taken_over(user, gate):
    # Waiting for the takeover's row lock would hold the purge's other
    # deletions uncommitted, stalling new claims on those keys meanwhile.
    name, held = gate
    taken, other = new_key(), new_key()
    send(user, taken)
    send(user, other)
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    first = Threads([lambda: send(user, taken, f"{URL}?gate={name}")])
    assert held.entered.wait(timeout=10)
    deleted = []
    in_another_thread(lambda: deleted.append(IdempotencyKey.objects.purge()))  # not blocked
    # PostgreSQL skips exactly the locked row; MariaDB's SKIP LOCKED may also
    # pass over its neighbours, which the next purge then removes.
    assert deleted in ([1], [0])
    held.release.set()
    (response,) = first.join()
    assert response.status_code == 201
    IdempotencyKey.objects.purge()
    assert list(IdempotencyKey.objects.values_list("key", "state")) == [
        (taken, IdempotencyKey.State.COMPLETED)
    ]


def hold_lock_in_another_transaction(sql: str, params: list) -> Callable[[], None]:
    """Run ``sql`` in a transaction of another connection and keep its locks
    until the returned function is called (failing statements included: a
    failed statement keeps the locks it took until the transaction ends)."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                with contextlib.suppress(IntegrityError):
                    cursor.execute(sql, params)
                holding.set()
                release.wait(timeout=10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(timeout=10)

    def end() -> None:
        release.set()
        thread.join(timeout=10)

    return end


def ending_after_the_first_refused_claim(end: Callable[[], None]):
    """An execute wrapper that ends the other transaction once this
    connection's claim has met its lock, as a short one would end by itself."""
    refused = []

    def wrapper(execute, sql, params, many, context):
        try:
            return execute(sql, params, many, context)
        except OperationalError:
            if not refused:
                refused.append(sql)
                end()
            raise

    return wrapper, refused


TABLE = IdempotencyKey._meta.db_table
# A replay's INSERT of an existing key: it fails, and keeps a shared next-key
# lock on the record it met, which also covers the gap before that record.
REPLAY_OF_M = (
    f"INSERT INTO {TABLE} (scope, `key`, fingerprint, state, method, path, created_at,"
    f" expires_at) SELECT scope, `key`, fingerprint, state, method, path, created_at,"
    f" expires_at FROM {TABLE} WHERE `key` = 'm'"
)


@pytest.mark.vendor("mysql")
def test_a_new_key_next_to_a_locked_gap_is_claimed_not_refused(user):
    # A new key that sorts into the gap a replay has locked could not insert
    # at once, and was answered 409 although nobody held it (the load harness
    # met this). The claim now asks whether the key itself is locked, and
    # tries again when it is not.
    assert send(user, "m").status_code == 201
    end = hold_lock_in_another_transaction(REPLAY_OF_M, [])
    wrapper, refused = ending_after_the_first_refused_claim(end)
    with connection.execute_wrapper(wrapper):
        response = send(user, "l")  # sorts just before "m", into the locked gap
    end()
    assert refused, "the claim never met the gap lock"
    assert response.status_code == 201
    assert executions("l") == 1


@pytest.mark.vendor("mysql")
def test_a_gap_locked_through_every_attempt_answers_409(user):
    # Bounded: a gap that stays locked through every attempt is answered as a
    # key in flight, and the client's retry a second later claims it.
    assert send(user, "m").status_code == 201
    end = hold_lock_in_another_transaction(REPLAY_OF_M, [])
    try:
        assert send(user, "l").status_code == 409
    finally:
        end()
    assert send(user, "l").status_code == 201
    assert executions("l") == 1


@pytest.mark.vendor("mysql")
def test_a_record_whose_lock_ends_during_the_claim_is_replayed(user):
    # Another transaction holds the completed record "m" (as a takeover or the
    # purge would); the claim's insert cannot check it at once, but the record
    # is committed and free by the time the claim looks at the key itself.
    first = send(user, "m")
    end = hold_lock_in_another_transaction(
        f"SELECT id FROM {TABLE} WHERE `key` = 'm' FOR UPDATE", []
    )
    wrapper, refused = ending_after_the_first_refused_claim(end)
    with connection.execute_wrapper(wrapper):
        replay = send(user, "m")
    end()
    assert refused, "the claim never met the record's lock"
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert executions("m") == 1
