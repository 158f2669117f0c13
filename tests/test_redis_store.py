"""The Redis-only store (``backend="redis"``): docs/http.rst row by row,
exactly once under concurrent duplicates, leases and takeover, outages.

Against the real Redis that REDIS_URL names; an outage is a real TCP relay
cut between the package and Redis (``tests.redis_proxy``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from rest_framework.test import APIClient

from idempotency.backends import redis as redis_backend
from idempotency.backends.base import Claim, Completion, Outcome, RequestInfo, StoredResponse
from tests import helpers
from tests.concurrency import Threads, assert_one_original, tally
from tests.helpers import new_key
from tests.redis_proxy import caches_with, other_database
from tests.testapp.views import OUTSIDE_RUNS

pytestmark = [pytest.mark.redis, pytest.mark.django_db]

URL = "/redis/charge/"
REDIS = {"REDIS": "idempotency", "REDIS_ACCELERATOR": False}


# helpers.post to the Redis store's view, with its body when the test gives none:
# {"amount": 100}.
post = functools.partial(helpers.post, url=URL, amount=100)


def send(user, key: str, url: str = URL, gate: str = ""):
    """``helpers.send`` to the Redis store's view, held by ``gate`` if named."""
    return helpers.send(user, key, url, headers={"X-Gate": gate})


def runs(key: str) -> int:
    return OUTSIDE_RUNS[key]


def stored_keys(connection) -> list[bytes]:
    return list(connection.scan_iter(match=b"idempotency:v1:redis:*"))


@pytest.fixture
def proxy(redis_relay):
    """A ``proxied`` cache alias reaching the test Redis through conftest's
    relay, which the test can cut, and the settings that make the Redis
    store use it."""
    caches = caches_with("proxied", redis_relay.url)
    with override_settings(CACHES=caches, IDEMPOTENCY={**REDIS, "REDIS": "proxied"}):
        yield redis_relay


# docs/http.rst, row by row.


def test_first_request_runs_and_is_stored_with_its_expiry(client, redis_db):
    key = new_key()
    response = post(client, key)
    assert response.status_code == 201
    assert runs(key) == 1
    (stored,) = stored_keys(redis_db)
    # The record lives for the TTL (24 hours by default), not the lease.
    assert 24 * 3600 * 1000 - 5000 < redis_db.pttl(stored) <= 24 * 3600 * 1000


def test_retry_replays_status_body_and_headers(client, redis_db):
    key = new_key()
    first = post(client, key)
    replay = post(client, key)
    assert runs(key) == 1
    assert replay.status_code == 201
    assert replay.content == first.content
    assert replay["Idempotent-Replayed"] == "true"
    assert replay["Content-Type"] == first["Content-Type"]
    assert replay["Location"] == first["Location"]
    assert replay["ETag"] == first["ETag"]
    # A header off the allow-list, and the first client's cookie, stay behind.
    assert "X-Trace" not in replay
    assert "sessionish" not in replay.cookies


def test_mixin_view_uses_the_redis_store(client, redis_db):
    key = new_key()
    first = post(client, key, url="/redis/mixin/")
    replay = post(client, key, url="/redis/mixin/")
    assert first.status_code == 201
    assert replay.content == first.content
    assert replay["Idempotent-Replayed"] == "true"
    assert runs(key) == 1
    assert len(stored_keys(redis_db)) == 1


def test_duplicate_in_flight_gets_a_prompt_409_then_the_replay(user, redis_db, gate):
    name, held = gate
    key = new_key()
    first = Threads([lambda: send(user, key, gate=name)])
    assert held.entered.wait(timeout=10)
    duplicate = send(user, key, gate=name)
    assert duplicate.status_code == 409
    assert duplicate["Retry-After"] == "1"
    assert duplicate["Content-Type"] == "application/problem+json"
    # Answered while the first is still held, not after it.
    assert first.finished() == 0
    held.release.set()
    (original,) = first.join()
    assert original.status_code == 201
    replay = send(user, key)
    assert replay.content == original.content
    assert runs(key) == 1


