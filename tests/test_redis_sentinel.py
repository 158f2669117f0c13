"""Redis Sentinel: the accelerator and the Redis store through a failover,
and ``REDIS_REPLICAS``, which closes what a failover leaves open.

Against real ``redis-server`` and ``redis-sentinel`` processes that
tests/redis_sentinel.py starts for each test (a master, a replica, three
sentinels), reached through django-redis's ``SentinelClient``; a failover is
the master killed with SIGKILL while requests run. ``REDIS_REPLICAS`` is also
tested against the plain test Redis, which has no replica at all.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django_redis.client import DefaultClient

from idempotency import accelerator
from idempotency.checks import check_redis, check_settings
from tests import helpers
from tests.concurrency import LATENCIES, Threads, assert_one_original, tally
from tests.helpers import executions, new_key
from tests.redis_proxy import caches_with, other_database
from tests.redis_sentinel import Deployment, deployment, sentinel_cache
from tests.testapp.views import OUTSIDE_RUNS

ALIAS = "sentinel"
REDIS_URL = "/redis/charge/"
# The Redis store's views, reaching Redis through the sentinels.
STORE = {"REDIS": ALIAS, "REDIS_ACCELERATOR": False}
# Rounds of concurrent duplicates: this many keys a round, each sent this many times.
KEYS, DUPLICATES = 4, 4

SENTINEL_MARKS = (
    pytest.mark.redis,
    pytest.mark.vendor("postgresql"),
    pytest.mark.server_db,
    pytest.mark.django_db(transaction=True),
)


def on_sentinel(test: Callable[..., None]) -> Callable[..., None]:
    """Run against a Sentinel deployment of real processes, on PostgreSQL:
    once in CI, in the PostgreSQL run (requests in threads need real
    concurrent transactions)."""
    for mark in SENTINEL_MARKS:
        test = mark(test)
    return test


@pytest.fixture
def sentinel():
    """A fresh deployment for each test (a failover consumes its master),
    and the ``sentinel`` cache alias that reaches it."""
    accelerator._resting.clear()
    with deployment() as setup:
        caches = {**django_settings.CACHES, ALIAS: setup.cache()}
        with override_settings(CACHES=caches):
            yield setup
    accelerator._resting.clear()


def send(user, key: str, url: str = helpers.URL, gate: str = ""):
    return helpers.send(user, key, url, headers={"X-Gate": gate})


def runs(key: str) -> int:
    """How many times the Redis store's view ran with ``key``."""
    return OUTSIDE_RUNS[key]


def records(node_client, namespace: str = "redis") -> list[bytes]:
    return list(node_client.scan_iter(match=f"idempotency:v1:{namespace}:*".encode()))


def is_original(response) -> bool:
    return response.status_code == 201 and "Idempotent-Replayed" not in response


def assert_redis_unavailable(response) -> None:
    assert response.status_code == 503, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert json.loads(response.content)["type"].endswith("redis-unavailable")


@dataclass
class Traffic:
    """Rounds of concurrent duplicates sent from a thread of its own until
    stopped, each round on keys of its own."""

    send: Callable[[str], Any]
    rounds: list[dict[str, list]] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                keys = [new_key() for _ in range(KEYS)]
                calls = [lambda key=key: self.send(key) for key in keys for _ in range(DUPLICATES)]
                responses = Threads(calls).join()
                self.rounds.append(
                    {
                        key: responses[index * DUPLICATES : (index + 1) * DUPLICATES]
                        for index, key in enumerate(keys)
                    }
                )
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def wait_for_rounds(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.rounds) < count:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"only {len(self.rounds)} rounds of {count}"
            time.sleep(0.01)

    def finish(self) -> dict[str, list]:
        """Stop after the round in flight; every key's responses."""
        self.stopped.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "a round never finished"
        if self.error is not None:
            raise self.error
        return {key: answers for done in self.rounds for key, answers in done.items()}


def through_a_failover(setup: Deployment, traffic: Traffic, test: str, replicas: int = 0) -> None:
    """Kill the master once traffic is flowing; wait for the failover (and,
    when the store needs one, give the new master a replica); let traffic
    run two more rounds on the new master."""
    traffic.wait_for_rounds(2)
    setup.kill_master()
    during = len(traffic.rounds)
    LATENCIES[f"Sentinel failover, kill -9 to a new master ({test})"] = setup.wait_for_failover()
    if replicas:
        setup.add_replica()
    traffic.wait_for_rounds(max(len(traffic.rounds), during + 1) + 2)


