"""Redis in front of the database store: replays with no SQL, 409s from an
in-flight marker, and the database as the source of truth whenever Redis
forgets, lags or is gone.

Against the real Redis that REDIS_URL names, and the real database; an
outage is a real TCP relay cut between the package and Redis.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.management.sql import emit_post_migrate_signal
from django.db import connections, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_redis import get_redis_connection

from idempotency import accelerator
from idempotency.backends.base import RequestInfo, StoredResponse
from idempotency.models import IdempotencyKey
from tests.concurrency import Threads, assert_one_original, in_another_thread, tally
from tests.helpers import URL, executions, new_key, send
from tests.redis_proxy import caches_with, other_database

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

ACCELERATED = {"REDIS": "idempotency"}


def copies(connection) -> list[bytes]:
    return list(connection.scan_iter(match=b"idempotency:v1:db:default:*"))


class Queries(CaptureQueriesContext):
    """Every SQL statement the request sends on the key table's database."""

    def __init__(self) -> None:
        super().__init__(connections["default"])


@pytest.fixture(autouse=True)
def awake():
    """Each test starts with the accelerator willing to use Redis."""
    accelerator._resting.clear()
    yield
    accelerator._resting.clear()


@pytest.fixture
def redis_db(redis_db):
    """conftest's empty test Redis, with the accelerator in front of the
    database store."""
    with override_settings(IDEMPOTENCY=ACCELERATED):
        yield redis_db


@pytest.fixture
def proxy(redis_db, redis_relay):
    """The accelerator reaching Redis through conftest's relay, which the
    test can cut."""
    caches = caches_with("proxied", redis_relay.url)
    with override_settings(CACHES=caches, IDEMPOTENCY={"REDIS": "proxied"}):
        yield redis_relay


def test_replay_sends_no_sql(user, redis_db):
    key = new_key()
    first = send(user, key)
    assert first.status_code == 201
    with Queries() as queries:
        replay = send(user, key)
        reused = send(user, key, data={"amount": 2})
    assert len(queries) == 0, [query["sql"] for query in queries]
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert replay["Location"] == first["Location"]
    assert reused.status_code == 422
    assert executions(key) == 1


@pytest.mark.server_db
def test_replay_from_redis_opens_no_database_connection(user, redis_db):
    key = new_key()
    first = send(user, key)
    connections["default"].close()
    replay = send(user, key)
    assert replay.content == first.content
    assert connections["default"].connection is None


def test_the_copy_expires_with_the_record(user, redis_db):
    key = new_key()
    with override_settings(IDEMPOTENCY={**ACCELERATED, "TTL": 1}):
        first = send(user, key)
        (copy,) = copies(redis_db)
        record = IdempotencyKey.objects.get(key=key)
        left = (record.expires_at - timezone.now()).total_seconds() * 1000
        assert 0 < redis_db.pttl(copy) <= left + 5
        time.sleep(1.1)
        again = send(user, key)
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again
    assert again.content != first.content
    assert executions(key) == 2


@pytest.mark.server_db
def test_duplicate_in_flight_gets_its_409_from_redis(user, redis_db, gate):
    name, held = gate
    key = new_key()
    url = f"{URL}?gate={name}"
    first = Threads([lambda: send(user, key, url)])
    assert held.entered.wait(timeout=10)
    with Queries() as queries:
        duplicate = send(user, key, url)
    assert duplicate.status_code == 409
    assert duplicate["Retry-After"] == "1"
    assert len(queries) == 0
    assert first.finished() == 0
    held.release.set()
    (original,) = first.join()
    with Queries() as queries:
        replay = send(user, key, url)
    assert len(queries) == 0
    assert replay.content == original.content
    assert executions(key) == 1


def test_flush_between_first_request_and_retry(user, redis_db):
    key = new_key()
    first = send(user, key)
    redis_db.flushdb()
    with Queries() as queries:
        replay = send(user, key)
    # From the database, with the right bytes...
    assert len(queries) >= 1
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert replay["Location"] == first["Location"]
    # ...which puts the copy back, with the record's own expiry.
    (copy,) = copies(redis_db)
    record = IdempotencyKey.objects.get(key=key)
    assert redis_db.pttl(copy) <= (record.expires_at - timezone.now()).total_seconds() * 1000 + 5
    with Queries() as queries:
        again = send(user, key)
    assert len(queries) == 0
    assert again.content == first.content
    assert executions(key) == 1


