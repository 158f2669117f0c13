"""Running requests in threads of their own, so their transactions overlap."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from django.db import connections

from tests.helpers import URL, executions, new_key, send
from tests.testapp.models import User

# What the concurrency tests sent and saw, printed at the end of the run.
TALLY: dict[str, Counter[str]] = defaultdict(Counter)
LATENCIES: dict[str, float] = {}


def tally(test: str, responses: list, executions: int) -> None:
    counts = TALLY[test]
    counts["keys"] += 1
    counts["requests"] += len(responses)
    counts["executions"] += executions
    for response in responses:
        replayed = "Idempotent-Replayed" in response
        counts[f"{response.status_code}{' replay' if replayed else ''}"] += 1


def tally_http(test: str, answers: list, executions: int) -> None:
    """``tally`` for the answers of a real server (``servers.Answer``),
    whose header names are lower case."""
    counts = TALLY[test]
    counts["keys"] += 1
    counts["requests"] += len(answers)
    counts["executions"] += executions
    for answer in answers:
        replayed = " replay" if "idempotent-replayed" in answer.headers else ""
        counts[f"{answer.status}{replayed}"] += 1


def assert_one_original(responses: list) -> None:
    """One request ran; every other answer is a 409 or a byte-identical
    replay of it."""
    originals = [r for r in responses if r.status_code == 201 and "Idempotent-Replayed" not in r]
    assert len(originals) == 1
    for response in responses:
        if response is not originals[0]:
            assert response.status_code in (201, 409), response.content
            if response.status_code == 201:
                assert response["Idempotent-Replayed"] == "true"
                assert response.content == originals[0].content


class Threads:
    """Requests in threads of their own, released together by a barrier."""

    def __init__(self, calls: list[Callable[[], object]]) -> None:
        self.results: list[object] = [None] * len(calls)
        start = threading.Barrier(len(calls))

        def work(index: int, call: Callable[[], object]) -> None:
            try:
                start.wait(timeout=10)
                self.results[index] = call()
            except BaseException as exc:  # reported by the test, not swallowed
                self.results[index] = exc
            finally:
                connections.close_all()

        self.threads = [
            threading.Thread(target=work, args=(index, call), daemon=True)
            for index, call in enumerate(calls)
        ]
        for thread in self.threads:
            thread.start()

    def finished(self) -> int:
        return sum(not thread.is_alive() for thread in self.threads)

    def wait_until_finished(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.finished() < count:
            assert time.monotonic() < deadline, f"only {self.finished()} of {count} finished"
            time.sleep(0.005)

    def join(self) -> list:
        for thread in self.threads:
            thread.join(timeout=30)
            assert not thread.is_alive(), "a request never returned"
        for result in self.results:
            if isinstance(result, BaseException):
                raise result
        return self.results


def duplicate_of_a_held_request(user: User, gate: tuple[str, Any]) -> float:
    """Hold a first request inside its transaction, send a duplicate, and check
    that it gets a 409 while the first is still held, then the first's replay
    once it has finished. Returns the seconds the 409 took."""
    name, held = gate
    key = new_key()
    url = f"{URL}?gate={name}"
    first = Threads([lambda: send(user, key, url)])
    assert held.entered.wait(timeout=10)
    started = time.monotonic()
    duplicate = send(user, key, url)
    elapsed = time.monotonic() - started
    assert duplicate.status_code == 409
    assert duplicate["Retry-After"] == "1"
    assert duplicate["Content-Type"] == "application/problem+json"
    # Answered while the first is still in flight:
    assert not held.release.is_set()
    assert first.finished() == 0
    held.release.set()
    (original,) = first.join()
    assert original.status_code == 201
    replay = send(user, key, url)
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == original.content
    assert executions(key) == 1
    LATENCIES["409 to a duplicate of a held request"] = elapsed
    return elapsed


def in_another_thread(work: Callable[[], object], timeout: float = 10) -> None:
    """Run ``work`` on a database connection of its own, and wait for it."""

    def run() -> None:
        try:
            work()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=timeout)
    assert not thread.is_alive(), "the other connection was blocked"


def kill_session(session_id: int) -> None:
    """End another connection's database session, as a dying worker would,
    and return once it is gone, its transaction rolled back and its locks
    released: both servers end a session after they answer the kill."""
    connection = connections["default"]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # With a timeout, PostgreSQL waits for the backend to exit.
            cursor.execute("SELECT pg_terminate_backend(%s, 10000)", [session_id])
            return
        cursor.execute(f"KILL CONNECTION {int(session_id)}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM information_schema.processlist WHERE id = %s", [session_id]
            )
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.01)
        raise AssertionError(f"session {session_id} still there 10 s after KILL")