# The accelerator: the database decides every claim, whatever Redis does.


@on_sentinel
def test_the_accelerator_through_a_failover(user, sentinel, caplog):
    with override_settings(IDEMPOTENCY={"REDIS": ALIAS}):
        traffic = Traffic(lambda key: send(user, key))
        through_a_failover(sentinel, traffic, "accelerator")
        answers = traffic.finish()
        for key, responses in answers.items():
            tally("Sentinel failover: accelerator", responses, executions(key))
            assert executions(key) == 1
            assert_one_original(responses)
        # The failover happened while requests ran: Redis failed some of them,
        # and the database answered in its place.
        assert "Redis unavailable" in caplog.text
        # On the new master, the accelerator works again (once its rest after
        # an error, five seconds per process, is over): replays come from
        # Redis, with no SQL at all.
        accelerator._resting.clear()
        key = new_key()
        first = send(user, key)
        assert is_original(first)
        with CaptureQueriesContext(connections["default"]) as queries:
            replay = send(user, key)
    assert len(queries) == 0, [query["sql"] for query in queries]
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert records(sentinel.master.client(), "db")


# The Redis store: a 503 or a right answer during the failover, never a 500.


@on_sentinel
@pytest.mark.parametrize("replicas", [0, 1], ids=["REDIS_REPLICAS=0", "REDIS_REPLICAS=1"])
def test_the_redis_store_through_a_failover(user, sentinel, replicas):
    settings = {**STORE, "REDIS_REPLICAS": replicas}
    test = f"Redis store, REDIS_REPLICAS={replicas}"
    with override_settings(IDEMPOTENCY=settings):
        traffic = Traffic(lambda key: send(user, key, REDIS_URL))
        through_a_failover(sentinel, traffic, test, replicas)
        answers = traffic.finish()
        ran = {key: runs(key) for key in answers}
        retries = {key: send(user, key, REDIS_URL) for key in answers}
    unavailable = 0
    for key, responses in answers.items():
        tally(f"Sentinel failover: {test}", responses, ran[key])
        originals = [response for response in responses if is_original(response)]
        for response in responses:
            assert response.status_code in (201, 409, 503), response.content
            if response.status_code == 503:
                assert_redis_unavailable(response)
                unavailable += 1
            elif response.status_code == 201 and not is_original(response):
                assert response.content in {original.content for original in originals}
        # Every run answered its own client, with an original.
        assert ran[key] == len(originals)
        assert retries[key].status_code in (201, 409), retries[key].content
        if replicas:
            # No claim was lost: at most one run per key, even across the
            # failover; a retry after it replays that run, or, if its
            # response was stored too late to reach the replica, meets its
            # claim (a 409 until its lease expires) and runs nothing.
            assert len(originals) <= 1
            retry = retries[key]
            if originals and retry.status_code == 201:
                assert retry["Idempotent-Replayed"] == "true"
                assert retry.content == originals[0].content
            assert runs(key) == 1 or retry.status_code == 409
    # The master was killed while requests ran, and some of them met it gone.
    assert unavailable > 0
    # The store works on the new master.
    key = new_key()
    with override_settings(IDEMPOTENCY=settings):
        first = send(user, key, REDIS_URL)
        replay = send(user, key, REDIS_URL)
    assert is_original(first)
    assert replay.content == first.content
    assert runs(key) == 1
    assert records(sentinel.master.client())


# A claim the master took and never passed on to the replica that replaced it.


@on_sentinel
def test_a_failover_loses_a_claim_the_replica_never_got(user, sentinel):
    key = new_key()
    with override_settings(IDEMPOTENCY=STORE):
        with sentinel.failover_losing_writes():
            first = send(user, key, REDIS_URL)
            # Claimed, run and stored on the master alone.
            assert len(records(sentinel.master.client())) == 1
        LATENCIES["Sentinel failover, kill -9 to a new master (lost claim)"] = (
            sentinel.wait_for_failover()
        )
        retry = send(user, key, REDIS_URL)
    assert is_original(first)
    # The hazard: the promoted replica never had the record, so the retry
    # is a new request, and the handler runs a second time.
    assert is_original(retry)
    assert retry.content != first.content
    assert runs(key) == 2
    tally("Sentinel failover: claim never replicated, REDIS_REPLICAS=0", [first, retry], 2)