@pytest.mark.parametrize(
    ("change", "request_kwargs"),
    [
        ("body", {"data": {"amount": 5}}),
        ("path", {"url": "/redis/mixin/"}),
        ("query", {"url": f"{URL}?x=1"}),
    ],
)
def test_same_key_for_another_request_is_422(client, redis_db, change, request_kwargs):
    key = new_key()
    assert post(client, key).status_code == 201
    reused = post(client, key, **request_kwargs)
    assert reused.status_code == 422
    assert json.loads(reused.content)["type"].endswith("key-reused")
    assert runs(key) == 1


def test_key_missing_malformed_and_quoted(client, redis_db):
    assert post(client, None).status_code == 400
    assert post(client, "").status_code == 400
    assert post(client, "x" * 256).status_code == 400
    assert post(client, "caf\u00e9").status_code == 400
    assert stored_keys(redis_db) == []
    key = new_key()
    first = post(client, key)
    quoted = post(client, f'"{key}"')
    assert quoted["Idempotent-Replayed"] == "true"
    assert quoted.content == first.content
    assert runs(key) == 1


@pytest.mark.parametrize("how", ["validation", "error"])
def test_handler_exception_frees_the_key(client, redis_db, how):
    key = new_key()
    client.raise_request_exception = False
    failed = post(client, key, url=f"{URL}?raise={how}")
    assert failed.status_code == (400 if how == "validation" else 500)
    assert stored_keys(redis_db) == []
    corrected = post(client, key)
    assert corrected.status_code == 201
    assert runs(key) == 2


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_answers_are_not_stored(client, redis_db, status):
    key = new_key()
    assert post(client, key, url=f"{URL}?status={status}").status_code == status
    assert stored_keys(redis_db) == []
    assert post(client, key, url=f"{URL}?status={status}").status_code == status
    assert runs(key) == 2


def test_server_errors_stored_when_configured(client, redis_db):
    key = new_key()
    with override_settings(IDEMPOTENCY={**REDIS, "STORE_SERVER_ERRORS": True}):
        first = post(client, key, url=f"{URL}?status=503")
        replay = post(client, key, url=f"{URL}?status=503")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert runs(key) == 1


def test_other_4xx_is_stored_and_replayed(client, redis_db):
    key = new_key()
    first = post(client, key, url=f"{URL}?status=402")
    replay = post(client, key, url=f"{URL}?status=402")
    assert (first.status_code, replay.status_code) == (402, 402)
    assert replay["Idempotent-Replayed"] == "true"
    assert runs(key) == 1


def test_streaming_response_is_stored_whole(client, redis_db):
    key = new_key()
    first = post(client, key, url=f"{URL}?stream=2500")
    assert b"".join(first.streaming_content) == b"x" * 2500
    replay = post(client, key, url=f"{URL}?stream=2500")
    assert replay.content == b"x" * 2500
    assert runs(key) == 1


def test_response_too_large_is_answered_once_and_never_run_again(client, redis_db):
    key = new_key()
    with override_settings(IDEMPOTENCY={**REDIS, "MAX_RESPONSE_BYTES": 1000}):
        first = post(client, key, url=f"{URL}?size=1001")
        retry = post(client, key, url=f"{URL}?size=1001")
    # The handler's effects are outside any transaction: they stand, so the
    # request must never run again, and every copy gets the same problem.
    assert first.status_code == 500
    assert json.loads(first.content)["type"].endswith("response-not-stored")
    assert retry.status_code == 500
    assert retry.content == first.content
    assert runs(key) == 1


