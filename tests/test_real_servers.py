"""The HTTP behaviour that only a real server shows, on gunicorn (WSGI),
uvicorn (ASGI) and Django's runserver: a header line sent twice, and
streams over asynchronous iterators; and SQLite under ATOMIC_REQUESTS with
a server's threads writing at once."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers
from tests.helpers import new_key

KINDS = ["gunicorn", "uvicorn", "runserver"]
LIST = (
    "It holds a list, not one key: the header was sent more than once (servers join repeated "
    "header lines with commas) or with several values. Send it once, with one key."
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> servers.Project:
    return servers.project(tmp_path_factory.mktemp("real-servers"))


@pytest.fixture(scope="module", params=KINDS)
def server(request, project, tmp_path_factory) -> Iterator[servers.Server]:
    log = tmp_path_factory.mktemp(request.param) / "server.log"
    with servers.serve(request.param, project.env, log) as served:
        yield served


def charge(server: servers.Server, path: str, *keys: str) -> servers.Answer:
    """A POST with one Idempotency-Key line per key."""
    headers = [("Idempotency-Key", key) for key in keys]
    return servers.post(server.port, path, b'{"amount": 1}', headers)


def test_a_header_line_sent_twice_is_refused_not_run(server, project):
    key = new_key()
    twice = charge(server, "/function/", key, key)
    assert twice.status == 400
    assert twice.headers["content-type"] == "application/problem+json"
    assert json.loads(twice.body)["detail"].endswith(LIST)
    assert project.executions(key) == 0
    assert charge(server, "/function/", key).status == 201
    again = charge(server, "/function/", key, key)
    assert again.status == 400
    replay = charge(server, "/function/", key)
    assert replay.headers["idempotent-replayed"] == "true"
    assert project.executions(key) == 1


def test_two_keys_on_two_lines_are_refused(server, project):
    first, second = new_key(), new_key()
    assert charge(server, "/function/", first, second).status == 400
    assert project.executions(first) == project.executions(second) == 0


@pytest.mark.parametrize("query", ["stream=2500", "stream=2500&async=1"])
def test_a_stream_is_served_stored_and_replayed(server, project, query):
    key = new_key()
    first = charge(server, f"/function/?{query}", key)
    assert first.status == 200
    assert first.body == b"x" * 2500
    replay = charge(server, f"/function/?{query}", key)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.body == first.body
    assert project.executions(key) == 1


# SQLite under ATOMIC_REQUESTS, its transactions IMMEDIATE (as system check
# W004 asks): a server's threads write at once, with new keys and copies.
KEYS, COPIES, ROUNDS = 8, 3, 4


def test_sqlite_under_atomic_requests_runs_every_key_once(project, tmp_path: Path):
    env = {**project.env, "SERVER_ATOMIC_REQUESTS": "1"}
    with servers.serve(
        "gunicorn", env, tmp_path / "gunicorn.log", threads=KEYS * COPIES
    ) as served:
        for _round in range(ROUNDS):
            keys = [new_key() for _ in range(KEYS)]
            barrier = threading.Barrier(KEYS * COPIES)
            answers: dict[str, list[servers.Answer]] = {key: [] for key in keys}

            def send(key: str, barrier=barrier, answers=answers) -> None:
                barrier.wait(timeout=10)
                answers[key].append(charge(served, "/function/", key))

            threads = [
                threading.Thread(target=send, args=(key,)) for key in keys for _ in range(COPIES)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            for key in keys:
                # Duplicates waited for the first, then got its replay.
                replayed = Counter(a.headers.get("idempotent-replayed") for a in answers[key])
                assert [a.status for a in answers[key]] == [201] * COPIES, answers[key]
                assert replayed == {None: 1, "true": COPIES - 1}
                assert len({a.body for a in answers[key]}) == 1
                assert project.executions(key) == 1
        assert "Traceback" not in served.output()
