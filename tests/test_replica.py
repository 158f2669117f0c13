"""A PostgreSQL streaming replica behind a router that sends every read to
it, as read-scaling projects do (tests/pg_replica.py starts the primary and
the replica). The key table is read and written on the primary only: a
record read from a lagging replica could be missing, and the handler would
run again. The replica's replay is paused here, so the lag is not a race
the test hopes to win but a fact it checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connections
from django.db.backends.postgresql.base import DatabaseWrapper
from django.test import override_settings

from idempotency.checks import check_database
from tests import servers
from tests.concurrency import tally_http
from tests.helpers import executions, new_key, send
from tests.pg_replica import Cluster, caught_up, primary_and_replica

pytestmark = [pytest.mark.vendor("postgresql")]

DATABASE = "shop"
KEYS, COPIES = 6, 6
# The handler takes its time, so that copies arrive while it runs.
PATH = "/charge/?sleep=0.3"


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[Cluster, Cluster]]:
    """A primary with the test project's database, migrated and with a
    user, and its replica, caught up."""
    with primary_and_replica() as (primary, replica):
        with primary.connect() as connection:
            connection.execute(f"CREATE DATABASE {DATABASE}")
        subprocess.run(
            [sys.executable, "-c", servers.SETUP],
            cwd=servers.ROOT,
            env=project(primary, replica),
            check=True,
            timeout=120,
        )
        caught_up(primary, replica)
        yield primary, replica


def project(primary: Cluster, replica: Cluster) -> dict[str, str]:
    """The environment of the test project on the primary, its router
    reading from the replica."""
    return {
        **os.environ,
        "DATABASE_URL": primary.url(DATABASE),
        "REPLICA_URL": replica.url(DATABASE),
        "DJANGO_SETTINGS_MODULE": "tests.server_settings",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def served(clusters, tmp_path_factory) -> Iterator[tuple[servers.Server, dict[str, str]]]:
    """The project served by gunicorn (two workers of four threads)."""
    env = project(*clusters)
    log = tmp_path_factory.mktemp("replica") / "gunicorn.log"
    with servers.serve("gunicorn", env, log, threads=4, workers=2) as server:
        yield server, env


@contextmanager
def replay_paused(replica: Cluster) -> Iterator[None]:
    """The replica receives the primary's changes but applies none."""
    with replica.connect() as connection:
        connection.execute("SELECT pg_wal_replay_pause()")
        try:
            yield
        finally:
            connection.execute("SELECT pg_wal_replay_resume()")


def count(cluster: Cluster, sql: str, *params: object) -> int:
    with cluster.connect(DATABASE) as connection:
        return int(connection.execute(sql, params).fetchone()[0])


def records(cluster: Cluster, keys: list[str]) -> int:
    return count(
        cluster, "SELECT count(*) FROM idempotency_idempotencykey WHERE key = ANY(%s)", keys
    )


def charges(cluster: Cluster, key: str) -> int:
    return count(cluster, "SELECT count(*) FROM testapp_execution WHERE key = %s", key)


def orm(env: dict[str, str], code: str) -> str:
    """What ``code`` prints in a process of the served project's settings."""
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        cwd=servers.ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


def test_a_lagging_replica_never_answers_for_the_key_table(clusters, served):
    primary, replica = clusters
    server, env = served
    keys = [new_key() for _ in range(KEYS)]
    with replay_paused(replica):
        start = threading.Barrier(KEYS * COPIES)
        answers: dict[str, list[servers.Answer]] = {key: [] for key in keys}

        def charge(key: str) -> None:
            start.wait(timeout=10)
            answer = servers.post(server.port, PATH, b"{}", [("Idempotency-Key", key)])
            answers[key].append(answer)

        threads = [
            threading.Thread(target=charge, args=(key,)) for key in keys for _ in range(COPIES)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        # The lag, made visible: the primary holds every record, the replica none.
        assert records(primary, keys) == KEYS
        assert records(replica, keys) == 0
        test = "replica: duplicates while the replica lags (HTTP)"
        for key in keys:
            statuses = sorted(answer.status for answer in answers[key])
            assert len(statuses) == COPIES
            assert set(statuses) <= {201, 409}, statuses
            originals = [
                a
                for a in answers[key]
                if a.status == 201 and "idempotent-replayed" not in a.headers
            ]
            assert len(originals) == 1, statuses
            assert charges(primary, key) == 1
            # Every retry, now the first request has finished, replays it.
            retry = servers.post(server.port, PATH, b"{}", [("Idempotency-Key", key)])
            assert retry.status == 201
            assert retry.headers["idempotent-replayed"] == "true"
            assert retry.body == originals[0].body
            assert charges(primary, key) == 1
            tally_http(test, [*answers[key], retry], charges(primary, key))
        # The ORM reads the key table on the primary too, whatever the
        # router says: the replica would have counted none, and a purge
        # there would fail, a replica taking no writes.
        assert (
            orm(
                env,
                "from idempotency.models import IdempotencyKey\n"
                f"print(IdempotencyKey.objects.filter(key__in={keys!r}).count(),"
                " IdempotencyKey.objects.purge())",
            )
            == f"{KEYS} 0"
        )
        # The router's own reads still go to the replica.
        assert (
            orm(
                env,
                "from tests.testapp.models import Execution\n"
                f"print(Execution.objects.filter(key__in={keys!r}).count())",
            )
            == "0"
        )
    caught_up(primary, replica)
    assert records(replica, keys) == KEYS


@contextmanager
def replica_alias(replica: Cluster) -> Iterator[str]:
    """The replica as a database alias of this process, connected."""
    alias = "replica"
    wrapper = DatabaseWrapper(
        {
            **connections["default"].settings_dict,
            "HOST": "127.0.0.1",
            "PORT": str(replica.port),
            "NAME": DATABASE,
            "USER": "postgres",
        },
        alias,
    )
    # Connected before the alias is known to the settings, which the test
    # case would refuse (it set up the databases it knew of).
    wrapper.ensure_connection()
    connections[alias] = wrapper
    try:
        yield alias
    finally:
        wrapper.close()
        del connections[alias]


@contextmanager
def in_settings(alias: str) -> Iterator[None]:
    """``alias`` in ``settings.DATABASES``, which the system checks read."""
    connections.settings[alias] = connections[alias].settings_dict
    try:
        yield
    finally:
        del connections.settings[alias]


@pytest.mark.django_db(transaction=True)
def test_a_replica_named_as_the_key_tables_database(clusters, user):
    with (
        replica_alias(clusters[1]) as alias,
        override_settings(IDEMPOTENCY={"DATABASE": alias}),
    ):
        # The claim is refused, and the handler never runs.
        key = new_key()
        refused = send(user, key)
        assert refused.status_code == 503, refused.content
        assert json.loads(refused.content)["type"].endswith(":database-unavailable")
        assert executions(key) == 0
        with in_settings(alias):
            [error] = check_database(databases=[alias])
        assert error.id == "idempotency.E028"
    # The primary passes the same check.
    assert check_database(databases=["default"]) == []