def test_streamed_response_too_large_is_answered_once(client, redis_db):
    key = new_key()
    with override_settings(IDEMPOTENCY={**REDIS, "MAX_RESPONSE_BYTES": 1000}):
        first = post(client, key, url=f"{URL}?stream=2500")
        retry = post(client, key, url=f"{URL}?stream=2500")
    assert first.status_code == retry.status_code == 500
    assert retry.content == first.content
    assert runs(key) == 1


def test_key_optional_when_not_required(client, redis_db):
    with override_settings(IDEMPOTENCY={**REDIS, "REQUIRED": False}):
        assert post(client, None).status_code == 201
        assert post(client, None).status_code == 201
    assert runs("") >= 2
    assert stored_keys(redis_db) == []


@pytest.mark.parametrize(
    "options",
    [{"SOCKET_TIMEOUT": "1"}, {"CONNECTION_POOL_KWARGS": {"decode_responses": True}}],
)
def test_an_unusable_cache_fails_closed(client, redis_db, options, caplog):
    caches = caches_with("broken", other_database(django_settings.REDIS_URL, 14), **options)
    key = new_key()
    with override_settings(CACHES=caches, IDEMPOTENCY={**REDIS, "REDIS": "broken"}):
        response = post(client, key)
    assert response.status_code == 503
    assert runs(key) == 0
    assert "answered 503" in caplog.text


def test_expired_record_is_a_new_key(client, redis_db):
    key = new_key()
    with override_settings(IDEMPOTENCY={**REDIS, "TTL": 0.2}):
        first = post(client, key)
        assert post(client, key).content == first.content
        time.sleep(0.3)
        again = post(client, key)
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again
    assert again.content != first.content
    assert runs(key) == 2


def test_safe_methods_pass_through(client, redis_db):
    key = new_key()
    assert client.get(URL, headers={"Idempotency-Key": key}).status_code == 201
    assert client.get(URL, headers={"Idempotency-Key": key}).status_code == 201
    assert runs(key) == 2
    assert stored_keys(redis_db) == []


def test_users_never_share_a_key(user, other_user, redis_db):
    key = new_key()
    alice, bob = APIClient(), APIClient()
    alice.force_authenticate(user)
    bob.force_authenticate(other_user)
    first, second = post(alice, key), post(bob, key)
    assert "Idempotent-Replayed" not in second
    assert first.content != second.content
    assert post(bob, key).content == second.content
    assert runs(key) == 2


@pytest.mark.parametrize(
    "value", [b"not a record", b'{"state":"paused","owner":"","fingerprint":""}\n']
)
def test_a_value_this_package_did_not_write_is_never_run_over(client, redis_db, value):
    key = new_key()
    post(client, key)
    (stored,) = stored_keys(redis_db)
    redis_db.set(stored, value)
    answer = post(client, key)
    assert answer.status_code == 409
    assert runs(key) == 1


# Exactly once under concurrent duplicates.


def test_concurrent_duplicates_run_exactly_once(user, redis_db):
    for _ in range(5):
        key = new_key()
        responses = Threads([lambda key=key: send(user, key) for _ in range(12)]).join()
        tally("Redis store: duplicates released together", responses, runs(key))
        assert runs(key) == 1
        assert_one_original(responses)


# Leases: a worker whose lease ran out never touches the new owner's record.


def test_lease_expiry_lets_a_retry_take_over_and_the_late_worker_stores_nothing(
    user, redis_db, gate, caplog
):
    name, held = gate
    key = new_key()
    with override_settings(IDEMPOTENCY={**REDIS, "LOCK_TIMEOUT": 0.3}):
        late = Threads([lambda: send(user, key, gate=name)])
        assert held.entered.wait(timeout=10)
        time.sleep(0.4)  # the first worker's lease runs out while it works
        takeover = send(user, key)
        assert takeover.status_code == 201
        held.release.set()
        (late_response,) = late.join()
        replay = send(user, key)
    # The late worker's own client still learns what its request did...
    assert late_response.status_code == 201
    # ...but the record is the new owner's, and says so to every retry.
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == takeover.content
    assert runs(key) == 2
    assert late_log(caplog) == [
        (
            "ERROR",
            f"POST {URL} outlived its lease (LOCK_TIMEOUT) and another request has run the "
            "handler again and stored its response since: the handler ran twice, and this "
            "response is not stored. Raise LOCK_TIMEOUT above the slowest handler of "
            "backend='redis' views.",
        )
    ]


