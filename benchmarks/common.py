"""What the benchmarks share: a scratch database, a WSGI request, statement
counting, bulk-filling the key table and printing a table."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

SQLITE = "sqlite://"
POSTGRES = "postgres://postgres@127.0.0.1:5432/test"
MARIADB = "mysql://root@127.0.0.1:3306/test"
ALIASES = {"sqlite": SQLITE, "postgres": POSTGRES, "mariadb": MARIADB}
USER = "bench"


def database_urls(names: Sequence[str]) -> list[str]:
    """Command-line database names (sqlite, postgres, mariadb) or URLs."""
    return [ALIASES.get(name, name) for name in names]


def configure(url: str) -> None:
    """Point Django at the scratch database for ``url``; call before ``django.setup()``."""
    os.environ["BENCH_DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    import django

    django.setup()


@contextmanager
def scratch_database(balance: int = 2_000_000_000) -> Iterator[str]:
    """Create the benchmark database, migrate it and add the bench user with
    ``balance`` points; drop it afterwards. Yields the database vendor."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from example_project.wallet.models import Wallet

    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        user = get_user_model().objects.create_user(USER, password=USER)
        Wallet.objects.create(user=user, balance=balance)
        yield connection.vendor
    finally:
        connection.creation.destroy_test_db(connection.settings_dict["NAME"], verbosity=0)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def server_version() -> str:
    from django.db import connection

    if connection.vendor == "sqlite":
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        version = cursor.fetchone()[0]
    if connection.vendor == "postgresql":
        return " ".join(version.split()[:2])
    return f"MariaDB {version.split('-')[0]}"