@pytest.mark.server_db
def test_flush_while_in_flight_leaves_the_database_to_answer(user, redis_db, gate):
    name, held = gate
    key = new_key()
    url = f"{URL}?gate={name}"
    first = Threads([lambda: send(user, key, url)])
    assert held.entered.wait(timeout=10)
    redis_db.flushdb()
    with Queries() as queries:
        duplicate = send(user, key, url)
    assert duplicate.status_code == 409
    assert len(queries) >= 1  # the database's claim said so
    held.release.set()
    (original,) = first.join()
    assert send(user, key, url).content == original.content
    assert executions(key) == 1


@pytest.mark.parametrize("query", ["raise=validation", "raise=error", "status=503"])
def test_a_claim_that_rolls_back_takes_its_marker_along(user, redis_db, query):
    key = new_key()
    failed = send(user, key, f"{URL}?{query}")
    assert failed.status_code in (400, 500, 503)
    assert copies(redis_db) == []
    # The key is free at once: a corrected retry runs, no 409 from Redis.
    assert send(user, key, f"{URL}?{query}").status_code == failed.status_code
    assert executions(key) == 0


def test_a_value_this_package_did_not_write_is_ignored(user, redis_db):
    key = new_key()
    first = send(user, key)
    (copy,) = copies(redis_db)
    redis_db.set(copy, b"\xff not a record")
    replay = send(user, key)
    assert replay.content == first.content
    assert executions(key) == 1


def test_under_atomic_requests_the_copy_follows_the_outer_commit(user, redis_db, atomic_requests):
    key = new_key()
    first = send(user, key)
    assert first.status_code == 201
    (copy,) = copies(redis_db)
    assert json.loads(redis_db.get(copy).partition(b"\n")[0])["state"] == "completed"
    with Queries() as queries:
        replay = send(user, key)
    # Only the transaction ATOMIC_REQUESTS opens around every view.
    assert [q["sql"] for q in queries if q["sql"] not in ("BEGIN", "COMMIT")] == []
    assert replay.content == first.content


@pytest.mark.server_db
def test_concurrent_duplicates_run_exactly_once(user, redis_db):
    for _ in range(4):
        key = new_key()
        responses = Threads([lambda key=key: send(user, key) for _ in range(12)]).join()
        tally("accelerated: duplicates released together", responses, executions(key))
        assert executions(key) == 1
        assert_one_original(responses)


# Outages: the database answers, and the log says so.


def test_unreachable_redis_falls_back_to_the_database(user, proxy, caplog):
    proxy.cut()
    key = new_key()
    first = send(user, key)
    replay = send(user, key)
    assert first.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert executions(key) == 1
    assert "Redis unavailable (read: ConnectionError" in caplog.text
    assert "the database answers alone for the next 5 s" in caplog.text


@pytest.mark.server_db
def test_redis_lost_mid_request(user, proxy, redis_db, gate, caplog):
    name, held = gate
    key = new_key()
    url = f"{URL}?gate={name}"
    with override_settings(IDEMPOTENCY={"REDIS": "proxied", "LOCK_TIMEOUT": 2}):
        first = Threads([lambda: send(user, key, url)])
        assert held.entered.wait(timeout=10)
        (marker,) = copies(redis_db)
        proxy.cut()
        held.release.set()
        (original,) = first.join()
        assert original.status_code == 201
        assert "Redis unavailable (copy" in caplog.text
        # While Redis is away, the database replays.
        assert send(user, key, url).content == original.content
        proxy.restore()
        # Back, Redis still holds the marker set before the outage: a 409
        # at worst, for the marker's short life, then the database's replay.
        assert send(user, key, url).status_code in (201, 409)
        deadline = time.monotonic() + 5
        # Read once a round: the marker may expire between two reads.
        while b'"in_flight"' in (redis_db.get(marker) or b""):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        replay = send(user, key, url)
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == original.content
    assert executions(key) == 1


