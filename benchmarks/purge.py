"""``purge_idempotency_keys`` on a table of expired records: rows per second,
peak memory of the command, and its longest batch (each batch is one short
transaction, so this bounds how long it holds row locks).

    python -m benchmarks.purge [postgres] [mariadb] [sqlite] [--rows N ...]

The command runs as its own process, exactly as cron would run it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from . import common


def run_command(batch_size: int) -> dict[str, Any]:
    """Run the management command; time each batch from the moment its line
    (verbosity 2) arrives, and read the process's peak memory."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "django",
            "purge_idempotency_keys",
            f"--batch-size={batch_size}",
            "--verbosity=2",
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    batches, last, longest, total = 0, None, 0.0, 0
    for line in process.stdout:
        now = time.perf_counter()
        if line.startswith("Deleted a batch"):
            if last is not None:
                longest = max(longest, now - last)
            batches += 1
            last = now
        elif line.startswith("Deleted "):
            total = int(line.split()[1])
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    common.check(status == 0, "purge exited with", status)
    return {
        "deleted": total,
        "seconds": elapsed,
        "batches": batches,
        "longest_batch_ms": longest * 1000,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
    }


def one(url: str, sizes: list[int], batch_size: int) -> dict[str, Any]:
    common.configure(url)
    from django.db import connection

    from idempotency.models import IdempotencyKey

    runs = []
    with common.scratch_database() as vendor:
        version = common.server_version()
        for rows in sizes:
            common.fill_keys(rows, expired=True)
            connection.close()
            run = run_command(batch_size)
            common.check(run["deleted"] == rows, run, rows)
            common.check(not IdempotencyKey.objects.exists(), "rows left behind")
            runs.append({"rows": rows, **run})
    return {"vendor": vendor, "server": version, "runs": runs, "batch_size": batch_size}


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batch-size", type=int, default=1000)


# Rows deleted per second, at least, on the server databases.
TARGET = 100_000


def _target(vendor: str, rate: float) -> str:
    if vendor == "sqlite":
        return ""
    return f">= {TARGET:,} {'met' if rate >= TARGET else 'NOT MET'}"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = [
        [
            result["server"],
            f"{run['rows']:,}",
            f"{run['seconds']:.1f}",
            f"{run['deleted'] / run['seconds']:,.0f}",
            f"{run['peak_rss_mb']:.0f}",
            f"{run['longest_batch_ms']:.1f}",
            _target(result["vendor"], run["deleted"] / run["seconds"]),
        ]
        for result in results
        for run in result["runs"]
    ]
    common.print_table(
        f"purge_idempotency_keys --batch-size={args.batch_size} ({common.machine()})",
        [
            "database",
            "expired rows",
            "seconds",
            "rows/s",
            "peak RSS MB",
            "longest batch ms",
            "target",
        ],
        rows,
    )
    print("Seconds: the whole command, from the start of its process (Django's setup included).")


def main() -> None:
    common.command(
        "benchmarks.purge",
        __doc__,
        ["postgres", "mariadb"],
        options,
        lambda url, args: one(url, args.rows, args.batch_size),
        report,
    )


if __name__ == "__main__":
    main()
