"""Requests per second through gunicorn (4 sync workers by default) with
distinct keys: the example's charge handler decorated and undecorated, in
alternating phases of one run.

    python -m benchmarks.throughput [sqlite] [postgres] [mariadb] [--seconds S]

Clients are separate processes on 127.0.0.1, as many as the server has
workers, each sending one request at a time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import time
import uuid
from typing import Any

from . import common, server
from .overhead import DECORATED, FLOOR, UNDECORATED, body

PATHS = {"undecorated": UNDECORATED, "decorated": DECORATED, "floor": FLOOR}


def client(port: int, path: str, seconds: float, keyed: bool, results: Any) -> None:
    done = 0
    failures: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        headers = {"X-Bench-User": common.USER}
        if keyed:
            headers["Idempotency-Key"] = str(uuid.uuid4())
        status, _, _ = server.post(port, path, body(done), headers)
        if status == 201:
            done += 1
        else:
            failures[status] = failures.get(status, 0) + 1
    results.put((done, failures))


def phase(port: int, path: str, seconds: float, clients: int) -> float:
    results: Any = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(
            target=client, args=(port, path, seconds, path != UNDECORATED, results)
        )
        for _ in range(clients)
    ]
    for process in processes:
        process.start()
    counts = [results.get(timeout=seconds + 60) for _ in processes]
    for process in processes:
        process.join()
    failures = {status: n for _, failed in counts for status, n in failed.items()}
    common.check(not failures, path, failures)
    return sum(done for done, _ in counts) / seconds


def one(url: str, workers: int, seconds: float, rounds: int) -> dict[str, Any]:
    common.configure(url)
    from django.db import connection

    rates: dict[str, list[float]] = {kind: [] for kind in PATHS}
    with common.scratch_database() as vendor:
        version = common.server_version()
        connection.close()  # the workers open their own
        with server.gunicorn(workers, env={"BENCH_DATABASE_URL": url}) as served:
            for path in PATHS.values():  # warm up every path
                phase(served.port, path, 1, workers)
            for _ in range(rounds):
                kinds = list(rates)
                random.shuffle(kinds)
                for kind in kinds:
                    rates[kind].append(phase(served.port, PATHS[kind], seconds, workers))
    return {"vendor": vendor, "server": version, "rates": rates}


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5, help="length of one phase")
    parser.add_argument("--rounds", type=int, default=3, help="phases of each kind")


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = []
    for result in results:
        undecorated = common.median(result["rates"]["undecorated"])
        decorated = common.median(result["rates"]["decorated"])
        floor = common.median(result["rates"]["floor"])
        rows.append(
            [
                result["server"],
                f"{undecorated:.0f}",
                f"{decorated:.0f}",
                f"{floor:.0f}",
                f"{undecorated / decorated:.2f}x",
                f"{undecorated / floor:.2f}x",
                f"<= 1.12x {'met' if undecorated / decorated <= 1.12 else 'NOT MET'}",
            ]
        )
    common.print_table(
        f"Throughput through gunicorn, {args.workers} workers, distinct keys, median of "
        f"{args.rounds} phases of {args.seconds:g} s ({common.machine()})",
        [
            "database",
            "undecorated req/s",
            "decorated req/s",
            "floor req/s",
            "time/undec.",
            "floor time/undec.",
            "target",
        ],
        rows,
    )
    print(
        "Floor: the same charge with a plain INSERT and UPDATE of its record in its own "
        "transaction (benchmarks/floor.py). Time per request is the inverse of the rate."
    )


def main() -> None:
    common.command(
        "benchmarks.throughput",
        __doc__,
        ["sqlite", "postgres", "mariadb"],
        options,
        lambda url, args: one(url, args.workers, args.seconds, args.rounds),
        report,
    )


if __name__ == "__main__":
    main()
