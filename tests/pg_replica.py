"""A PostgreSQL primary and its streaming replica, each a cluster of its own
(``initdb``, then ``pg_basebackup``) on a free 127.0.0.1 port in a temporary
directory, for tests/test_replica.py. Both are stopped and deleted when the
block ends. The machine's own server is left alone: the primary is a cluster
of the harness's, so that its ``pg_hba.conf`` may allow replication.

PostgreSQL refuses to run as root, so as root the harness runs its programs
as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.servers import HOST, free_port

USER = "postgres"


def _bin(program: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {program} is missing")
    return found[-1]


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", USER, "--", *command] if os.geteuid() == 0 else command


@dataclass(frozen=True)
class Cluster:
    port: int
    directory: Path

    def url(self, database: str) -> str:
        return f"postgres://{USER}@{HOST}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url(database), autocommit=True)


def _start(directory: Path, port: int, log: Path) -> None:
    subprocess.run(
        _as_postgres(
            [
                _bin("pg_ctl"),
                *("-D", str(directory), "-l", str(log), "-w", "-t", "60", "start"),
                "-o",
                f"-p {port} -c listen_addresses={HOST} -k {directory.parent}",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=90,
    )


def _stop(directory: Path) -> None:
    subprocess.run(
        _as_postgres([_bin("pg_ctl"), "-D", str(directory), "-m", "immediate", "-w", "stop"]),
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )


@contextmanager
def primary_and_replica() -> Iterator[tuple[Cluster, Cluster]]:
    """Yield a primary and a hot-standby replica streaming from it."""
    root = Path(tempfile.mkdtemp(prefix="pg-replica-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam(USER)
        shutil.chown(root, account.pw_uid, account.pw_gid)
    primary = Cluster(free_port(), root / "primary")
    replica = Cluster(free_port(), root / "replica")
    started: list[Path] = []
    try:
        subprocess.run(
            _as_postgres(
                [
                    _bin("initdb"),
                    *("-D", str(primary.directory), "-U", USER, "--auth=trust"),
                    "--no-sync",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=120,
        )
        with (primary.directory / "postgresql.conf").open("a") as conf:
            conf.write("wal_level = replica\nmax_wal_senders = 4\nfsync = off\n")
        with (primary.directory / "pg_hba.conf").open("a") as hba:
            hba.write(f"host replication {USER} {HOST}/32 trust\n")
        _start(primary.directory, primary.port, root / "primary.log")
        started.append(primary.directory)
        subprocess.run(
            _as_postgres(
                [
                    _bin("pg_basebackup"),
                    *("-h", HOST, "-p", str(primary.port), "-U", USER),
                    *("-D", str(replica.directory), "-R", "-X", "stream", "--no-sync"),
                ]
            ),
            check=True,
            timeout=120,
        )
        _start(replica.directory, replica.port, root / "replica.log")
        started.append(replica.directory)
        with primary.connect() as connection:
            deadline = time.monotonic() + 30
            while not connection.execute(
                "SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'"
            ).fetchone():
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica is not streaming")
                time.sleep(0.05)
        yield primary, replica
    finally:
        for directory in reversed(started):
            _stop(directory)
        shutil.rmtree(root, ignore_errors=True)


def caught_up(primary: Cluster, replica: Cluster, timeout: float = 30) -> None:
    """Wait until the replica has replayed everything the primary wrote."""
    with primary.connect() as source, replica.connect() as target:
        (wanted,) = source.execute("SELECT pg_current_wal_lsn()").fetchone()
        deadline = time.monotonic() + timeout
        while not target.execute(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [wanted]
        ).fetchone()[0]:
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not catch up")
            time.sleep(0.02)
