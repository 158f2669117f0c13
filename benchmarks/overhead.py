"""What ``@idempotent`` costs per request: the example's charge handler
undecorated, decorated (first execution) and decorated (replay), interleaved
in one run, on each database.

    python -m benchmarks.overhead [sqlite] [postgres] [mariadb] [--rounds N]

Databases are named or given as URLs (default: all three, on 127.0.0.1).
Each request goes through the project's whole WSGI application in-process.
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from collections.abc import Callable
from typing import Any

from . import common

UNDECORATED = "/api/undecorated/charges/"
DECORATED = "/api/charges/"
KINDS = ("undecorated", "first", "replay")


def body(number: int) -> bytes:
    return json.dumps({"amount": 1, "description": f"charge {number}"}).encode()


class Requests:
    """The three kinds of request, each checked for the answer it must get:
    through ``client`` (the WSGI application by default), to the handler
    undecorated at ``undecorated`` and decorated at ``decorated``."""

    def __init__(
        self,
        client: common.Client | common.AsgiClient | None = None,
        undecorated: str = UNDECORATED,
        decorated: str = DECORATED,
    ) -> None:
        self.client = client or common.Client()
        self.paths = (undecorated, decorated)
        self.count = 0
        self.done: list[tuple[str, bytes, bytes]] = []  # (key, body, response) to replay

    def undecorated(self) -> None:
        self.count += 1
        status, _, _ = self.client.post(self.paths[0], body(self.count))
        common.check(status == 201, status)

    def first(self) -> None:
        self.count += 1
        key, payload = str(uuid.uuid4()), body(self.count)
        status, content, _ = self.client.post(self.paths[1], payload, key)
        common.check(status == 201, status, content)
        self.done.append((key, payload, content))

    def replay(self) -> None:
        key, payload, content = random.choice(self.done)
        status, replayed, headers = self.client.post(self.paths[1], payload, key)
        common.check(status == 201, status)
        common.check(replayed == content, replayed, content)
        common.check(headers.get("Idempotent-Replayed") == "true", headers)


def measure(rounds: int) -> dict[str, Any]:
    """Medians (ms) of each kind, interleaved in random order every round,
    and the statements each kind sends."""
    requests = Requests()
    calls = {kind: getattr(requests, kind) for kind in KINDS}
    requests.first()
    statements = {}
    for kind, call in calls.items():
        with common.Statements.count() as counted:
            call()
        statements[kind] = {"other": counted.other, "control": counted.control, "sql": counted.sql}
    return {"medians": common.interleaved_medians(calls, rounds), "statements": statements}


def one(
    url: str, rounds: int, measuring: Callable[[int], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``measuring`` (this module's :func:`measure` by default) on a scratch
    database at ``url``, with the database's name and version."""
    common.configure(url)
    with common.scratch_database() as vendor:
        result = (measuring or measure)(rounds)
        result["vendor"] = vendor
        result["server"] = common.server_version()
    return result


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rounds = args.rounds
    rows = []
    for result in results:
        medians, statements = result["medians"], result["statements"]
        base = medians["undecorated"]
        rows.append(
            [
                result["server"],
                *(f"{medians[kind]:.3f}" for kind in KINDS),
                f"{medians['first'] / base:.2f}x",
                f"{medians['replay'] / base:.2f}x",
                *(
                    f"{statements[kind]['other']} + {statements[kind]['control']}"
                    for kind in KINDS
                ),
            ]
        )
    common.print_table(
        f"Overhead of @idempotent, median ms per request over {rounds} interleaved rounds "
        f"({common.machine()})",
        [
            "database",
            "undecorated",
            "first",
            "replay",
            "first/undec.",
            "replay/undec.",
            "stmts undec.",
            "stmts first",
            "stmts replay",
        ],
        rows,
    )
    print("Statements: other + transaction control (BEGIN/COMMIT/savepoints/autocommit).")
    if args.sql:
        for result in results:
            for kind in KINDS:
                print(f"\n{result['server']}, {kind}:")
                for sql in result["statements"][kind]["sql"]:
                    print(f"  {sql[:160]}")


def sql_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sql", action="store_true", help="also print each kind's statements")


def main() -> None:
    common.rounds_command("benchmarks.overhead", __doc__, 2000, one, report, sql_option)


if __name__ == "__main__":
    main()