@pytest.mark.server_db
def test_redis_lost_before_a_failed_claim_is_unmarked(user, proxy, redis_db, gate, caplog):
    name, held = gate
    key = new_key()
    url = f"{URL}?gate={name}&raise=error"
    first = Threads([lambda: send(user, key, url)])
    assert held.entered.wait(timeout=10)
    (marker,) = copies(redis_db)
    proxy.cut()
    held.release.set()
    (failed,) = first.join()
    assert failed.status_code == 500
    assert "Redis unavailable (unmark" in caplog.text
    proxy.restore()
    # The marker outlives the claim, for its short life only.
    assert 0 < redis_db.pttl(marker) <= 5000
    assert executions(key) == 0


# Copies follow commits, and never cross scopes or databases.


def test_a_copy_is_written_only_once_the_response_commits(user, redis_db):
    key = new_key()
    with transaction.atomic():
        first = send(user, key)  # the same connection: the package's block is nested
        assert first.status_code == 201
        # Neither a copy nor the marker outlives the request while the
        # outer transaction may still roll back.
        assert copies(redis_db) == []
        transaction.set_rollback(True)
    assert copies(redis_db) == []
    again = send(user, key)
    assert "Idempotent-Replayed" not in again
    assert executions(key) == 1
    assert len(copies(redis_db)) == 1


def test_a_copy_put_back_waits_for_the_commit_too(user, redis_db):
    key = new_key()
    first = send(user, key)
    redis_db.flushdb()
    with transaction.atomic():
        replay = send(user, key)
        assert replay.content == first.content
        assert copies(redis_db) == []
    assert len(copies(redis_db)) == 1


def states(connection) -> list[str]:
    """What the accelerator keeps under its keys: copies (completed),
    markers (in_flight) and tombstones (deleted)."""
    return sorted(
        json.loads(connection.get(name).partition(b"\n")[0])["state"]
        for name in copies(connection)
    )


def test_a_record_deleted_by_hand_is_replayed_no_more(user, redis_db):
    key = new_key()
    first = send(user, key)
    IdempotencyKey.objects.get(key=key).delete()  # as from the admin
    assert states(redis_db) == ["deleted"]
    again = send(user, key)
    assert "Idempotent-Replayed" not in again
    assert again.content != first.content
    assert executions(key) == 2
    # The new record's copy replaces the tombstone.
    assert states(redis_db) == ["completed"]
    assert send(user, key).content == again.content


def test_a_retry_while_the_deletion_commits_never_gets_the_deleted_record(user, redis_db):
    key = new_key()
    first = send(user, key)
    with transaction.atomic():
        IdempotencyKey.objects.get(key=key).delete()
        assert states(redis_db) == ["deleted"]
        # Sent while the deletion is uncommitted: the database makes it wait
        # for the deletion (PostgreSQL) or answers 409 (MariaDB, SQLite).
        retry = Threads([lambda: send(user, key)])
        time.sleep(0.2)
    (during,) = retry.join()
    assert during.status_code in (201, 409)
    assert during.content != first.content
    again = send(user, key)
    assert again.content != first.content
    assert executions(key) == 2


def test_a_deletion_that_rolls_back_leaves_the_database_to_replay(user, redis_db):
    key = new_key()
    first = send(user, key)
    with transaction.atomic():
        IdempotencyKey.objects.get(key=key).delete()
        transaction.set_rollback(True)
    # The tombstone stays until the record would have expired: the database
    # replays it, and no copy comes back meanwhile.
    replay = send(user, key)
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert states(redis_db) == ["deleted"]
    assert executions(key) == 1


def test_a_deletion_while_the_accelerator_rests_still_replaces_the_copy(user, redis_db):
    key = new_key()
    send(user, key)
    accelerator._rest("idempotency", "a Redis error a moment ago")
    IdempotencyKey.objects.get(key=key).delete()
    assert states(redis_db) == ["deleted"]
    accelerator._resting.clear()
    assert "Idempotent-Replayed" not in send(user, key)
    assert executions(key) == 2