def late_log(caplog) -> list[tuple[str, str]]:
    return [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if "outlived its lease" in record.getMessage()
    ]


def test_a_late_worker_whose_key_nobody_took_still_stores_its_response(
    user, redis_db, gate, caplog
):
    name, held = gate
    key = new_key()
    with override_settings(IDEMPOTENCY={**REDIS, "LOCK_TIMEOUT": 0.3}):
        late = Threads([lambda: send(user, key, gate=name)])
        assert held.entered.wait(timeout=10)
        time.sleep(0.4)  # the lease runs out, and no retry comes
        held.release.set()
        (first,) = late.join()
        replay = send(user, key)
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert runs(key) == 1
    assert late_log(caplog) == [
        (
            "WARNING",
            f"POST {URL} outlived its lease (LOCK_TIMEOUT) but no other request holds its key "
            "now, so its response was stored (had another claimed the key meanwhile and "
            "failed, the handler ran twice). Raise LOCK_TIMEOUT above the slowest handler of "
            "backend='redis' views.",
        )
    ]


def outlive_the_lease_while_another_owns(user, key: str, gate, url: str = URL):
    """The first request outlives its lease, held; a second claims the key
    and is held in turn while the first finishes. Returns the first's
    response, the status of a retry sent meanwhile, and the second's."""
    from tests.testapp import views

    name, held = gate
    with override_settings(IDEMPOTENCY={**REDIS, "LOCK_TIMEOUT": 0.3}):
        late = Threads([lambda: send(user, key, url, gate=name)])
        assert held.entered.wait(timeout=10)
        time.sleep(0.4)
    # The new owner holds a long lease.
    second_name = new_key()
    views.GATES[second_name] = second = views.Gate()
    try:
        owner = Threads([lambda: send(user, key, gate=second_name)])
        assert second.entered.wait(timeout=10)
        held.release.set()
        (late_response,) = late.join()
        meanwhile = send(user, key).status_code
        second.release.set()
        (owned,) = owner.join()
    finally:
        second.release.set()
        del views.GATES[second_name]
    return late_response, meanwhile, owned


def test_a_late_worker_whose_key_another_holds_stores_nothing(user, redis_db, gate, caplog):
    key = new_key()
    _late, meanwhile, owned = outlive_the_lease_while_another_owns(user, key, gate)
    assert meanwhile == 409  # still the new owner's
    assert send(user, key).content == owned.content
    assert late_log(caplog) == [
        (
            "ERROR",
            f"POST {URL} outlived its lease (LOCK_TIMEOUT) and another request has claimed its "
            "key since: the handler may run twice, and this response is not stored. Raise "
            "LOCK_TIMEOUT above the slowest handler of backend='redis' views.",
        )
    ]


def test_a_late_worker_that_fails_leaves_the_new_owners_claim(user, redis_db, gate):
    key = new_key()
    failed, meanwhile, owned = outlive_the_lease_while_another_owns(
        user, key, gate, f"{URL}?raise=error"
    )
    assert failed.status_code == 500
    # The failing late worker released nothing: the key is still in flight.
    assert meanwhile == 409
    assert send(user, key).content == owned.content
    assert runs(key) == 2


def info_for(key: str) -> RequestInfo:
    from django.utils import timezone

    return RequestInfo("user:1", key, "f" * 64, "POST", "/", timezone.now())


