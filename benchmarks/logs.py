"""The server's log, one file of JSON lines per worker process.

gunicorn's workers share its stderr, and a long report (a traceback) is
written in several pieces: reports of two workers could interleave, and a
reader splitting on "Internal Server Error" would pin one worker's 503
warning on another worker's 500. Here each process appends whole records to
a file of its own, and the load harness reads them record by record.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class WorkerFileHandler(logging.Handler):
    """Appends each record as one JSON line to ``<directory>/<pid>.jsonl``."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = Path(directory)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = json.dumps(
                {
                    "logger": record.name,
                    "level": record.levelname,
                    "message": record.getMessage(),
                    "traceback": (
                        "".join(traceback.format_exception(*record.exc_info))
                        if record.exc_info
                        else ""
                    ),
                }
            )
            path = self.directory / f"{os.getpid()}.jsonl"
            with path.open("a", encoding="utf-8") as log:
                log.write(line + "\n")
        except Exception:
            self.handleError(record)


@dataclass(frozen=True)
class Record:
    logger: str
    level: str
    message: str
    traceback: str


def records(directory: Path) -> Iterator[Record]:
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            yield Record(**json.loads(line))
