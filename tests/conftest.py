from __future__ import annotations

import os
import threading
import uuid

import pytest
from django.conf import settings as django_settings
from django.db import connections
from model_bakery import baker, random_gen
from rest_framework.test import APIClient

from tests.redis_proxy import RedisProxy
from tests.testapp import views
from tests.testapp.models import User

# model-bakery knows fields by their class; the key table's exact-comparison
# CharField is a CharField to it.
baker.generators.add("idempotency.models.ExactCharField", random_gen.gen_string)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fail-on-skip",
        action="store_true",
        help="Fail the run if any test was skipped (CI sets this for the service runs).",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    vendor = connections["default"].vendor
    keep, drop = [], []
    for item in items:
        wanted = item.get_closest_marker("vendor")
        if wanted is not None and vendor not in wanted.args:
            drop.append(item)
            continue
        if item.get_closest_marker("redis") and not os.environ.get("REDIS_URL"):
            item.add_marker(
                pytest.mark.skip(
                    reason="needs Redis: set REDIS_URL, such as redis://127.0.0.1:6379/0"
                )
            )
        if item.get_closest_marker("server_db") and vendor == "sqlite":
            item.add_marker(
                pytest.mark.skip(
                    reason="needs real concurrent transactions: set DATABASE_URL to PostgreSQL "
                    "or MariaDB"
                )
            )
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.concurrency import LATENCIES, TALLY

    if TALLY or LATENCIES:
        vendor = connections["default"].vendor
        terminalreporter.section(f"concurrency on {vendor}")
        for test, counts in TALLY.items():
            statuses = ", ".join(
                f"{name}: {count}"
                for name, count in sorted(counts.items())
                if name not in ("keys", "requests", "executions")
            )
            terminalreporter.write_line(
                f"{test}: {counts['requests']} requests on {counts['keys']} keys, "
                f"{counts['executions']} executions; {statuses}"
            )
        for what, seconds in LATENCIES.items():
            terminalreporter.write_line(f"{what}: {seconds * 1000:.1f} ms")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if session.config.getoption("--fail-on-skip") and reporter and reporter.stats.get("skipped"):
        reporter.write_line(
            f"--fail-on-skip: {len(reporter.stats['skipped'])} test(s) were skipped.", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def user(db) -> User:
    return User.objects.create_user(username="alice", password="pw")


@pytest.fixture
def other_user(db) -> User:
    return User.objects.create_user(username="bob", password="pw")


@pytest.fixture
def client(user) -> APIClient:
    """An API client logged in as ``user``."""
    api_client = APIClient()
    api_client.force_authenticate(user)
    return api_client


@pytest.fixture
def gate():
    """A gate that holds a handler inside its transaction: pass ``?gate=<name>``."""
    name = uuid.uuid4().hex
    views.GATES[name] = held = views.Gate()
    yield name, held
    held.release.set()
    del views.GATES[name]


@pytest.fixture
def barrier():
    """Make barriers that handlers wait on: pass ``?barrier=<name>``."""

    def make(parties: int) -> str:
        name = uuid.uuid4().hex
        views.BARRIERS[name] = threading.Barrier(parties)
        return name

    yield make
    views.BARRIERS.clear()


@pytest.fixture
def redis_db():
    """The test Redis database (the ``idempotency`` cache's, which REDIS_URL
    names), empty before and after each test."""
    from django_redis import get_redis_connection

    connection = get_redis_connection("idempotency")
    connection.flushdb()
    yield connection
    connection.flushdb()


@pytest.fixture
def redis_relay(redis_db):
    """A relay to the test Redis that the test can cut (tests/redis_proxy.py),
    cut when the test ends. The test points a cache alias at its ``url``."""
    relay = RedisProxy(django_settings.REDIS_URL)
    yield relay
    relay.cut()


@pytest.fixture(params=[False, True], ids=["autocommit", "atomic_requests"])
def requests_mode(request):
    """Each way, with and without ATOMIC_REQUESTS on the default database."""
    settings_dict = connections["default"].settings_dict
    settings_dict["ATOMIC_REQUESTS"] = request.param
    yield request.param
    settings_dict["ATOMIC_REQUESTS"] = False


@pytest.fixture
def atomic_requests():
    """ATOMIC_REQUESTS = True on the default database, as many projects set."""
    settings_dict = connections["default"].settings_dict
    settings_dict["ATOMIC_REQUESTS"] = True
    yield
    settings_dict["ATOMIC_REQUESTS"] = False