def test_compare_and_set_scripts_check_the_owner(redis_db):
    store = redis_backend.RedisStore("idempotency")
    info = info_for(new_key())
    first = store.claim(info, timedelta(milliseconds=50))
    assert first.outcome is Outcome.CLAIMED
    time.sleep(0.1)
    second = store.claim(info, timedelta(seconds=30))
    assert second.outcome is Outcome.CLAIMED
    response = StoredResponse(201, [("Content-Type", "text/plain")], b"late")
    assert store.complete(first, response, timedelta(hours=1)) is Completion.TAKEN_OVER
    store.release(first)
    # The second owner's claim is intact, and only its owner completes it.
    assert store.claim(info, timedelta(seconds=30)).outcome is Outcome.IN_FLIGHT
    mine = StoredResponse(201, [], b"mine")
    assert store.complete(second, mine, timedelta(hours=1)) is Completion.STORED
    assert store.complete(first, response, timedelta(hours=1)) is Completion.REDONE
    replay = store.claim(info, timedelta(seconds=30))
    assert replay.outcome is Outcome.COMPLETED
    assert replay.response == StoredResponse(201, [], b"mine")
    assert replay.fingerprint == info.fingerprint
    # Released claims are gone; stale tokens release nothing.
    other = info_for(new_key())
    claim = store.claim(other, timedelta(seconds=30))
    stale = dataclasses.replace(claim.token, owner="0" * 32)
    store.release(Claim(Outcome.CLAIMED, token=stale))
    assert store.claim(other, timedelta(seconds=30)).outcome is Outcome.IN_FLIGHT
    store.release(claim)
    assert store.claim(other, timedelta(seconds=30)).outcome is Outcome.CLAIMED
    # Something this package did not write holds the key: not ours either.
    store.redis.set(claim.token.key, b"not a record")
    assert store.complete(claim, response, timedelta(hours=1)) is Completion.TAKEN_OVER


def test_body_bytes_survive_the_record_format(redis_db):
    body = bytes(range(256)) + b"\n\n{}\r\n"
    response = StoredResponse(200, [("Content-Type", "application/octet-stream")], body)
    store = redis_backend.RedisStore("idempotency")
    info = info_for(new_key())
    claim = store.claim(info, timedelta(seconds=30))
    assert store.complete(claim, response, timedelta(hours=1)) is Completion.STORED
    assert store.claim(info, timedelta(seconds=30)).response == response


# Outages: fail closed by default, open when configured, never a double
# execution while Redis keeps its data.


def test_unreachable_redis_fails_closed_with_a_503(client, proxy, caplog):
    proxy.cut()
    key = new_key()
    response = post(client, key)
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    document = json.loads(response.content)
    assert document["type"].endswith("redis-unavailable")
    assert document["status"] == 503
    assert runs(key) == 0
    assert "Redis unavailable during POST /redis/charge/; answered 503." in caplog.text
    proxy.restore()
    assert post(client, key).status_code == 201
    assert runs(key) == 1


def test_a_redis_that_hangs_fails_closed_after_the_socket_timeout(client, proxy, caplog):
    proxy.stall()
    key = new_key()
    response = post(client, key)
    assert response.status_code == 503
    assert runs(key) == 0
    assert "TimeoutError" in caplog.text


def test_fail_open_runs_the_handler_unprotected(client, proxy, caplog):
    proxy.cut()
    key = new_key()
    with override_settings(IDEMPOTENCY={**REDIS, "REDIS": "proxied", "REDIS_FAIL_OPEN": True}):
        first = post(client, key)
        second = post(client, key)
    assert (first.status_code, second.status_code) == (201, 201)
    # The documented risk: duplicates run while Redis is away.
    assert runs(key) == 2
    assert "ran the handler unprotected" in caplog.text