class Client:
    """Calls the project's WSGI application in this process, as a server
    would, with the benchmark user's header: the whole Django request, minus
    the network."""

    def __init__(self) -> None:
        from django.core.handlers.wsgi import WSGIHandler

        self.handler = WSGIHandler()

    def post(self, path: str, body: bytes, key: str | None = None) -> tuple[int, bytes, dict]:
        environ = {
            "REQUEST_METHOD": "POST",
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_X_BENCH_USER": USER,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        if key is not None:
            environ["HTTP_IDEMPOTENCY_KEY"] = key
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None) -> None:
            answer["status"] = int(status.split()[0])
            answer["headers"] = dict(headers)

        result = self.handler(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            result.close()
        return answer["status"], content, answer["headers"]


class AsgiClient:
    """Calls the project's ASGI application in this process, on an event
    loop of its own, as an ASGI server would (each request's sync work in a
    thread of its own), with the benchmark user's header."""

    def __init__(self) -> None:
        from django.core.handlers.asgi import ASGIHandler

        self.handler = ASGIHandler()
        self.loop = asyncio.new_event_loop()

    def post(self, path: str, body: bytes, key: str | None = None) -> tuple[int, bytes, dict]:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-bench-user", USER.encode()),
        ]
        if key is not None:
            headers.append((b"idempotency-key", key.encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        incoming = [{"type": "http.request", "body": body, "more_body": False}]
        answer: dict[str, Any] = {"body": b""}

        async def receive() -> dict[str, Any]:
            if incoming:
                return incoming.pop()
            # The client stays connected: Django listens for a disconnect
            # while the view runs, and would abandon the request on one.
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["headers"] = {
                    name.decode().title(): value.decode() for name, value in message["headers"]
                }
            elif message["type"] == "http.response.body":
                answer["body"] += message.get("body", b"")

        self.loop.run_until_complete(self.handler(scope, receive, send))
        return answer["status"], answer["body"], answer["headers"]


TRANSACTION_CONTROL = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT", "BEGIN")


@dataclass
class Statements:
    """Statements a block of code sent on the default connection, split into
    transaction control (BEGIN, COMMIT, ROLLBACK, savepoints and switches of
    autocommit, each a round trip on some drivers) and the rest."""

    control: int = 0
    other: int = 0
    sql: list[str] = field(default_factory=list)

    @classmethod
    @contextmanager
    def count(cls) -> Iterator[Statements]:
        from django.db import connection

        counted = cls()

        def wrapper(execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
            counted.sql.append(sql)
            if sql.lstrip().upper().startswith(TRANSACTION_CONTROL):
                counted.control += 1
            else:
                counted.other += 1
            return execute(sql, params, many, context)

        def counting(method: Callable) -> Callable:
            def counted_call(*args: Any) -> Any:
                counted.control += 1
                counted.sql.append(f"<{method.__name__}{args}>")
                return method(*args)

            return counted_call

        originals = {name: getattr(connection, name) for name in ("_commit", "_rollback")}
        original_autocommit = connection._set_autocommit
        for name, method in originals.items():
            setattr(connection, name, counting(method))
        # psycopg sends BEGIN when autocommit goes off; mysqlclient sends
        # SET autocommit both ways. Counted once per switch either way.
        connection._set_autocommit = counting(original_autocommit)
        try:
            with connection.execute_wrapper(wrapper):
                yield counted
        finally:
            for name in (*originals, "_set_autocommit"):
                delattr(connection, name)

    def __str__(self) -> str:
        return f"{self.other} + {self.control} tx"


def check(condition: bool, *what: Any) -> None:
    """Stop the benchmark if a request did not get the answer it must get
    (an ``assert`` would vanish under ``python -O``)."""
    if not condition:
        raise RuntimeError(f"unexpected answer: {what}")


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - start) / 1e6


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def interleaved_medians(
    calls: dict[str, Callable[[], Any]], rounds: int, cpu: dict[str, float] | None = None
) -> dict[str, float]:
    """Median ms of each call over ``rounds`` rounds, after a warm-up. Each
    round runs every call once, in a new random order, so that drift in the
    machine's speed falls on all of them alike. ``cpu``, if given, receives
    the median ms of this thread's CPU time in each call: the Python work,
    where the rest of the time is spent waiting for the database or Redis
    (their own work, and the round trips)."""
    for _ in range(min(rounds, 200)):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    cpus: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            started = time.thread_time_ns()
            times[name].append(timed(calls[name]))
            cpus[name].append((time.thread_time_ns() - started) / 1e6)
    if cpu is not None:
        cpu.update({name: median(values) for name, values in cpus.items()})
    return {name: median(values) for name, values in times.items()}


def fill_keys(rows: int, expired: bool, chunk: int = 200_000) -> None:
    """Insert ``rows`` completed records into the key table with one
    ``INSERT … SELECT`` per chunk, generated by the database itself."""
    from django.db import connection, transaction
    from django.utils import timezone

    from idempotency.backends.database import COLUMNS
    from idempotency.models import IdempotencyKey

    table = connection.ops.quote_name(IdempotencyKey._meta.db_table)
    now = timezone.now()
    expires = now - timedelta(days=1) if expired else now + timedelta(days=365)
    columns = ", ".join(connection.ops.quote_name(name) for name in COLUMNS)
    if connection.vendor == "postgresql":
        series = "generate_series(%s, %s) AS n"
        key = "'k' || n"
        body = "convert_to('{\"id\": ' || n || '}', 'UTF8')"
    elif connection.vendor == "mysql":
        # MariaDB's SEQUENCE engine provides seq_1_to_N tables.
        series = "(SELECT seq AS n FROM seq_1_to_100000000 WHERE seq BETWEEN %s AND %s) AS s"
        key = "CONCAT('k', n)"
        body = "CAST(CONCAT('{\"id\": ', n, '}') AS BINARY)"
    else:
        series = (
            "(WITH RECURSIVE s(n) AS (SELECT %s UNION ALL SELECT n + 1 FROM s WHERE n < %s) "
            "SELECT n FROM s)"
        )
        key = "'k' || n"
        body = "CAST('{\"id\": ' || n || '}' AS BLOB)"
    headers = '[["Content-Type", "application/json"]]'
    sql = (
        f"INSERT INTO {table} ({columns}) SELECT 'user:filler', {key}, "
        f"'{'0' * 64}', 'completed', 'POST', '/api/charges/', 201, %s, {body}, "
        f"%s, %s, %s FROM {series}"
    )
    ops = connection.ops
    stamps = [ops.adapt_datetimefield_value(value) for value in (now, now, expires)]
    start = 1
    while start <= rows:
        end = min(rows, start + chunk - 1)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [headers, *stamps, start, end])
        start = end + 1
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {table}")
            # Write the fill out now, not during the measurement that follows.
            cursor.execute("CHECKPOINT")
    elif connection.vendor == "mysql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE TABLE {table}")
            cursor.fetchall()


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [list(map(str, header))] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join("-" * width for width in widths)
    print(line)
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print(line)
    print(line)


def command(
    module: str,
    doc: str,
    databases: list[str],
    options: Callable[[argparse.ArgumentParser], None],
    one: Callable[[str, argparse.Namespace], dict[str, Any]],
    report: Callable[[list[dict[str, Any]], argparse.Namespace], None],
) -> None:
    """The command line every script shares. Each database named (sqlite,
    postgres, mariadb) or given as a URL is measured by a process of its own,
    since Django's settings are per process: ``python -m module --one URL``
    with the same options, which prints its result as JSON. ``report`` then
    prints the table of all of them."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument(
        "databases", nargs="*", default=databases, help="sqlite, postgres, mariadb or URLs"
    )
    options(parser)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    forwarded = [arg for arg in sys.argv[1:] if arg not in args.databases]
    results = []
    for url in database_urls(args.databases):
        completed = subprocess.run(
            [sys.executable, "-m", module, "--one", url, *forwarded],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    report(results, args)


def rounds_command(
    module: str,
    doc: str,
    rounds: int,
    one: Callable[[str, int], dict[str, Any]],
    report: Callable[[list[dict[str, Any]], argparse.Namespace], None],
    more_options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """:func:`command` for a script that measures ``--rounds`` interleaved
    rounds (``rounds`` by default) on each database."""

    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rounds", type=int, default=rounds)
        if more_options is not None:
            more_options(parser)

    command(
        module,
        doc,
        ["sqlite", "postgres", "mariadb"],
        options,
        lambda url, args: one(url, args.rounds),
        report,
    )
