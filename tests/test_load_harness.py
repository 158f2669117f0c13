"""The load harness's reading of the server's log (benchmarks/logs.py).

Its workers used to share one stream, where one worker's 503 warning could
land between the lines of another's 500 report and be read as its cause: a
500 raised before the package then counted as one through it, and CI failed
one run in four.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from benchmarks import stress
from benchmarks.logs import WorkerFileHandler, records

PACKAGE_FRAME = Path(stress.__file__).resolve().parent.parent / "idempotency" / "core.py"


def traceback_through(path: str, error: str) -> str:
    return (
        "Traceback (most recent call last):\n"
        f'  File "{path}", line 1, in somewhere\n'
        "    call()\n"
        f"{error}\n"
    )


def log(directory: Path, worker: int, name: str, message: str, traceback: str) -> None:
    """A record as a worker's WorkerFileHandler writes it."""
    line = {"logger": name, "level": "ERROR", "message": message, "traceback": traceback}
    with (directory / f"{worker}.jsonl").open("a") as file:
        file.write(json.dumps(line) + "\n")


def test_a_500_before_the_package_is_not_blamed_on_a_503_logged_meanwhile(tmp_path):
    log(
        tmp_path,
        1,
        "django.request",
        "Internal Server Error: /api/charges/",
        traceback_through(
            "/venv/lib/python3.11/site-packages/rest_framework/authentication.py",
            "django.db.utils.OperationalError: the database system is shutting down",
        ),
    )
    log(
        tmp_path,
        2,
        "idempotency",
        "Database session lost during POST /api/charges/; answered 503.",
        traceback_through(
            str(PACKAGE_FRAME),
            "django.db.utils.OperationalError: the database system is shutting down",
        ),
    )
    assert stress.causes_of_500(tmp_path) == {
        "before it: django.db.utils.OperationalError: the database system is shutting down <- "
        'File "/venv/lib/python3.11/site-packages/rest_framework/authentication.py", line 1, '
        "in somewhere": 1
    }


def test_a_500_through_the_package_is_found(tmp_path):
    log(
        tmp_path,
        1,
        "django.request",
        "Internal Server Error: /api/charges/",
        traceback_through(str(PACKAGE_FRAME), "RuntimeError: boom"),
    )
    (cause,) = stress.causes_of_500(tmp_path)
    assert cause.startswith("through the package: RuntimeError: boom <- ")


def test_each_record_is_one_line_whole(tmp_path):
    handler = WorkerFileHandler(str(tmp_path))
    try:
        raise ValueError("multi\nline")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "a\nb", None, sys.exc_info())
    handler.emit(record)
    (only,) = records(tmp_path)
    assert only.message == "a\nb"
    assert only.traceback.endswith("ValueError: multi\nline\n")
