"""gunicorn serving the example project on 127.0.0.1, and a plain HTTP client."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]

    def workers(self) -> list[int]:
        """The worker processes' ids, read from /proc (Linux)."""
        children = f"/proc/{self.process.pid}/task/{self.process.pid}/children"
        with open(children) as listing:
            return [int(pid) for pid in listing.read().split()]


@contextmanager
def gunicorn(
    workers: int = 4,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
    extra: tuple[str, ...] = (),
    log: Path | None = None,
) -> Iterator[Server]:
    """Serve ``benchmarks.wsgi`` with ``workers`` sync workers on a free port
    of 127.0.0.1 until the block ends, logging to ``log`` if given."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "benchmarks.wsgi:application",
            f"--workers={workers}",
            f"--bind={HOST}:{port}",
            "--log-level=warning",
            *extra,
        ],
        env={**os.environ, **(env or {})},
        start_new_session=True,
        stderr=log.open("ab") if log else None,
    )
    server = Server(port, process)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {process.returncode}")
            try:
                with socket.create_connection((HOST, port), timeout=1):
                    pass
                if len(server.workers()) == workers:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start within {timeout} s")
            time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def post(
    port: int,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float = 30,
) -> tuple[int, bytes, dict[str, str]]:
    """One POST on a new connection (gunicorn's sync workers close it anyway)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()