def test_redis_lost_while_the_handler_runs(user, proxy, redis_db, gate, caplog):
    name, held = gate
    key = new_key()
    first = Threads([lambda: send(user, key, gate=name)])
    assert held.entered.wait(timeout=10)
    proxy.cut()
    held.release.set()
    (response,) = first.join()
    # The handler ran: its client gets its answer, not an error to retry.
    assert response.status_code == 201
    assert "response may not be stored" in caplog.text
    # While Redis is away, retries are refused, never run.
    assert send(user, key).status_code == 503
    proxy.restore()
    # Redis kept the claim: until the lease expires, retries get a 409.
    assert send(user, key).status_code == 409
    assert runs(key) == 1


def test_redis_lost_before_a_failed_handler_releases(user, proxy, redis_db, gate, caplog):
    name, held = gate
    key = new_key()
    first = Threads([lambda: send(user, key, f"{URL}?raise=error", gate=name)])
    assert held.entered.wait(timeout=10)
    proxy.cut()
    held.release.set()
    (response,) = first.join()
    assert response.status_code == 500
    assert "while releasing the key" in caplog.text
    proxy.restore()
    # The claim could not be released; it lasts until its lease expires.
    assert send(user, key).status_code == 409
    assert runs(key) == 1


def test_misconfigured_view_raises(client, redis_db):
    with (
        override_settings(IDEMPOTENCY={}),
        pytest.raises(Exception, match=r"idempotency\.E021"),
    ):
        post(client, new_key())


def test_stored_value_is_one_json_line_and_the_body(client, redis_db):
    key = new_key()
    first = post(client, key)
    (stored,) = stored_keys(redis_db)
    head, _, body = redis_db.get(stored).partition(b"\n")
    header = json.loads(head)
    assert header["state"] == "completed"
    assert header["status"] == 201
    assert body == first.content


def test_without_redis_py_installed_views_fail_as_misconfigured(client, monkeypatch):
    # As on a machine without the "redis" extra: both imports fail. That is
    # no outage, and a 503 would have clients retry in vain: a 500.
    for module in ("redis.exceptions", "django_redis"):
        monkeypatch.setitem(sys.modules, module, None)
    assert redis_backend.errors() == (redis_backend.Unusable,)
    key = new_key()
    with pytest.raises(ImproperlyConfigured) as excinfo:
        post(client, key)
    assert str(excinfo.value).startswith("The 'idempotency' cache cannot be used: ")
    assert str(excinfo.value).endswith(
        "`manage.py check` reports this (idempotency.E018, E019, E024)."
    )
    assert runs(key) == 0


@pytest.mark.parametrize("backend", ["django_redis.cache.RedisCach", "no_such_module.Cache"])
def test_a_cache_backend_that_cannot_be_imported_is_no_outage(client, backend):
    caches = {**django_settings.CACHES, "typo": {"BACKEND": backend, "LOCATION": "x"}}
    key = new_key()
    with (
        override_settings(CACHES=caches, IDEMPOTENCY={"REDIS": "typo"}),
        pytest.raises(ImproperlyConfigured) as excinfo,
    ):
        post(client, key)
    assert str(excinfo.value).startswith("The 'typo' cache cannot be used: ")
    assert runs(key) == 0


def test_start_up_prepares_what_requests_import(monkeypatch, caplog):
    for module in redis_backend.PREPARED_MODULES:
        monkeypatch.delitem(sys.modules, module, raising=False)
    redis_backend.prepare()
    assert all(module in sys.modules for module in redis_backend.PREPARED_MODULES)
    assert "could not be prepared" not in caplog.text


@override_settings(IDEMPOTENCY={})
def test_start_up_imports_no_redis_when_none_is_configured(monkeypatch):
    monkeypatch.delitem(sys.modules, "django_redis")
    redis_backend.prepare()
    assert "django_redis" not in sys.modules


def test_start_up_survives_a_cache_it_cannot_build(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "django_redis", None)
    redis_backend.prepare()
    assert caplog.messages == [
        "The Redis caches ['idempotency'] could not be prepared at start-up: "
        "ModuleNotFoundError('import of django_redis halted; None in sys.modules')"
    ]
