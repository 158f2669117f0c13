"""PgBouncer between Django and PostgreSQL, in transaction pooling (the
common deployment) and in session pooling: the test project served by
gunicorn (two workers of four threads: eight clients) through a pool of
three server connections, so that one client's transactions run on
connections other clients used before.

The claim takes a transaction-level advisory lock and sets its settings for
its transaction only (``set_config(..., true)``), and Django prepares no
statements unless told to: nothing of one request may outlive its
transaction on a pooled connection.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from django.db import connection

from tests import servers
from tests.concurrency import LATENCIES, tally_http
from tests.helpers import new_key
from tests.pgbouncer import pgbouncer

pytestmark = [pytest.mark.vendor("postgresql")]

POOL = 3
KEYS, COPIES = 6, 6
# The handler takes its time, so that copies arrive while it runs.
SLOW = "/charge/?sleep=0.3"
WAITING = "/waiting/?sleep=0.3"
# The advisory locks held in this database: pg_locks covers the whole
# server, where other databases' clients may hold theirs.
ADVISORY_LOCKS = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


@pytest.fixture(scope="module")
def database(django_db_setup) -> Iterator[str]:
    """A database of the module's own on the test server, migrated, with
    the user who signs the requests in; its direct URL."""
    settings = connection.settings_dict
    name = f"{settings['NAME']}_bouncer"
    server = f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT']}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    env = {**os.environ, "DATABASE_URL": f"{server}/{name}"}
    env["DJANGO_SETTINGS_MODULE"] = "tests.server_settings"
    subprocess.run(
        [sys.executable, "-c", servers.SETUP], cwd=servers.ROOT, env=env, check=True, timeout=120
    )
    yield f"{server}/{name}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["transaction", "session"])
def pooled(request, database, tmp_path_factory) -> Iterator[tuple[servers.Server, str, str]]:
    """The project served through PgBouncer in each pooling mode: the
    server, the URL through the pooler, and the mode."""
    mode = request.param
    name = database.rsplit("/", 1)[1]
    settings = connection.settings_dict
    with pgbouncer(mode, POOL, server_port=int(settings["PORT"])) as port:
        through = f"postgres://{settings['USER']}@127.0.0.1:{port}/{name}"
        env = {
            **os.environ,
            "DATABASE_URL": through,
            "DJANGO_SETTINGS_MODULE": "tests.server_settings",
            "PYTHONUNBUFFERED": "1",
        }
        log = tmp_path_factory.mktemp(f"pgbouncer-{mode}") / "gunicorn.log"
        with servers.serve("gunicorn", env, log, threads=4, workers=2) as server:
            yield server, through, mode


def count(url: str, sql: str, *params: object) -> int:
    with psycopg.connect(url, autocommit=True) as direct:
        return int(direct.execute(sql, params).fetchone()[0])


def charges(database: str, key: str) -> int:
    return count(database, "SELECT count(*) FROM testapp_execution WHERE key = %s", key)


def charge(server: servers.Server, path: str, key: str) -> servers.Answer:
    return servers.post(server.port, path, b"{}", [("Idempotency-Key", key)])


def at_once(server: servers.Server, path: str, keys: list[str]) -> dict[str, list[servers.Answer]]:
    """Each key ``COPIES`` times, every request released at once."""
    start = threading.Barrier(len(keys) * COPIES)
    answers: dict[str, list[servers.Answer]] = {key: [] for key in keys}

    def send(key: str) -> None:
        start.wait(timeout=10)
        answers[key].append(charge(server, path, key))

    threads = [threading.Thread(target=send, args=(key,)) for key in keys for _ in range(COPIES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


def test_duplicates_run_once_through_the_pooler(pooled, database):
    server, _, mode = pooled
    keys = [new_key() for _ in range(KEYS)]
    answers = at_once(server, SLOW, keys)
    test = f"pgbouncer, {mode} pooling: duplicates (HTTP, {POOL} server connections)"
    for key in keys:
        statuses = [answer.status for answer in answers[key]]
        assert len(statuses) == COPIES
        assert set(statuses) <= {201, 409}, statuses
        originals = [
            a for a in answers[key] if a.status == 201 and "idempotent-replayed" not in a.headers
        ]
        assert len(originals) == 1, statuses
        retry = charge(server, SLOW, key)
        assert (retry.status, retry.headers.get("idempotent-replayed")) == (201, "true")
        assert retry.body == originals[0].body
        assert charges(database, key) == 1
        tally_http(test, [*answers[key], retry], charges(database, key))


def test_a_duplicate_is_refused_at_once_through_the_pooler(pooled, database):
    """The pool has room for the duplicate (one of its three connections
    runs the first request): its 409 does not wait for the first one."""
    server, _, mode = pooled
    key = new_key()
    first: list[servers.Answer] = []
    holder = threading.Thread(target=lambda: first.append(charge(server, "/charge/?sleep=2", key)))
    holder.start()
    # Its claim is uncommitted, but its advisory lock shows.
    deadline = time.monotonic() + 10
    while not count(database, ADVISORY_LOCKS):
        assert time.monotonic() < deadline, "the first request never claimed its key"
        time.sleep(0.01)
    latencies = []
    for _ in range(3):
        started = time.monotonic()
        refused = charge(server, "/charge/?sleep=2", key)
        latencies.append(time.monotonic() - started)
        assert refused.status == 409, refused.body
    holder.join(timeout=30)
    assert first[0].status == 201
    assert charges(database, key) == 1
    # Two seconds is how long the first request holds its key.
    assert max(latencies) < 1.0, latencies
    LATENCIES[f"pgbouncer, {mode} pooling: slowest 409 of 3 while a key is held 2 s"] = max(
        latencies
    )


def test_no_session_state_leaks_from_one_client_to_another(pooled, database):
    """After claims, waits (which shorten lock_timeout for a statement) and
    their advisory locks, every server connection of the pool is as the
    server made it."""
    server, through, _ = pooled
    keys = [new_key() for _ in range(3)]
    answers = at_once(server, WAITING, keys)
    assert all(a.status == 201 for key in keys for a in answers[key])
    assert all(charges(database, key) == 1 for key in keys)
    with psycopg.connect(database, autocommit=True) as direct:
        defaults = direct.execute(
            "SELECT current_setting('lock_timeout'),"
            " current_setting('idle_in_transaction_session_timeout')"
        ).fetchone()
        # Nothing holds an advisory lock, and no transaction was left open.
        assert direct.execute(ADVISORY_LOCKS).fetchone() == (0,)
        assert direct.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND state LIKE 'idle in transaction%%'"
        ).fetchone() == (0,)
    # As many clients at once as the pool has server connections: each
    # transaction holds one, so together they see every one of them.
    clients = [psycopg.connect(through) for _ in range(POOL)]
    try:
        seen = [
            client.execute(
                "SELECT pg_backend_pid(), current_setting('lock_timeout'),"
                " current_setting('idle_in_transaction_session_timeout')"
            ).fetchone()
            for client in clients
        ]
    finally:
        for client in clients:
            client.close()
    assert len({pid for pid, *_ in seen}) == POOL
    assert [tuple(settings) for _, *settings in seen] == [defaults] * POOL


def test_the_purge_runs_through_the_pooler(pooled, database):
    _, through, _ = pooled
    past = datetime.now(timezone.utc) - timedelta(days=1)
    future = datetime.now(timezone.utc) + timedelta(days=1)
    scope = f"purge-{uuid.uuid4()}"
    with psycopg.connect(database, autocommit=True) as direct:
        for index, expires_at in enumerate([past] * 5 + [future] * 2):
            direct.execute(
                "INSERT INTO idempotency_idempotencykey"
                " (scope, key, state, fingerprint, method, path, created_at, expires_at)"
                " VALUES (%s, %s, 'in_flight', '', 'POST', '/', now(), %s)",
                [scope, str(index), expires_at],
            )
    env = {
        **os.environ,
        "DATABASE_URL": through,
        "DJANGO_SETTINGS_MODULE": "tests.server_settings",
    }
    purged = subprocess.run(
        [sys.executable, "-m", "django", "purge_idempotency_keys", "--batch-size=2"],
        cwd=servers.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert purged.returncode == 0, purged.stderr
    assert "Deleted" in purged.stdout
    left = count(
        database, "SELECT count(*) FROM idempotency_idempotencykey WHERE scope = %s", scope
    )
    assert left == 2