@on_sentinel
def test_with_replicas_a_claim_the_replica_cannot_get_is_refused(user, sentinel, caplog):
    key = new_key()
    with override_settings(IDEMPOTENCY={**STORE, "REDIS_REPLICAS": 1}):
        with sentinel.failover_losing_writes():
            first = send(user, key, REDIS_URL)
            # Released: the master holds nothing of it either.
            assert records(sentinel.master.client()) == []
        LATENCIES["Sentinel failover, kill -9 to a new master (refused claim)"] = (
            sentinel.wait_for_failover()
        )
        # The new master needs a replica of its own to take claims.
        sentinel.add_replica()
        retry = send(user, key, REDIS_URL)
        replay = send(user, key, REDIS_URL)
    assert_redis_unavailable(first)
    assert (
        "0 of the 1 replicas that REDIS_REPLICAS asks for acknowledged the claim within "
        "250 ms" in caplog.text
    )
    assert is_original(retry)
    assert replay.content == retry.content
    assert runs(key) == 1
    tally("Sentinel failover: claim never replicated, REDIS_REPLICAS=1", [first, retry], 1)


@on_sentinel
def test_with_replicas_a_claim_outlives_its_master(user, sentinel, gate, caplog):
    name, held = gate
    key = new_key()
    with override_settings(IDEMPOTENCY={**STORE, "REDIS_REPLICAS": 1}):
        first = Threads([lambda: send(user, key, REDIS_URL, gate=name)])
        assert held.entered.wait(timeout=10)
        # The handler runs once the replica has its claim...
        (replica,) = sentinel.replicas
        assert len(records(replica.client())) == 1
        sentinel.kill_master()
        LATENCIES["Sentinel failover, kill -9 to a new master (held claim)"] = (
            sentinel.wait_for_failover()
        )
        # ...so the replica promoted in the master's place still has it.
        duplicate = send(user, key, REDIS_URL)
        assert duplicate.status_code == 409
        held.release.set()
        (original,) = first.join()
        retry = send(user, key, REDIS_URL)
    assert is_original(original)
    # Its response was stored on the new master, which has no replica yet
    # to acknowledge it: logged, and sent all the same.
    assert (
        f"The response of POST {REDIS_URL} was stored, but only 0 of the 1 replicas that "
        "REDIS_REPLICAS asks for acknowledged it within 250 ms" in caplog.text
    )
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == original.content
    assert runs(key) == 1
    tally("Sentinel failover: request held across it, REDIS_REPLICAS=1", [original, retry], 1)


# REDIS_REPLICAS against the plain test Redis, which has no replica.

PLAIN = {"REDIS": "idempotency", "REDIS_ACCELERATOR": False}


@pytest.mark.redis
@pytest.mark.django_db
def test_without_the_replicas_it_asks_for_the_redis_store_refuses_the_claim(
    client, redis_db, caplog
):
    key = new_key()
    with override_settings(IDEMPOTENCY={**PLAIN, "REDIS_REPLICAS": 1}):
        started = time.monotonic()
        response = helpers.post(client, key, url=REDIS_URL)
        elapsed = time.monotonic() - started
    assert_redis_unavailable(response)
    assert runs(key) == 0
    # The claim waited for a replica as long as the store waits, then was
    # released: a retry once a replica is there may run.
    assert elapsed >= 0.25
    assert records(redis_db) == []
    assert "answered 503" in caplog.text
    assert "0 of the 1 replicas that REDIS_REPLICAS asks for" in caplog.text
    with override_settings(IDEMPOTENCY=PLAIN):
        assert is_original(helpers.post(client, key, url=REDIS_URL))
    assert runs(key) == 1


@pytest.mark.redis
@pytest.mark.django_db
def test_a_wait_cut_short_by_the_socket_timeout_releases_the_claim(client, redis_db, caplog):
    # WAIT outlasts this cache's socket timeout: redis-py gives up first.
    location = other_database(django_settings.REDIS_URL, 13)
    caches = caches_with("impatient", location, SOCKET_TIMEOUT=0.1, SOCKET_CONNECT_TIMEOUT=1)
    key = new_key()
    with override_settings(
        CACHES=caches, IDEMPOTENCY={**PLAIN, "REDIS": "impatient", "REDIS_REPLICAS": 1}
    ):
        from django_redis import get_redis_connection

        response = helpers.post(client, key, url=REDIS_URL)
        left = records(get_redis_connection("impatient"))
    assert_redis_unavailable(response)
    assert runs(key) == 0
    assert "TimeoutError" in caplog.text
    assert left == []


