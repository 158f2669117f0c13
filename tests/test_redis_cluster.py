"""Redis Cluster: the Redis store and the accelerator on a real cluster of
three masters (tests/redis_cluster.py), through the package's cluster
client (``idempotency.backends.redis.cluster.ClusterClient``).

Their behaviours, row by row; concurrent duplicates of keys spread over
every master; and slots, with the records in them, moved between masters
(``redis-cli --cluster reshard``) while concurrent requests go on: no 500,
and each key's handler runs exactly once, since resharding moves the data.
Run once, in CI's PostgreSQL run (the accelerator's concurrency needs real
concurrent transactions).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.core.cache import caches
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.sql import emit_post_migrate_signal
from django.db import connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django_redis import get_redis_connection
from redis.cluster import RedisCluster

from idempotency import accelerator
from idempotency.backends import redis as redis_backend
from idempotency.backends.base import Outcome, RequestInfo
from idempotency.models import IdempotencyKey
from tests import helpers
from tests.concurrency import LATENCIES, Threads, assert_one_original, tally
from tests.helpers import URL, executions, new_key
from tests.redis_cluster import cluster
from tests.test_wait import DUPLICATES, held_duplicates
from tests.testapp.views import OUTSIDE_RUNS

pytestmark = [
    pytest.mark.redis,
    pytest.mark.vendor("postgresql"),
    pytest.mark.django_db(transaction=True),
]

REDIS_URL = "/redis/charge/"
STORE = {"REDIS": "cluster", "REDIS_ACCELERATOR": False}
ACCELERATED = {"REDIS": "cluster"}


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """Three masters, for the module; killed when it ends."""
    with cluster(tmp_path_factory.mktemp("cluster")) as started:
        LATENCIES["cluster: 3 masters started and joined"] = started.durations["start"]
        yield started


def empty() -> RedisCluster:
    """The cluster's connection, every master flushed."""
    connection = get_redis_connection("cluster", write=True)
    connection.flushdb()
    return connection


@pytest.fixture
def store(running):
    """The Redis store on the cluster, which starts and ends empty."""
    accelerator._resting.clear()
    with override_settings(CACHES=running.caches(), IDEMPOTENCY=STORE):
        yield empty()
        empty()


@pytest.fixture
def accelerated(running):
    """The accelerator (and the Redis store) on the cluster."""
    accelerator._resting.clear()
    with override_settings(CACHES=running.caches(), IDEMPOTENCY=ACCELERATED):
        yield empty()
        empty()
    accelerator._resting.clear()


def send(user, key: str, url: str = REDIS_URL, gate: str = "", **extra):
    """``helpers.send``, held by ``gate`` if named (the Redis view reads it
    from a header, the database views from the query string)."""
    if gate and url == URL:
        url = f"{URL}?gate={gate}"
    return helpers.send(user, key, url, headers={"X-Gate": gate}, **extra)


def masters_of(connection: RedisCluster, pattern: bytes) -> Counter[str]:
    """How many keys matching ``pattern`` each master holds."""
    return Counter(
        connection.get_node_from_key(name).name for name in connection.scan_iter(match=pattern)
    )


def runs(key: str, url: str) -> int:
    return OUTSIDE_RUNS[key] if url == REDIS_URL else executions(key)


# The cluster client, as a cache and as the package's connection.


def test_the_cache_is_served_by_the_cluster(store):
    assert isinstance(store, RedisCluster)
    cache = caches["cluster"]
    values = {f"entry-{number}": number for number in range(30)}
    cache.set_many(values, timeout=60)
    # MGET of keys in many slots, on every master.
    assert cache.get_many([*values, "missing"]) == values
    assert cache.get_many([]) == {}
    assert cache.get("entry-3") == 3
    assert cache.add("entry-3", 0) is False
    cache.delete_many(["entry-1", "entry-2"])
    assert "entry-1" not in cache.get_many(list(values))
    assert len(masters_of(store, b":1:entry-*")) == 3
    cache.clear()
    assert list(store.scan_iter()) == []


def test_each_process_shares_one_cluster_client(store):
    seen = []

    def connect() -> None:
        seen.append(get_redis_connection("cluster", write=True))

    thread = threading.Thread(target=connect)
    thread.start()
    thread.join(timeout=10)
    # Django gives each thread a cache client; the cluster's topology and
    # pools are the process's.
    assert seen == [store]