@pytest.mark.vendor("postgresql")  # elsewhere the replay's read locks the row
def test_a_copy_read_before_a_deletion_is_not_put_back_after_it(user, redis_db):
    key = new_key()
    send(user, key)
    redis_db.flushdb()  # the retry must read the record from the database
    with transaction.atomic():
        replay = send(user, key)  # read now, copied when this commits
        assert replay["Idempotent-Replayed"] == "true"
        in_another_thread(lambda: IdempotencyKey.objects.filter(key=key).delete())
    assert states(redis_db) == ["deleted"]
    again = send(user, key)
    assert "Idempotent-Replayed" not in again
    assert executions(key) == 2


def test_copies_and_tombstones_never_replace_a_newer_records(user, redis_db):
    accelerated = accelerator.for_database("default")
    info = RequestInfo("scope", new_key(), "f" * 64, "POST", "/", timezone.now())
    later = timezone.now() + timedelta(minutes=5)

    def remember(record_id: int, body: bytes) -> None:
        response = StoredResponse(201, [], body)
        accelerated.remember(info, record_id, info.fingerprint, response, later)

    remember(7, b"seven")
    accelerated.forget(info.scope, info.key, 7, later)
    remember(7, b"seven, read before its deletion")
    assert states(redis_db) == ["deleted"]
    remember(8, b"eight")  # a new record for the key
    accelerated.forget(info.scope, info.key, 7, later)  # late news of the old one
    remember(7, b"seven, read before its deletion")
    (name,) = copies(redis_db)
    assert redis_db.get(name).endswith(b"\neight")
    # Ids beyond 2**53, which Lua's numbers cannot tell apart, compare right.
    remember(2**62 + 1, b"big")
    remember(2**62, b"smaller")
    assert redis_db.get(name).endswith(b"\nbig")


def test_copies_never_cross_users(user, other_user, redis_db):
    key = new_key()
    alice = send(user, key)
    bob = send(other_user, key)
    assert "Idempotent-Replayed" not in bob
    assert alice.content != bob.content
    assert send(user, key).content == alice.content
    assert send(other_user, key).content == bob.content
    assert executions(key) == 2
    assert len(copies(redis_db)) == 2


@pytest.mark.django_db(databases=["default", "other"], transaction=True)
def test_copies_are_kept_per_database(user, redis_db):
    with override_settings(IDEMPOTENCY={**ACCELERATED, "DATABASE": "other"}):
        key = new_key()
        first = send(user, key, "/other-database/")
        assert send(user, key, "/other-database/").content == first.content
    (copy,) = redis_db.scan_iter(match=b"idempotency:v1:db:*")
    identity = accelerator._identity("other")
    assert copy.startswith(f"idempotency:v1:db:other:{identity}:".encode())
    # Two databases behind the same alias name (two projects, two test
    # runs) are told apart by where they are.
    assert identity != accelerator._identity("default")


def test_an_unusable_cache_leaves_the_database_to_answer(user, redis_db, caplog):
    caches = caches_with(
        "broken",
        other_database(django_settings.REDIS_URL, 14),
        CONNECTION_POOL_KWARGS={"decode_responses": True},
    )
    key = new_key()
    with override_settings(CACHES=caches, IDEMPOTENCY={"REDIS": "broken"}):
        first = send(user, key)
        replay = send(user, key)
    assert first.status_code == 201
    assert replay.content == first.content
    assert executions(key) == 1
    assert "decodes responses" in caplog.text
    assert copies(redis_db) == []


def test_after_an_error_redis_is_left_alone_for_a_while(user, proxy, redis_db, caplog):
    proxy.cut()
    send(user, new_key())
    # One line: the request that met the error asks Redis nothing more.
    assert caplog.text.count("Redis unavailable") == 1
    assert "the database answers alone for the next 5 s" in caplog.text
    proxy.restore()
    resting = new_key()
    assert send(user, resting).status_code == 201
    # Resting: that request neither looked Redis up nor copied to it.
    assert copies(redis_db) == []
    accelerator._resting.clear()
    assert send(user, resting)["Idempotent-Replayed"] == "true"
    assert len(copies(redis_db)) == 1


def test_a_redis_that_hangs_costs_one_timeout_then_is_left_alone(user, proxy, caplog):
    proxy.stall()
    key = new_key()
    first = send(user, key)
    assert first.status_code == 201
    assert "Redis unavailable (read: TimeoutError" in caplog.text
    # Resting: the next requests do not wait for Redis at all.
    caplog.clear()
    assert send(user, key).content == first.content
    assert "Redis unavailable" not in caplog.text
    assert executions(key) == 1


