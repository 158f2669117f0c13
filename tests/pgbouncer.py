"""PgBouncer (Debian's ``pgbouncer``) between Django and PostgreSQL, started
on a free 127.0.0.1 port with a configuration of its own and killed when its
block ends: for tests/test_pgbouncer.py and the load harness
(``python -m benchmarks.stress postgres --pgbouncer transaction``).

Every database of the server is reachable through it under its own name
(``* =``), with trust authentication as the server itself has here. PgBouncer
refuses to run as root, so as root it runs as the ``postgres`` user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import HOST, free_port

EXECUTABLE = "/usr/sbin/pgbouncer"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def configuration(port: int, server_port: int, mode: str, pool_size: int, directory: Path) -> str:
    return "\n".join(
        [
            "[databases]",
            f"* = host={HOST} port={server_port}",
            "[pgbouncer]",
            f"listen_addr = {HOST}",
            f"listen_port = {port}",
            f"unix_socket_dir = {directory}",
            "auth_type = trust",
            f"auth_file = {directory / 'users.txt'}",
            f"pool_mode = {mode}",
            f"default_pool_size = {pool_size}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            "max_client_conn = 500",
            # Django's start-up options; PgBouncer refuses unknown ones.
            "ignore_startup_parameters = extra_float_digits,options",
            # A server connection goes back to the pool as it was left:
            # nothing may reset what one client's transaction changed, so
            # that a leak would show.
            "server_reset_query =",
            f"logfile = {directory / 'pgbouncer.log'}",
            f"pidfile = {directory / 'pgbouncer.pid'}",
            "",
        ]
    )


@contextmanager
def pgbouncer(
    mode: str = "transaction", pool_size: int = 4, server_port: int = 5432
) -> Iterator[int]:
    """Run PgBouncer in ``mode`` (transaction or session pooling) with at
    most ``pool_size`` server connections per database and user; yield its
    port."""
    if not os.path.exists(EXECUTABLE):
        raise RuntimeError(f"{EXECUTABLE} is missing: apt-get install pgbouncer")
    directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    port = free_port()
    (directory / "users.txt").write_text('"postgres" ""\n"root" ""\n')
    config = directory / "pgbouncer.ini"
    config.write_text(configuration(port, server_port, mode, pool_size, directory))
    command = [EXECUTABLE, str(config)]
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        shutil.chown(directory, account.pw_uid, account.pw_gid)
        for path in directory.iterdir():
            shutil.chown(path, account.pw_uid, account.pw_gid)
        command = [EXECUTABLE, "-u", "postgres", str(config)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                log = directory / "pgbouncer.log"
                raise RuntimeError(
                    "PgBouncer did not start: "
                    + (log.read_text(errors="replace") if log.exists() else "no log")
                )
            time.sleep(0.02)
        yield port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)