def test_closing_the_cache_closes_every_nodes_connections(running, store):
    def clients() -> int:
        # CLIENT LIST from redis-cli, which counts itself.
        return sum(len(node.cli("client", "list").splitlines()) - 1 for node in running.nodes)

    store.ping(target_nodes=RedisCluster.ALL_NODES)
    assert clients() >= 3
    # What CLOSE_CONNECTION does after each request; of the client's three
    # LOCATIONs only the first has a connection (the cluster's).
    caches["cluster"].client.do_close_clients()
    assert clients() == 0
    # Connections come back on demand.
    assert caches["cluster"].set("after", 1) is True
    assert clients() >= 1


def test_system_checks_accept_a_cluster_cache(running):
    own = {"REDIS": "idempotency", "REDIS_ACCELERATOR": "cluster"}
    for idempotency in (STORE, ACCELERATED, own):
        with override_settings(CACHES=running.caches(), IDEMPOTENCY=idempotency):
            messages = [m for m in run_checks() if m.id.startswith("idempotency.")]
            assert messages == []
            call_command("check", "--fail-level", "WARNING")


def test_replicas_cannot_be_waited_for_on_a_cluster(running):
    """REDIS_REPLICAS sends WAIT on the claim's own connection to one
    master; a cluster client has no such connection (E030)."""
    with override_settings(CACHES=running.caches(), IDEMPOTENCY={**STORE, "REDIS_REPLICAS": 1}):
        assert [m.id for m in run_checks() if m.id.startswith("idempotency.")] == [
            "idempotency.E030"
        ]


def test_a_cluster_cache_on_database_1_is_refused_with_the_reason(running):
    caches_setting = running.caches()
    caches_setting["cluster"]["LOCATION"] = [
        f"{url}/1" for url in caches_setting["cluster"]["LOCATION"]
    ]
    with override_settings(CACHES=caches_setting, IDEMPOTENCY=STORE):
        [error] = [m for m in run_checks() if m.id.startswith("idempotency.")]
    assert error.id == "idempotency.E024"
    assert "can only be 0 in cluster mode" in error.msg


def test_a_cluster_cache_without_timeouts_is_warned_about(running):
    caches_setting = running.caches()
    del caches_setting["cluster"]["OPTIONS"]["SOCKET_TIMEOUT"]
    with override_settings(CACHES=caches_setting, IDEMPOTENCY=STORE):
        assert [m.id for m in run_checks() if m.id.startswith("idempotency.")] == [
            "idempotency.W002"
        ]


# The Redis store, row by row.


def test_redis_store_first_request_replay_and_another_request(client, store):
    key = new_key()
    first = helpers.post(client, key, url=REDIS_URL)
    assert first.status_code == 201
    (record,) = store.scan_iter(match=b"idempotency:v1:redis:*")
    assert 24 * 3600 * 1000 - 5000 < store.pttl(record) <= 24 * 3600 * 1000
    replay = helpers.post(client, key, url=REDIS_URL)
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert replay["Location"] == first["Location"]
    reused = helpers.post(client, key, url=REDIS_URL, amount=5)
    assert reused.status_code == 422
    assert json.loads(reused.content)["type"].endswith("key-reused")
    assert OUTSIDE_RUNS[key] == 1


def test_redis_store_duplicate_in_flight_gets_a_409(user, store, gate):
    name, held = gate
    key = new_key()
    first = Threads([lambda: send(user, key, gate=name)])
    assert held.entered.wait(timeout=10)
    duplicate = send(user, key, gate=name)
    assert duplicate.status_code == 409
    assert duplicate["Retry-After"] == "1"
    assert first.finished() == 0
    held.release.set()
    (original,) = first.join()
    assert send(user, key).content == original.content
    assert OUTSIDE_RUNS[key] == 1


@pytest.mark.parametrize("how", ["validation", "error"])
def test_redis_store_handler_exception_frees_the_key(user, store, how):
    key = new_key()
    failed = send(user, key, f"{REDIS_URL}?raise={how}")
    assert failed.status_code == (400 if how == "validation" else 500)
    assert list(store.scan_iter(match=b"idempotency:*")) == []
    assert send(user, key, f"{REDIS_URL}?raise={how}").status_code == failed.status_code
    assert OUTSIDE_RUNS[key] == 2


