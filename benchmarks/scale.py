"""Whether the key table's size shows in a request's cost: first executions
and replays with 10⁴ and 10⁶ stored records (``--rows`` for 10⁷).

    python -m benchmarks.scale [postgres] [mariadb] [sqlite] [--rows N ...]

Each size gets a fresh table, filled by the database itself with live
completed records of other keys, then the interleaved measurement of
``benchmarks.overhead``.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import common
from .overhead import measure


def one(url: str, sizes: list[int], rounds: int) -> dict[str, Any]:
    common.configure(url)
    runs = []
    for rows in sizes:
        with common.scratch_database() as vendor:
            common.fill_keys(rows, expired=False)
            runs.append({"rows": rows, **measure(rounds)})
            version = common.server_version()
    return {"vendor": vendor, "server": version, "runs": runs}


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=1000)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = []
    for result in results:
        for run in result["runs"]:
            medians = run["medians"]
            base = medians["undecorated"]
            rows.append(
                [
                    result["server"],
                    f"{run['rows']:,}",
                    f"{base:.3f}",
                    f"{medians['first']:.3f}",
                    f"{medians['replay']:.3f}",
                    f"{medians['first'] / base:.2f}x",
                    f"{medians['replay'] / base:.2f}x",
                ]
            )
    common.print_table(
        f"Request cost by table size, median ms over {args.rounds} interleaved rounds "
        f"({common.machine()})",
        [
            "database",
            "stored records",
            "undecorated",
            "first",
            "replay",
            "first/undec.",
            "replay/undec.",
        ],
        rows,
    )
    print(
        "The undecorated request, measured in the same rounds, does not touch the key "
        "table: the ratios show what the table's size adds, whatever the machine's speed "
        "during each run."
    )


def main() -> None:
    common.command(
        "benchmarks.scale",
        __doc__,
        ["postgres", "mariadb"],
        options,
        lambda url, args: one(url, args.rows, args.rounds),
        report,
    )


if __name__ == "__main__":
    main()