def test_migrate_and_flush_drop_the_databases_copies(user, redis_db):
    key = new_key()
    send(user, key)
    assert len(copies(redis_db)) == 1
    # What migrate and flush send (a test database recreated under the same
    # name, a backup restored, then migrate): the records may be others now.
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")
    assert copies(redis_db) == []


def test_the_accelerator_may_use_a_cache_of_its_own(user, redis_db):
    location = other_database(django_settings.REDIS_URL, 13)
    with override_settings(
        CACHES=caches_with("copies", location),
        IDEMPOTENCY={"REDIS": "idempotency", "REDIS_ACCELERATOR": "copies"},
    ):
        own = get_redis_connection("copies")
        own.flushdb()
        try:
            key = new_key()
            first = send(user, key)
            with Queries() as queries:
                assert send(user, key).content == first.content
            assert len(queries) == 0
            assert len(copies(own)) == 1
            assert copies(redis_db) == []
        finally:
            own.flushdb()


def test_forgetting_a_database_covers_any_number_of_keys(redis_db):
    accelerated = accelerator.for_database("default")
    namespace = redis_db.pipeline()
    prefix = f"idempotency:v1:{accelerated.namespace}:"
    for number in range(2000):  # two whole batches
        namespace.set(f"{prefix}{number}", b"x", px=60_000)
    namespace.set("idempotency:v1:db:elsewhere:1", b"x", px=60_000)
    namespace.execute()
    assert accelerated.forget_all() == 2000
    assert redis_db.dbsize() == 1


def test_a_deletion_while_redis_is_away_is_refused(user, proxy, redis_db, caplog):
    # Its copy would go on being replayed: the deletion waits for Redis.
    key = new_key()
    send(user, key)
    proxy.cut()
    record = IdempotencyKey.objects.get(key=key)
    with pytest.raises(accelerator.CopyNotForgotten) as excinfo:
        record.delete()
    assert str(excinfo.value).startswith(
        f"The copy in Redis of the idempotency record {record.pk} could not be replaced by a "
        "tombstone (ConnectionError: "
    )
    assert str(excinfo.value).endswith(
        "so its deletion was refused: Redis would go on replaying a record the database no "
        "longer has. Delete it again once Redis answers, or turn the accelerator off "
        "(IDEMPOTENCY['REDIS_ACCELERATOR'] = False)."
    )
    assert IdempotencyKey.objects.filter(key=key).exists()
    assert "Redis unavailable (forget" in caplog.text
    proxy.restore()
    record.delete()
    assert "Idempotent-Replayed" not in send(user, key)


def test_a_deletion_with_a_cache_that_cannot_be_used_is_refused(user, redis_db):
    key = new_key()
    send(user, key)
    caches = {**django_settings.CACHES, "typo": {"BACKEND": "no_such_module.Cache"}}
    with (
        override_settings(CACHES=caches, IDEMPOTENCY={"REDIS": "typo"}),
        pytest.raises(accelerator.CopyNotForgotten) as excinfo,
    ):
        IdempotencyKey.objects.get(key=key).delete()
    assert str(excinfo.value).startswith(
        "The accelerator's cache cannot be used: The 'typo' cache cannot be used: "
    )
    assert IdempotencyKey.objects.filter(key=key).exists()


def test_forgetting_a_database_while_redis_is_away_is_logged(user, proxy, redis_db, caplog):
    send(user, new_key())
    proxy.cut()
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")
    assert "Redis unavailable (forget" in caplog.text


@pytest.mark.django_db
def test_a_claim_lost_to_another_request_leaves_no_copy(client, redis_db):
    """The database store's answer when another request took the claim over
    while the handler ran: everything rolls back, and Redis keeps nothing
    of it but the marker, which goes when the request ends."""
    key = new_key()
    response = client.post(
        "/taken-over/", {"amount": 1}, format="json", headers={"Idempotency-Key": key}
    )
    assert response.status_code == 409
    assert not IdempotencyKey.objects.exists()
    assert copies(redis_db) == []