@pytest.mark.redis
@pytest.mark.django_db
def test_fail_open_runs_a_claim_the_replicas_did_not_acknowledge_unprotected(
    client, redis_db, caplog
):
    key = new_key()
    settings = {**PLAIN, "REDIS_REPLICAS": 1, "REDIS_FAIL_OPEN": True}
    with override_settings(IDEMPOTENCY=settings):
        first = helpers.post(client, key, url=REDIS_URL)
        second = helpers.post(client, key, url=REDIS_URL)
    # As in any outage with REDIS_FAIL_OPEN: run, unprotected, nothing kept.
    assert is_original(first)
    assert is_original(second)
    assert runs(key) == 2
    assert records(redis_db) == []
    assert "ran the handler unprotected" in caplog.text


@pytest.mark.redis
@pytest.mark.django_db
def test_replicas_leave_duplicates_and_replays_alone(client, redis_db):
    """Only a claim waits for replicas: a request that finds the key taken
    or completed answers as it would without the setting."""
    key = new_key()
    with override_settings(IDEMPOTENCY=PLAIN):
        first = helpers.post(client, key, url=REDIS_URL)
    with override_settings(IDEMPOTENCY={**PLAIN, "REDIS_REPLICAS": 2}):
        started = time.monotonic()
        replay = helpers.post(client, key, url=REDIS_URL)
        elapsed = time.monotonic() - started
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert elapsed < 0.25
    assert runs(key) == 1


# The system checks: REDIS_REPLICAS, and a Sentinel cache (nothing is contacted).


def check_ids(idempotency: dict, caches: dict | None = None) -> list[tuple[str, str]]:
    """What the setting checks and the Redis checks say of ``idempotency``."""
    with override_settings(CACHES=caches or django_settings.CACHES, IDEMPOTENCY=idempotency):
        return [(error.id, error.msg) for error in check_settings() + check_redis()]


@pytest.mark.parametrize("value", [0, 1, 2, 100])
def test_redis_replicas_accepts_a_count(value):
    assert check_ids({**PLAIN, "REDIS_REPLICAS": value}) == []


@pytest.mark.parametrize("value", [-1, 101, 2**70, 1.0, "1", True, None])
def test_e029_redis_replicas(value):
    assert check_ids({**PLAIN, "REDIS_REPLICAS": value}) == [
        (
            "idempotency.E029",
            "IDEMPOTENCY['REDIS_REPLICAS'] must be a whole number of replicas, from 0 to 100.",
        )
    ]


def test_the_checks_accept_a_sentinel_cache():
    """The configuration docs/deployment.rst gives: no error (E018, E019,
    E024) and no warning (W002), for the store and for the accelerator."""
    caches = {
        **django_settings.CACHES,
        ALIAS: sentinel_cache("mymaster", [26379, 26380, 26381]),
        "accelerator": sentinel_cache("mymaster", [26379, 26380, 26381], db=1),
    }
    assert check_ids({"REDIS": ALIAS, "REDIS_REPLICAS": 1}, caches) == []
    assert check_ids({"REDIS": ALIAS, "REDIS_ACCELERATOR": "accelerator"}, caches) == []
    assert check_ids({"REDIS": ALIAS, "BACKEND": "redis"}, caches) == []


class NotOneMaster:
    """A connection that is not redis-py's client of one master, as a Redis
    Cluster client's is not."""

    def get_connection_kwargs(self) -> dict[str, Any]:
        return {}


class ClientOfSeveralMasters(DefaultClient):
    def get_client(self, write: bool = True, **kwargs: Any) -> NotOneMaster:
        return NotOneMaster()


def test_e030_redis_replicas_needs_a_client_of_one_master():
    cache = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {
            "CLIENT_CLASS": f"{__name__}.ClientOfSeveralMasters",
            "SOCKET_CONNECT_TIMEOUT": 0.5,
            "SOCKET_TIMEOUT": 0.5,
        },
    }
    caches = {**django_settings.CACHES, "spread": cache}
    assert check_ids({"REDIS": "spread", "REDIS_REPLICAS": 1}, caches) == [
        (
            "idempotency.E030",
            "IDEMPOTENCY['REDIS_REPLICAS'] is 1, but the 'spread' cache's client (NotOneMaster) "
            "is not a client of one Redis master: the WAIT that must follow each claim on its "
            "own connection cannot be sent.",
        )
    ]
    # Without replicas to wait for, any client the store can use will do.
    assert check_ids({"REDIS": "spread"}, caches) == []


def test_e030_is_not_raised_for_a_cache_the_other_checks_refuse():
    errors = check_ids({"REDIS": "missing", "REDIS_REPLICAS": 1})
    assert [id for id, _ in errors] == ["idempotency.E016"]