@override_settings(IDEMPOTENCY={**STORE, "WAIT": 10})
def test_redis_store_waiters_are_woken_with_the_replay(user, gate, store):
    # PUBLISH from the completing script, on the master of the record's
    # slot, reaches the waiters subscribed on the same node.
    key, responses = held_duplicates(user, gate, url=REDIS_URL)
    tally("cluster: Redis store, waiters of a held request", responses, OUTSIDE_RUNS[key])
    assert OUTSIDE_RUNS[key] == 1
    assert [r.status_code for r in responses] == [201] * DUPLICATES
    originals = [r for r in responses if "Idempotent-Replayed" not in r]
    assert len(originals) == 1
    assert all(r.elapsed >= 0.4 for r in responses if r is not originals[0])


@override_settings(IDEMPOTENCY={**STORE, "WAIT": 10})
def test_redis_store_lets_one_waiter_run_after_a_failure(user, gate, store):
    key, responses = held_duplicates(user, gate, url=REDIS_URL, fail=True)
    assert OUTSIDE_RUNS[key] == 2  # the failed run's effects stand
    assert Counter(r.status_code for r in responses) == {500: 1, 201: DUPLICATES - 1}


def test_redis_store_scripts_check_the_owner_on_every_master(store):
    from django.utils import timezone

    redis_store = redis_backend.RedisStore("cluster")
    infos = [
        RequestInfo("user:1", new_key(), "f" * 64, "POST", "/", timezone.now()) for _ in range(12)
    ]
    claims = [redis_store.claim(info, timedelta(seconds=30)) for info in infos]
    assert {claim.outcome for claim in claims} == {Outcome.CLAIMED}
    assert len(masters_of(store, b"idempotency:v1:redis:*")) == 3
    for info, claim in zip(infos, claims, strict=True):
        assert redis_store.claim(info, timedelta(seconds=30)).outcome is Outcome.IN_FLIGHT
        redis_store.release(claim)
        assert redis_store.claim(info, timedelta(seconds=30)).outcome is Outcome.CLAIMED


# The accelerator, row by row.


def copies(connection: RedisCluster) -> list[bytes]:
    return list(connection.scan_iter(match=b"idempotency:v1:db:default:*"))


def test_accelerator_replays_without_sql_and_answers_another_request(user, accelerated):
    key = new_key()
    first = send(user, key, URL)
    assert first.status_code == 201
    assert len(copies(accelerated)) == 1
    with CaptureQueriesContext(connections["default"]) as queries:
        replay = send(user, key, URL)
        reused = send(user, key, URL, data={"amount": 2})
    assert len(queries) == 0, [query["sql"] for query in queries]
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert reused.status_code == 422
    assert executions(key) == 1


def test_accelerator_duplicate_in_flight_gets_its_409_from_the_cluster(user, accelerated, gate):
    name, held = gate
    key = new_key()
    first = Threads([lambda: send(user, key, URL, gate=name)])
    assert held.entered.wait(timeout=10)
    with CaptureQueriesContext(connections["default"]) as queries:
        duplicate = send(user, key, URL, gate=name)
    assert duplicate.status_code == 409
    assert len(queries) == 0  # the in-flight marker answered
    held.release.set()
    (original,) = first.join()
    assert send(user, key, URL, gate=name).content == original.content
    assert executions(key) == 1


def test_accelerator_failed_request_takes_its_marker_along(user, accelerated):
    key = new_key()
    assert send(user, key, f"{URL}?raise=error").status_code == 500
    assert copies(accelerated) == []
    assert send(user, key, f"{URL}?raise=error").status_code == 500
    assert executions(key) == 0


