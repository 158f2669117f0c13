"""What Redis saves: replays (and first executions) of the example's charge
with the database store alone, with the Redis accelerator in front of it,
and with the Redis-only store, interleaved in one run, on each database.

    python -m benchmarks.replay [sqlite] [postgres] [mariadb] [--rounds N]

Databases are named or given as URLs (default: all three, on 127.0.0.1);
Redis is ``BENCH_REDIS_URL`` (default redis://127.0.0.1:6379/1, keys under
the prefix ``idempotency-bench``, deleted afterwards). Each request goes
through the project's whole WSGI application in-process; the accelerator is
switched by assigning ``settings.IDEMPOTENCY`` between requests.
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from collections.abc import Callable
from typing import Any

from . import common

DATABASE_STORE = "/api/charges/"
REDIS_STORE = "/api/redis-store/charges/"
UNDECORATED = "/api/undecorated/charges/"
# (name, path, accelerator on, replay)
KINDS = [
    ("undecorated", UNDECORATED, False, False),
    ("first, database", DATABASE_STORE, False, False),
    ("first, accelerated", DATABASE_STORE, True, False),
    ("first, Redis store", REDIS_STORE, False, False),
    ("replay, database", DATABASE_STORE, False, True),
    ("replay, accelerated", DATABASE_STORE, True, True),
    ("replay, Redis store", REDIS_STORE, False, True),
]


class Requests:
    """Each kind of request, checked for the answer it must get."""

    def __init__(self) -> None:
        from django.conf import settings

        self.settings = settings
        self.plain = dict(settings.IDEMPOTENCY)
        self.accelerated = {**self.plain, "REDIS_ACCELERATOR": True}
        self.client = common.Client()
        self.count = 0
        # Completed requests per kind of first execution: (key, body, response).
        self.done: dict[tuple[str, bool], list[tuple[str, bytes, bytes]]] = {}

    def body(self) -> bytes:
        self.count += 1
        return json.dumps({"amount": 1, "description": f"charge {self.count}"}).encode()

    def call(self, path: str, accelerated: bool, replay: bool) -> Callable[[], None]:
        settings = self.accelerated if accelerated else self.plain
        done = self.done.setdefault((path, accelerated), [])

        def first() -> None:
            key, payload = str(uuid.uuid4()), self.body()
            status, content, _ = self.client.post(path, payload, key)
            common.check(status == 201, status, content)
            done.append((key, payload, content))

        def again() -> None:
            key, payload, content = random.choice(done)
            status, replayed, headers = self.client.post(path, payload, key)
            common.check(status == 201, status)
            common.check(replayed == content, replayed, content)
            common.check(headers.get("Idempotent-Replayed") == "true", headers)

        def undecorated() -> None:
            status, content, _ = self.client.post(path, self.body())
            common.check(status == 201, status, content)

        call = again if replay else undecorated if path == UNDECORATED else first

        def switched() -> None:
            self.settings.IDEMPOTENCY = settings
            call()

        return switched


def redis_round_trips(call: Callable[[], None]) -> int:
    """Commands the package sent to Redis during ``call``, each one round
    trip (a Lua script is one, whatever it runs inside Redis)."""
    from django_redis import get_redis_connection

    client = get_redis_connection("idempotency")  # the client the package gets too
    sent = 0
    execute = client.execute_command

    def counted(*args: Any, **options: Any) -> Any:
        nonlocal sent
        sent += 1
        return execute(*args, **options)

    client.execute_command = counted
    try:
        call()
    finally:
        del client.execute_command
    return sent


def measure(rounds: int) -> dict[str, Any]:
    requests = Requests()
    calls = {name: requests.call(path, on, replay) for name, path, on, replay in KINDS}
    for name, *_, replay in KINDS:  # something to replay for each kind
        if not replay:
            calls[name]()
    statements, commands = {}, {}
    for name, call in calls.items():
        with common.Statements.count() as counted:
            commands[name] = redis_round_trips(call)
        statements[name] = {"other": counted.other, "control": counted.control}
    # What the accelerator is for: a replay from Redis sends no SQL at all.
    for name in ("replay, accelerated", "replay, Redis store"):
        common.check(statements[name] == {"other": 0, "control": 0}, name, statements[name])
    # The switch of settings happens inside each timed call; it costs the
    # same for every kind.
    return {
        "medians": common.interleaved_medians(calls, rounds),
        "statements": statements,
        "commands": commands,
    }


def one(url: str, rounds: int) -> dict[str, Any]:
    common.configure(url)
    from django_redis import get_redis_connection

    redis = get_redis_connection("idempotency")
    try:
        with common.scratch_database() as vendor:
            result = measure(rounds)
            result["vendor"] = vendor
            result["server"] = common.server_version()
            result["redis"] = "Redis " + redis.info("server")["redis_version"]
    finally:
        for key in redis.scan_iter(match="idempotency-bench:*", count=1000):
            redis.delete(key)
    return result


# What the accelerator must cost at most (set for PostgreSQL), as a ratio of
# (the request measured, the request it is measured against).
TARGETS = {
    # A first execution pays for the accelerator's Redis round trips: at most
    # 3% over the database store's.
    "first, accelerated": ("first, database", 1.03),
    # A replay from Redis sends no SQL: at most 0.24 of the undecorated handler.
    "replay, accelerated": ("undecorated", 0.24),
}


def target(medians: dict[str, float], name: str) -> str:
    if name not in TARGETS:
        return ""
    against, goal = TARGETS[name]
    ratio = medians[name] / medians[against]
    return f"{ratio:.2f}x of {against} <= {goal:.2f}x {'met' if ratio <= goal else 'NOT MET'}"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = []
    for result in results:
        medians, statements = result["medians"], result["statements"]
        for name, *_ in KINDS:
            rows.append(
                [
                    result["server"],
                    name,
                    f"{medians[name]:.3f}",
                    f"{medians[name] / medians['replay, database']:.2f}x",
                    f"{medians[name] / medians['undecorated']:.2f}x",
                    f"{statements[name]['other']} + {statements[name]['control']}",
                    result["commands"][name],
                    target(medians, name),
                ]
            )
    common.print_table(
        f"Replays with and without Redis, median ms per request over {args.rounds} interleaved "
        f"rounds ({results[0]['redis'] if results else ''}; {common.machine()})",
        [
            "database",
            "request",
            "median ms",
            "/ database replay",
            "/ undecorated",
            "SQL stmts",
            "Redis trips",
            "target",
        ],
        rows,
    )
    print("SQL statements: other + transaction control (BEGIN/COMMIT/savepoints/autocommit).")
    print("Redis trips: commands sent to Redis, a Lua script counting as one.")


def main() -> None:
    common.rounds_command("benchmarks.replay", __doc__, 2000, one, report)


if __name__ == "__main__":
    main()
