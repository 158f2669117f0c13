"""Async handlers, and sync ones under ASGI, served by uvicorn with several
worker processes on the real database: concurrent duplicates of a key,
spread over the workers, run the handler exactly once; the others get a
prompt 409 while it runs, and its replay after.

The server uses the test database itself: the rows it commits are counted
here, and the module flushes them when it ends.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connections

from tests import servers
from tests.helpers import executions, new_key

# Transactional: the servers' requests see what a test commits, and each
# test's leftovers are flushed after it.
pytestmark = [pytest.mark.server_db, pytest.mark.django_db(transaction=True)]

WORKERS = 3
DUPLICATES = 8
# Long enough that every duplicate arrives while the first one runs.
HANDLER_SECONDS = 1.5


def database_url() -> str:
    """The test database, as the served project reaches it."""
    where = connections["default"].settings_dict
    scheme = "postgres" if connections["default"].vendor == "postgresql" else "mysql"
    return f"{scheme}://{where['USER']}@{where['HOST']}:{where['PORT']}/{where['NAME']}"


@pytest.fixture(scope="module")
def served_env(django_db_setup) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "tests.server_settings",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def uvicorn(served_env, tmp_path_factory) -> Iterator[servers.Server]:
    log = tmp_path_factory.mktemp("uvicorn") / "uvicorn.log"
    with servers.serve("uvicorn", served_env, log, workers=WORKERS, timeout=60) as server:
        yield server


@pytest.fixture(autouse=True)
def served_user(transactional_db) -> None:
    """The user the requests authenticate as, committed for the servers."""
    get_user_model().objects.create_user(servers.USERNAME, password=servers.PASSWORD)


def duplicates(port: int, path: str, key: str, count: int) -> list[tuple[servers.Answer, float]]:
    """``count`` identical POSTs, sent at once from threads of their own,
    each with how long its answer took."""
    start = threading.Barrier(count)
    answers: list[tuple[servers.Answer, float]] = []

    def send() -> None:
        start.wait(timeout=10)
        began = time.monotonic()
        answer = servers.post(port, path, b'{"amount": 100}', [("Idempotency-Key", key)])
        answers.append((answer, time.monotonic() - began))

    threads = [threading.Thread(target=send) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == count
    return answers


HANDLERS = {
    "adrf @api_view, async": "/async/function/",
    "adrf APIView + IdempotentMixin, async": "/async/mixin/",
    "adrf ViewSet + IdempotentMixin, async": "/async/charges/",
    "DRF APIView, sync under ASGI": "/charge/",
}


@pytest.mark.parametrize("path", HANDLERS.values(), ids=HANDLERS.keys())
def test_concurrent_duplicates_over_several_workers_run_once(uvicorn, path):
    key = new_key()
    url = f"{path}?sleep={HANDLER_SECONDS}"
    answers = duplicates(uvicorn.port, url, key, DUPLICATES)
    statuses = Counter(answer.status for answer, _ in answers)
    assert statuses == {201: 1, 409: DUPLICATES - 1}, (statuses, uvicorn.output())
    # Prompt: each 409 came while the first request still ran.
    conflicts = [took for answer, took in answers if answer.status == 409]
    assert max(conflicts) < HANDLER_SECONDS, conflicts
    assert all(
        answer.headers["retry-after"] == "1" for answer, _ in answers if answer.status == 409
    )
    assert executions(key) == 1

    (first,) = [answer for answer, _ in answers if answer.status == 201]
    retry = servers.post(uvicorn.port, url, b'{"amount": 100}', [("Idempotency-Key", key)])
    assert (retry.status, retry.body) == (201, first.body)
    assert retry.headers["idempotent-replayed"] == "true"
    assert executions(key) == 1


def test_many_keys_at_once_each_run_once(uvicorn):
    """Several keys' duplicates at once, so that the workers all hold
    claims together."""
    keys = [new_key() for _ in range(4)]
    results: dict[str, list[tuple[servers.Answer, float]]] = {}

    def burst(key: str) -> None:
        results[key] = duplicates(uvicorn.port, "/async/function/?sleep=1", key, 4)

    threads = [threading.Thread(target=burst, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    pids = set()
    for key in keys:
        statuses = Counter(answer.status for answer, _ in results[key])
        assert statuses == {201: 1, 409: 3}, statuses
        assert executions(key) == 1
        (first,) = [answer for answer, _ in results[key] if answer.status == 201]
        pids.add(json.loads(first.body)["pid"])
    print(f"originals served by {len(pids)} of {WORKERS} workers")


def test_an_async_handler_that_fails_leaves_nothing_and_frees_the_key(uvicorn):
    key = new_key()
    failed = servers.post(
        uvicorn.port, "/async/function/?raise=1", b"{}", [("Idempotency-Key", key)]
    )
    assert failed.status == 500
    assert executions(key) == 0  # its awaited write rolled back
    retry = servers.post(uvicorn.port, "/async/function/", b"{}", [("Idempotency-Key", key)])
    assert retry.status == 201
    assert json.loads(retry.body)["in_transaction"] is True
    assert executions(key) == 1


@pytest.mark.redis
@pytest.mark.parametrize("accelerated", [False, True], ids=["redis store", "accelerator"])
def test_redis_from_async_handlers_over_several_workers(served_env, tmp_path: Path, accelerated):
    """The Redis store (``backend="redis"``), and the accelerator in front of
    the database store, reached from async handlers on several workers."""
    env = {**served_env, "SERVER_ACCELERATOR": "1" if accelerated else "0"}
    path = "/async/function/" if accelerated else "/async/redis/"
    with servers.serve("uvicorn", env, tmp_path / "log", workers=WORKERS, timeout=60) as server:
        key = new_key()
        url = f"{path}?sleep={HANDLER_SECONDS}"
        answers = duplicates(server.port, url, key, DUPLICATES)
        statuses = Counter(answer.status for answer, _ in answers)
        assert statuses == {201: 1, 409: DUPLICATES - 1}, (statuses, server.output())
        assert executions(key) == 1
        (first,) = [answer for answer, _ in answers if answer.status == 201]
        for _ in range(2):  # from Redis, once the first has finished
            retry = servers.post(server.port, url, b'{"amount": 100}', [("Idempotency-Key", key)])
            assert (retry.status, retry.body) == (201, first.body)
            assert retry.headers["idempotent-replayed"] == "true"
        assert executions(key) == 1