def test_accelerator_forgets_deleted_records_and_whole_databases_across_masters(user, accelerated):
    keys = [new_key() for _ in range(24)]
    for key in keys:
        assert send(user, key, URL).status_code == 201
    assert len(masters_of(accelerated, b"idempotency:v1:db:default:*")) == 3
    # One record deleted (as from the admin): its copy becomes a tombstone.
    IdempotencyKey.objects.get(key=keys[0]).delete()
    again = send(user, keys[0], URL)
    assert "Idempotent-Replayed" not in again
    assert executions(keys[0]) == 2
    # migrate/flush: every copy goes, on every master (SCAN on each, DEL by slot).
    assert len(copies(accelerated)) == 24
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")
    assert copies(accelerated) == []
    replay = send(user, keys[1], URL)
    assert replay["Idempotent-Replayed"] == "true"  # from the database
    assert executions(keys[1]) == 1


# Concurrent duplicates of keys on every master.


@pytest.mark.parametrize(
    ("url", "fixture"), [(REDIS_URL, "store"), (URL, "accelerated")], ids=["store", "accelerator"]
)
def test_concurrent_duplicates_of_many_keys_run_once_each(user, request, url, fixture):
    connection = request.getfixturevalue(fixture)
    name = "Redis store" if url == REDIS_URL else "accelerator"
    for _ in range(5):
        keys = [new_key() for _ in range(8)]
        calls = [lambda key=key: send(user, key, url) for key in keys for _ in range(5)]
        responses = Threads(calls).join()
        for index, key in enumerate(keys):
            mine = responses[index * 5 : index * 5 + 5]
            tally(f"cluster: {name}, duplicates of 8 keys at once", mine, runs(key, url))
            assert runs(key, url) == 1
            assert_one_original(mine)
    pattern = b"idempotency:v1:redis:*" if url == REDIS_URL else b"idempotency:v1:db:default:*"
    assert len(masters_of(connection, pattern)) == 3


# Slots, with their records, moved between masters under traffic.


@pytest.fixture
def resharded(tmp_path):
    """A cluster of its own, whose slots the test moves."""
    accelerator._resting.clear()
    with (
        cluster(tmp_path) as started,
        override_settings(CACHES=started.caches(), IDEMPOTENCY=ACCELERATED),
    ):
        yield started, get_redis_connection("cluster", write=True)
    accelerator._resting.clear()


def test_resharding_under_traffic_loses_no_record_and_runs_each_key_once(user, resharded, caplog):
    found, connection = resharded
    urls = (REDIS_URL, URL)
    # Records before the move: the slots that move hold live keys.
    before = {(url, new_key()): [] for url in urls for _ in range(60)}
    for url, key in before:
        response = send(user, key, url)
        assert response.status_code == 201
        before[url, key].append(response)
    owners = {name: found.owner(connection.keyslot(name)) for name in connection.scan_iter()}
    source, target = sorted(found.masters())[:2]

    moved: dict[str, float] = {}
    mover = threading.Thread(
        target=lambda: moved.setdefault("seconds", found.reshard(source, target, 4000)),
        daemon=True,
    )
    after = {}
    earlier = list(before)
    rounds = 0
    mover.start()
    while mover.is_alive() or rounds == 0:
        rounds += 1
        # Retries of earlier keys (replays), and new keys sent twice at once.
        start = rounds * 8 % len(earlier)
        old = (earlier + earlier)[start : start + 8]
        new = [(url, new_key()) for url in urls for _ in range(6)]
        calls = [lambda url=url, key=key: send(user, key, url) for url, key in old]
        calls += [lambda url=url, key=key: send(user, key, url) for url, key in new for _ in "ab"]
        responses = Threads(calls).join()
        for (url, key), response in zip(old, responses, strict=False):
            before[url, key].append(response)
        for index, (url, key) in enumerate(new):
            after[url, key] = responses[len(old) + 2 * index : len(old) + 2 * index + 2]
    mover.join(timeout=90)
    assert "seconds" in moved, "the resharding did not finish"

    # The accelerator may have met an error and left the database to answer
    # (allowed: the database decides every claim); counted for the report.
    fallbacks = caplog.text.count("the database answers alone")
    records = {name: found.owner(connection.keyslot(name)) for name in owners}
    moved_records = [name for name in owners if records[name] != owners[name]]
    assert moved_records, "no slot that moved held a record"
    assert all(records[name] == target for name in moved_records)
    # Every key, once more, after the move.
    for (url, key), responses in {**before, **after}.items():
        responses.append(send(user, key, url))
        name = "Redis store" if url == REDIS_URL else "accelerator"
        tally(
            f"cluster: {name}, during a resharding ({len(moved_records)} of {len(owners)} "
            f"records moved, {fallbacks} accelerator fallbacks)",
            responses,
            runs(key, url),
        )
        assert runs(key, url) == 1, (url, key)
        assert {r.status_code for r in responses} <= {201, 409}, [
            (r.status_code, r.content) for r in responses
        ]
        assert_one_original(responses)
    for url, key in before:
        first, *later = before[url, key]
        assert all(r.content == first.content for r in later if r.status_code == 201)
    LATENCIES[f"cluster: 4000 slots moved under {rounds} rounds of requests"] = moved["seconds"]


