"""What ``@idempotent`` costs an ``async def`` handler, beside what it costs
the same handler written sync, all served through Django's ASGI handler in
this process, interleaved in one run:

* sync: the example's charge handler undecorated, decorated (first
  execution), decorated (replay);
* async: the same handler as an adrf ``async def`` handler that awaits its
  transactional work through ``sync_to_async``, the same three ways.

    python -m benchmarks.async_overhead [sqlite] [postgres] [mariadb] [--rounds N]

Databases are named or given as URLs (default: all three, on 127.0.0.1).
Persistent connections are off, as Django advises under ASGI: every request
opens its connection, sync or async, decorated or not.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import common, overhead
from .overhead import Requests

PATHS = {
    "sync": ("/api/undecorated/charges/", "/api/charges/"),
    "async": ("/api/async/undecorated/charges/", "/api/async/charges/"),
}
KINDS = ("undecorated", "first", "replay")


def measure(rounds: int) -> dict[str, Any]:
    from django.db import connections

    # Each request's sync work runs in a thread of its own under ASGI, with a
    # connection of its own: Django advises against persistent connections
    # there (they would pile up, one per finished thread).
    connections["default"].settings_dict["CONN_MAX_AGE"] = 0
    client = common.AsgiClient()
    calls = {}
    for flavour, paths in PATHS.items():
        requests = Requests(client, *paths)
        requests.first()
        for kind in KINDS:
            calls[f"{flavour} {kind}"] = getattr(requests, kind)
    return {"medians": common.interleaved_medians(calls, rounds)}


def one(url: str, rounds: int) -> dict[str, Any]:
    return overhead.one(url, rounds, measure)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = []
    for result in results:
        medians = result["medians"]
        for flavour in PATHS:
            base = medians[f"{flavour} undecorated"]
            rows.append(
                [
                    result["server"],
                    flavour,
                    *(f"{medians[f'{flavour} {kind}']:.3f}" for kind in KINDS),
                    f"{medians[f'{flavour} first'] / base:.2f}x",
                    f"{medians[f'{flavour} replay'] / base:.2f}x",
                ]
            )
    common.print_table(
        f"@idempotent on sync and async handlers under ASGI, median ms per request over "
        f"{args.rounds} interleaved rounds ({common.machine()})",
        ["database", "handler", "undecorated", "first", "replay", "first/undec.", "replay/undec."],
        rows,
    )


def main() -> None:
    common.rounds_command("benchmarks.async_overhead", __doc__, 1000, one, report)


if __name__ == "__main__":
    main()
