"""The test project served by real servers on 127.0.0.1: gunicorn (WSGI,
sync or threaded workers), uvicorn (ASGI) and Django's runserver, over a
migrated SQLite file with a user, and a raw HTTP client that can send what
test clients cannot (a header line twice).

Each server runs in a process group of its own, started with the settings of
tests/server_settings.py, and is killed when its block ends.
"""

from __future__ import annotations

import base64
import http.client
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
USERNAME, PASSWORD = "served", "served-pw"
AUTHORIZATION = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()

SETUP = f"""
import django
django.setup()
from django.contrib.auth import get_user_model
from django.core.management import call_command
call_command("migrate", verbosity=0, interactive=False)
get_user_model().objects.create_user({USERNAME!r}, password={PASSWORD!r})
"""


@dataclass(frozen=True)
class Project:
    """A migrated SQLite file with a user, and the environment to serve it."""

    database: Path
    env: dict[str, str]

    def executions(self, key: str) -> int:
        """Committed runs of a test handler with ``key``, read from the file."""
        with sqlite3.connect(self.database) as connection:
            (count,) = connection.execute(
                "SELECT count(*) FROM testapp_execution WHERE key = ?", [key]
            ).fetchone()
        return int(count)


def project(directory: Path) -> Project:
    database = directory / "served.sqlite3"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "DJANGO_SETTINGS_MODULE": "tests.server_settings",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("SERVER_ACCELERATOR", "SERVER_ATOMIC_REQUESTS"):
        env.pop(name, None)
    subprocess.run([sys.executable, "-c", SETUP], cwd=ROOT, env=env, check=True, timeout=60)
    return Project(database, env)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def command(kind: str, port: int, threads: int, workers: int = 1) -> tuple[list[str], str | None]:
    """The command line of a server, and the line it prints once it has loaded
    the application (``None``: runserver, whose checks load it first)."""
    bind = f"{HOST}:{port}"
    if kind == "gunicorn":
        return [
            *("-m", "gunicorn", "tests.wsgi:application", f"--workers={workers}"),
            *("--worker-class=gthread", f"--threads={threads}") * (threads > 1),
            *(f"--bind={bind}", "--log-level=warning", "--timeout=30"),
        ], "tests.wsgi ready"
    if kind == "uvicorn":
        return [
            *("-m", "uvicorn", "tests.asgi:application", "--host", HOST, "--port", str(port)),
            *("--log-level", "warning", "--lifespan", "off", "--workers", str(workers)),
        ], "tests.asgi ready"
    if kind == "runserver":
        return ["-m", "django", "runserver", "--noreload", "--skip-checks", bind], None
    raise ValueError(kind)


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve(
    kind: str,
    env: dict[str, str],
    log: Path,
    threads: int = 1,
    timeout: float = 30,
    workers: int = 1,
    port: int | None = None,
) -> Iterator[Server]:
    """Serve the project with ``kind`` until the block ends (gunicorn and
    uvicorn: with ``workers`` processes, once each has loaded the
    application)."""
    port = port or free_port()
    arguments, ready = command(kind, port, threads, workers)
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, *arguments],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(port, process, log)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(server, ready, workers):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{kind} did not start:\n{server.output()}")
            time.sleep(0.02)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _ready(server: Server, line: str | None, workers: int = 1) -> bool:
    """Whether the application is loaded (by each worker) and the port
    listens (uvicorn loads the application before it binds)."""
    if line is not None and server.output().count(line) < workers:
        return False
    try:
        with socket.create_connection((HOST, server.port), timeout=1):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def post(
    port: int,
    path: str,
    body: bytes,
    headers: Sequence[tuple[str, str]],
    connection: http.client.HTTPConnection | None = None,
) -> Answer:
    """A POST with JSON ``body``, authenticated, with ``headers`` sent line
    by line as given (a name may repeat). Header names in the answer are
    lower case."""
    connection = connection or http.client.HTTPConnection(HOST, port, timeout=20)
    try:
        connection.putrequest("POST", path)
        for name, value in [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Authorization", AUTHORIZATION),
            *headers,
        ]:
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return Answer(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


@contextmanager
def example_project(
    directory: Path, settings: str = "example_project.settings"
) -> Iterator[Server]:
    """The example project, migrated on a SQLite file in ``directory`` (its
    demo user included) and served by gunicorn until the block ends."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{directory / 'example.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": settings,
        "DEBUG": "0",
        "PYTHONUNBUFFERED": "1",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "--verbosity=0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    with serve("gunicorn", env, directory / "gunicorn.log") as server:
        yield server