# A master killed under traffic, its replica taking over.


@pytest.fixture
def replicated(tmp_path):
    """Three masters with a replica each, of their own."""
    accelerator._resting.clear()
    with (
        cluster(tmp_path, replicas=1) as started,
        override_settings(CACHES=started.caches(), IDEMPOTENCY=ACCELERATED),
    ):
        yield started, get_redis_connection("cluster", write=True)
    accelerator._resting.clear()


class Timed:
    """A request's response, and when it was sent and answered."""

    def __init__(self, user, key: str, url: str) -> None:
        self.started = time.monotonic()
        self.response = send(user, key, url)
        self.ended = time.monotonic()


def test_a_master_killed_under_traffic(user, replicated, caplog):
    found, _connection = replicated
    urls = (REDIS_URL, URL)
    # Records before the failure, which every replica has: the failover
    # keeps them.
    before = {(url, new_key()): [] for url in urls for _ in range(40)}
    for url, key in before:
        before[url, key].append(Timed(user, key, url))
    found.replicated()
    earlier = list(before)
    dead = sorted(found.masters())[0]

    during: dict[tuple[str, str], list[Timed]] = {}
    down = up = 0.0
    taken: dict[str, None] = {}
    rounds = 0
    while not up or rounds < 3:
        rounds += 1
        if rounds == 3 and not down:
            found.kill(dead)
            down = time.monotonic()
            # The failover runs while the requests go on.
            failover = threading.Thread(
                target=lambda: taken.setdefault("over", found.wait_for_failover(dead)),
                daemon=True,
            )
            failover.start()
        if down and not up and not failover.is_alive():
            assert "over" in taken, "no replica took the dead master's slots over"
            up = time.monotonic()
            rounds = 0  # three more rounds, on the cluster as it is now
        start = rounds * 8 % len(earlier)
        old = (earlier + earlier)[start : start + 8]
        new = [(url, new_key()) for url in urls for _ in range(6)]
        calls = [lambda url=url, key=key: Timed(user, key, url) for url, key in old]
        calls += [lambda url=url, key=key: Timed(user, key, url) for url, key in new for _ in "ab"]
        answered = Threads(calls).join()
        for (url, key), timed in zip(old, answered, strict=False):
            before[url, key].append(timed)
        for index, (url, key) in enumerate(new):
            during.setdefault((url, key), []).extend(answered[len(old) + 2 * index :][:2])
    fallbacks = caplog.text.count("the database answers alone")

    for (url, key), timed in {**before, **during}.items():
        timed.append(Timed(user, key, url))
        responses = [t.response for t in timed]
        statuses = {r.status_code for r in responses}
        name = "Redis store" if url == REDIS_URL else "accelerator"
        tally(
            f"cluster: {name}, a master killed ({fallbacks} accelerator fallbacks)",
            responses,
            runs(key, url),
        )
        assert 500 not in statuses
        if url == URL:
            # The database decides every claim: exactly once, whatever Redis lost.
            assert runs(key, url) == 1
            assert statuses <= {201, 409}
            continue
        # 503s only while the master was down (the client learns the new
        # master at its first error after the failover).
        for t in timed:
            if t.response.status_code == 503:
                assert t.ended >= down, t.ended - down
                assert t.started <= up + 1, (t.started - down, up - down)
        if (url, key) in earlier or timed[0].started > up:
            # A record the replica had, or one written after the failover.
            assert runs(key, url) == 1
            assert statuses <= {201, 409, 503}
            assert timed[-1].response.status_code == 201
    LATENCIES["cluster: a killed master's replica took over after"] = up - down
