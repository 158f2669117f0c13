"""Duplicates and distinct keys at every isolation level Django lets users choose.

Django's ``OPTIONS["isolation_level"]`` sets the level of every transaction,
the claim's included; under ``ATOMIC_REQUESTS`` the claim runs in a savepoint
of the request's transaction, which began before the view (authentication
reads the user in it). Each test runs at one level of the current vendor,
with and without ``ATOMIC_REQUESTS``:

(a) the hard case: a duplicate whose transaction has read something (HTTP
    Basic authentication reads the user) while the first request was held
    in its handler, and whose claim runs only once the first has committed.
    Under ATOMIC_REQUESTS at REPEATABLE READ and SERIALIZABLE (PostgreSQL)
    or REPEATABLE READ (MariaDB) its snapshot predates that commit, which the
    test checks. It must get a 409 or the replay, never a 500, the handler
    runs once, and a retry gets the replay. Once for a new key (the first
    inserts the record) and once for an expired one (the first takes the
    record over, an UPDATE).
(b) duplicates released together, several rounds: one execution per key,
    every answer a 201 or a 409, every replay identical. With
    force_authenticate (no read before the claim) and with HTTP Basic; for
    new keys, and for expired ones that exactly one duplicate takes over.
(c) distinct keys released together, held together in their handlers: every
    one is claimed, runs once and commits (SERIALIZABLE on PostgreSQL is the
    level where the package's own reads could make them conflict).

MariaDB also runs at REPEATABLE READ with innodb_snapshot_isolation=ON, the
default from MariaDB 11.6.2, where a locking read or write of a record
committed after the read view fails (error 1020) instead of reading it.

Every request's connection is instrumented in its own thread: after a claim
or takeover statement that ran, the level of its transaction is read back
from the server and asserted, so a test cannot silently run at the default
level; and the failed statement, error code and innermost frame in
idempotency/ of a 500 are in the assertion message (and printed: ``-rA``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.core.signals import got_request_exception
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from idempotency.backends.base import RequestInfo
from idempotency.backends.database import MARIADB, DatabaseStore
from idempotency.models import IdempotencyKey
from tests.concurrency import Threads, in_another_thread, tally
from tests.helpers import URL, executions, new_key, send
from tests.testapp import views
from tests.testapp.models import Execution

pytestmark = [pytest.mark.server_db, pytest.mark.django_db(transaction=True)]

VENDOR = connections["default"].vendor
PASSWORD = "pw"  # the ``user`` fixture's
THREADS = 8
ROUNDS = 5
TABLE = IdempotencyKey._meta.db_table


@dataclass(frozen=True)
class Level:
    name: str
    option: Any  # OPTIONS["isolation_level"], as Django's backend accepts it
    reported: str  # what the server reports inside the claim's transaction
    init_command: str | None = None  # MariaDB: a session setting to go with it
    # Whether a transaction's reads keep one snapshot (taken by its first
    # read), so that a duplicate that read before the first committed cannot
    # see the first's record.
    snapshot: bool = False
    # Whether every read takes a shared lock (InnoDB's SERIALIZABLE): then
    # duplicates that all read an expired record all hold its shared lock,
    # and each takeover (an UPDATE that does not wait) fails on the others'.
    locking_reads: bool = False
    # PostgreSQL's SERIALIZABLE: reads take predicate locks, and a
    # transaction whose writes meet another's reads may lose at commit.
    predicate_locks: bool = False


if VENDOR == "postgresql":
    # Django's postgresql backend takes a psycopg IsolationLevel (or its int
    # value) and sets it on the connection: psycopg then sends
    # BEGIN ISOLATION LEVEL ... for every transaction.
    from django.db.backends.postgresql.psycopg_any import IsolationLevel

    LEVELS = [
        Level("read committed", IsolationLevel.READ_COMMITTED, "read committed"),
        Level("repeatable read", IsolationLevel.REPEATABLE_READ, "repeatable read", snapshot=True),
        Level(
            "serializable",
            IsolationLevel.SERIALIZABLE,
            "serializable",
            snapshot=True,
            predicate_locks=True,
        ),
    ]
elif VENDOR == "mysql":
    # Django's mysql backend takes the level's name (lower case) and runs
    # SET SESSION TRANSACTION ISOLATION LEVEL on connect; "read committed" is
    # its default, REPEATABLE READ the server's. InnoDB's SERIALIZABLE turns
    # every plain read into a locking read, which reads the latest version.
    LEVELS = [
        Level("read committed", "read committed", "READ-COMMITTED"),
        Level("repeatable read", "repeatable read", "REPEATABLE-READ", snapshot=True),
        Level("serializable", "serializable", "SERIALIZABLE", locking_reads=True),
        # MariaDB 11.6.2 and later default to innodb_snapshot_isolation=ON
        # (10.6.18+, 10.11.8+ and 11.4.2+ have it, off by default): a locking
        # read or write of a record changed after the read view fails with
        # error 1020 instead of reading the latest version.
        Level(
            "repeatable read, innodb_snapshot_isolation",
            "repeatable read",
            "REPEATABLE-READ",
            init_command="SET SESSION innodb_snapshot_isolation=ON",
            snapshot=True,
        ),
    ]
else:  # SQLite: the server_db mark skips every test
    LEVELS = [Level("default", None, "")]


def level_query(level: Level) -> str:
    if VENDOR == "postgresql":
        return "SHOW transaction_isolation"
    if level.init_command:
        return "SELECT CONCAT(@@tx_isolation, ',', IF(@@innodb_snapshot_isolation, 'ON', 'OFF'))"
    return "SELECT @@tx_isolation"


def reported(level: Level) -> str:
    return f"{level.reported},ON" if level.init_command else level.reported


@pytest.fixture(params=LEVELS, ids=lambda level: level.name.replace(",", "").replace(" ", "-"))
def level(request, transactional_db):
    """Every connection of the default alias, in every thread, at this level.

    The settings dict is shared by the per-thread connections; closing them
    makes the next ones connect with it."""
    level: Level = request.param
    if level.init_command:
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT @@innodb_snapshot_isolation")
        except DatabaseError:
            pytest.skip("this server has no innodb_snapshot_isolation")
    options = connections["default"].settings_dict["OPTIONS"]
    saved = dict(options)
    connections.close_all()
    options["isolation_level"] = level.option
    if level.init_command:
        options["init_command"] = level.init_command
    try:
        yield level
    finally:
        connections.close_all()
        options.clear()
        options.update(saved)


@pytest.fixture(params=[False, True], ids=["autocommit", "atomic-requests"])
def atomic(request):
    settings_dict = connections["default"].settings_dict
    saved = settings_dict["ATOMIC_REQUESTS"]
    settings_dict["ATOMIC_REQUESTS"] = request.param
    try:
        yield request.param
    finally:
        settings_dict["ATOMIC_REQUESTS"] = saved


# What a request raised, for the thread that handled it.
_raised = threading.local()


def _store_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
    _raised.exc = sys.exc_info()[1]


@pytest.fixture(autouse=True)
def request_exceptions():
    """Keep each thread's request exception (the test client's own capture is
    shared by every client in the process)."""
    got_request_exception.connect(_store_exception, dispatch_uid="test_isolation")
    yield
    got_request_exception.disconnect(dispatch_uid="test_isolation")


class Observer:
    """Instruments one request's connection, in the request's own thread."""

    def __init__(self, level: Level, before_claim: Callable[[Any], None] | None = None) -> None:
        self.level = level
        self.before_claim = before_claim
        self.sql = DatabaseStore("default").sql
        self.steps: list[tuple[str, BaseException | None]] = []  # every statement, in order
        self.failed: list[tuple[str, BaseException]] = []
        self.levels: list[str] = []  # read back after each claim or takeover that ran

    def kind(self, sql: str) -> str:
        """The package's name for a statement, such as ``claim``."""
        names = ("claim", "select", "lock", "take_over", "complete", "complete_row")
        for name in names:
            if sql == getattr(self.sql, name, None):
                return name
        if sql == self.sql.claim_and_take_over:  # PostgreSQL at SERIALIZABLE
            return "claim"
        # MariaDB's variants: without a lock wait, or a locking read.
        bare = sql.removeprefix("SET STATEMENT innodb_lock_wait_timeout=0 FOR ")
        if bare.endswith(" LOCK IN SHARE MODE") and bare != sql:
            bare = bare.removesuffix(" LOCK IN SHARE MODE")
            for name in names:
                if bare == getattr(self.sql, name, None):
                    return f"{name}(locking)"
        return "other: " + " ".join(sql.split())[:60]

    def __call__(self, execute, sql, params, many, context):
        kind = self.kind(sql)
        if kind == "claim" and self.before_claim is not None:
            self.before_claim(context["connection"])
        try:
            result = execute(sql, params, many, context)
        except BaseException as exc:
            self.steps.append((kind, exc))
            self.failed.append((kind, exc))
            raise
        self.steps.append((kind, None))
        if kind in ("claim", "take_over"):
            self.levels.append(raw_query(context["connection"], level_query(self.level)))
        return result


def raw_query(connection: Any, sql: str, params: list | None = None) -> Any:
    """One value, read on the driver's connection: not through Django's
    cursor wrappers (and so not through the observer), and without touching
    the cursor whose statement the observer wraps."""
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql, params or [])
        (value,) = cursor.fetchone()
    finally:
        cursor.close()
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Outcome:
    response: Any
    observer: Observer
    exception: BaseException | None = None

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def replayed(self) -> bool:
        return self.response.get("Idempotent-Replayed") == "true"

    def path(self) -> str:
        """The package's statements this request ran, with the errors they
        raised (SQLSTATE or MariaDB error code), such as ``claim!1062 select``."""
        steps = []
        failed = {id(exc): code(exc) for _kind, exc in self.observer.failed}
        for kind, exc in self.observer.steps:
            if not kind.startswith("other"):
                steps.append(kind + (f"!{failed[id(exc)]}" if exc is not None else ""))
        return " ".join(steps)

    def describe(self) -> str:
        label = f"{self.status}{' replay' if self.replayed else ''}"
        if self.exception is not None:
            label += " " + describe_exception(self.exception, self.observer)
        return label


def code(exc: BaseException) -> Any:
    """The SQLSTATE (psycopg 3, psycopg2) or the MariaDB error code."""
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return sqlstate or (exc.args[0] if exc.args else None)


def describe_exception(exc: BaseException, observer: Observer) -> str:
    """Class, SQLSTATE or MariaDB error code, message, the failed statement,
    and the innermost frame in idempotency/ (or the commit that raised it)."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/idempotency/" in f.filename and "/tests/" not in f.filename]
    where = ""
    if ours:
        frame = ours[-1]
        where = f" at idempotency/{frame.filename.split('/idempotency/')[-1]}:{frame.lineno}"
        where += f" {frame.name}()"
    if any(f.name in ("commit", "_commit") for f in frames):
        where += " in COMMIT"
    statement = next((kind for kind, failed in observer.failed if failed is exc), None)
    if statement:
        where += f" [statement: {statement}]"
    return f"{type(exc).__module__}.{type(exc).__name__} {code(exc)} {message!r}{where}"


def basic_auth() -> str:
    return "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()


def request(
    user: Any,
    key: str,
    level: Level,
    url: str = URL,
    basic: bool = False,
    before_claim: Callable[[Any], None] | None = None,
) -> Outcome:
    """POST with ``key`` in this thread, observed. ``basic``: authenticate
    with HTTP Basic, which reads the user (in the request's transaction under
    ATOMIC_REQUESTS); otherwise force_authenticate, which reads nothing."""
    observer = Observer(level, before_claim)
    client = APIClient(raise_request_exception=False)
    if basic:
        client.credentials(HTTP_AUTHORIZATION=basic_auth())
    else:
        client.force_authenticate(user)
    _raised.exc = None
    with connections["default"].execute_wrapper(observer):
        response = client.post(url, {"amount": 1}, format="json", headers={"Idempotency-Key": key})
    return Outcome(response, observer, _raised.exc)


def check_levels(outcomes: list[Outcome], level: Level) -> None:
    seen = [value for outcome in outcomes for value in outcome.observer.levels]
    assert seen, "no claim succeeded, so the isolation level was never read back"
    assert set(seen) == {reported(level)}, seen


class SoftBarrier:
    """Stands in for a threading.Barrier in views.BARRIERS: handlers wait
    until all have arrived, or at most ``timeout`` seconds, and go on either
    way (a request that failed before its handler does not fail the rest)."""

    def __init__(self, parties: int, timeout: float = 3.0) -> None:
        self.parties = parties
        self.timeout = timeout
        self.arrived = 0
        self.condition = threading.Condition()

    def wait(self, timeout: float | None = None) -> None:
        with self.condition:
            self.arrived += 1
            self.condition.notify_all()
            self.condition.wait_for(lambda: self.arrived >= self.parties, timeout=self.timeout)


@pytest.mark.parametrize("expired", [False, True], ids=["new-key", "expired-key"])
def test_a_duplicate_whose_snapshot_predates_the_first_commit(user, gate, level, atomic, expired):
    """The first request is held in its handler; the duplicate authenticates
    (a read, in its transaction under ATOMIC_REQUESTS) and is held just
    before its claim; the first is released and commits; then the duplicate
    claims. ``expired``: the key's record has expired and the first request
    takes it over (an UPDATE of the row, where a new key is an INSERT)."""
    name, held = gate
    key = new_key()
    url = f"{URL}?gate={name}"
    at_claim, committed = threading.Event(), threading.Event()
    notes: dict[str, Any] = {}
    if expired:
        held.release.set()
        assert request(user, key, level, url).status == 201
        IdempotencyKey.objects.filter(key=key).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
        held.entered.clear()
        held.release.clear()

    def before_claim(connection: Any) -> None:
        # Its transaction's blocks: the claim's, and the request's under
        # ATOMIC_REQUESTS (whose first statement read the user).
        notes["atomic_blocks"] = len(connection.atomic_blocks)
        at_claim.set()
        assert committed.wait(timeout=10)
        # Whether this transaction can see the record the first committed
        # (a new one, or the expired one renewed).
        quote = connection.ops.quote_name
        notes["record_visible"] = raw_query(
            connection,
            f"SELECT COUNT(*) FROM {quote(TABLE)}"
            f" WHERE {quote('key')} = %s AND {quote('expires_at')} > %s",
            [key, connection.ops.adapt_datetimefield_value(timezone.now())],
        )

    first = Threads([lambda: request(user, key, level, url)])
    assert held.entered.wait(timeout=10)
    duplicate = Threads(
        [lambda: request(user, key, level, url, basic=True, before_claim=before_claim)]
    )
    assert at_claim.wait(timeout=10), "the duplicate never reached its claim"
    assert first.finished() == 0
    held.release.set()
    (original,) = first.join()
    assert original.status == 201, original.describe()
    assert not original.replayed
    committed.set()
    (answer,) = duplicate.join()
    retry = request(user, key, level, url)
    runs = executions(key)
    tally(
        f"isolation {level.name} {'atomic' if atomic else 'autocommit'}:"
        f" (a){' expired' if expired else ''}",
        [original.response, answer.response, retry.response],
        runs,
    )
    print(
        f"(a) {VENDOR} {level.name} atomic={atomic} expired={expired}:"
        f" duplicate {answer.describe()} after [{answer.path()}];"
        f" record visible to it before its claim: {notes.get('record_visible')};"
        f" retry {retry.describe()}"
    )

    check_levels([original, retry], level)
    # The duplicate read the user in the request's transaction, before the
    # first committed: at a snapshot level its snapshot cannot see the record.
    assert notes["atomic_blocks"] == (2 if atomic else 1)
    stale = atomic and level.snapshot
    assert notes["record_visible"] == (0 if stale else 1), notes
    assert answer.status in (201, 409), answer.describe()
    if answer.status == 409:
        assert answer.response["Retry-After"] == "1"
        assert answer.response["Content-Type"] == "application/problem+json"
    else:
        assert answer.replayed
        assert answer.response.content == original.response.content
    assert runs == (2 if expired else 1)
    assert retry.replayed, retry.describe()
    assert retry.response.content == original.response.content


@pytest.mark.parametrize("expired", [False, True], ids=["new-key", "expired-key"])
@pytest.mark.parametrize("basic", [False, True], ids=["force-auth", "basic-auth"])
def test_b_duplicates_released_together(user, level, atomic, basic, expired):
    """``expired``: each key's record has expired, and exactly one of the
    duplicates takes it over (at InnoDB's SERIALIZABLE, at most one: if none
    could, all answered 409, and the retry takes it over)."""
    rounds = []
    for _round in range(ROUNDS):
        key = new_key()
        if expired:
            assert request(user, key, level).status == 201
            IdempotencyKey.objects.filter(key=key).update(
                expires_at=timezone.now() - timedelta(seconds=1)
            )
        outcomes = Threads(
            [lambda key=key: request(user, key, level, basic=basic)] * THREADS
        ).join()
        runs = executions(key)
        tally(
            f"isolation {level.name} {'atomic' if atomic else 'autocommit'}"
            f" {'basic' if basic else 'force'}: (b){' expired' if expired else ''}",
            [o.response for o in outcomes],
            runs,
        )
        rounds.append((key, runs, outcomes))
    summary = "\n".join(
        f"round {i}: runs={runs} " + "; ".join(sorted(o.describe() for o in outcomes))
        for i, (_key, runs, outcomes) in enumerate(rounds)
    )
    print(f"(b) {VENDOR} {level.name} atomic={atomic} basic={basic} expired={expired}:\n{summary}")
    check_levels([o for _k, _r, outcomes in rounds for o in outcomes], level)
    for key, runs, outcomes in rounds:
        originals = [o for o in outcomes if o.status == 201 and not o.replayed]
        if expired and level.locking_reads and not originals:
            assert {o.status for o in outcomes} == {409}, summary
            retry = request(user, key, level)
            assert retry.status == 201, retry.describe()
            assert not retry.replayed
            assert executions(key) == 2
            continue
        assert runs == (2 if expired else 1), summary
        assert len(originals) == 1, summary
        for outcome in outcomes:
            assert outcome.status in (201, 409), summary
            if outcome.status == 201 and outcome is not originals[0]:
                assert outcome.replayed, summary
                assert outcome.response.content == originals[0].response.content
            if outcome.status == 409:
                assert outcome.response["Retry-After"] == "1"


@pytest.mark.parametrize("expired", [False, True], ids=["new-key", "expired-key"])
def test_c_distinct_keys_released_together(user, level, atomic, expired):
    """``expired``: each key's record has expired, and its request takes it
    over. At SERIALIZABLE on PostgreSQL a takeover rewrites index entries
    that the others' claims read, so some may lose at commit: they are
    rolled back whole and answered 409 ``transaction-conflict``, and their
    retry runs."""
    rounds = []
    for _round in range(ROUNDS):
        name = uuid.uuid4().hex
        url = f"{URL}?barrier={name}"
        keys = [new_key() for _ in range(THREADS)]
        if expired:
            for key in keys:  # the same request, before the barrier exists
                assert request(user, key, level, url).status == 201
            IdempotencyKey.objects.filter(key__in=keys).update(
                expires_at=timezone.now() - timedelta(seconds=1)
            )
        views.BARRIERS[name] = SoftBarrier(THREADS)
        started = time.monotonic()
        outcomes = Threads(
            [lambda key=key, url=url: request(user, key, level, url) for key in keys]
        ).join()
        elapsed = time.monotonic() - started
        del views.BARRIERS[name]
        conflicts = [
            key
            for key, outcome in zip(keys, outcomes, strict=True)
            if outcome.status == 409
            and json.loads(outcome.response.content)["type"].endswith(":transaction-conflict")
        ]
        if expired and level.predicate_locks:
            for key in conflicts:  # the client's retry
                assert request(user, key, level, url).status == 201
        runs = [executions(key) for key in keys]
        tally(
            f"isolation {level.name} {'atomic' if atomic else 'autocommit'}: (c)"
            f"{' expired' if expired else ''}",
            [o.response for o in outcomes],
            sum(runs),
        )
        rounds.append((runs, outcomes, elapsed, conflicts))
    summary = "\n".join(
        f"round {i}: {elapsed:.2f}s runs={runs} "
        + "; ".join(sorted(o.describe() for o in outcomes))
        for i, (runs, outcomes, elapsed, _conflicts) in enumerate(rounds)
    )
    print(f"(c) {VENDOR} {level.name} atomic={atomic} expired={expired}:\n{summary}")
    check_levels([o for _r, outcomes, _e, _c in rounds for o in outcomes], level)
    for runs, outcomes, _elapsed, conflicts in rounds:
        if expired and level.predicate_locks:
            assert len(conflicts) < THREADS, summary  # at least one commits
            expected = [201 if o.status == 201 else 409 for o in outcomes]
            assert len(conflicts) == expected.count(409), summary
        else:
            expected = [201] * THREADS
        assert [o.status for o in outcomes] == expected, summary
        assert not any(o.replayed for o in outcomes), summary
        assert runs == [2 if expired else 1] * THREADS, summary


def test_d_a_duplicate_that_may_wait(user, gate, level, atomic):
    """WAIT at every level: the duplicate waits for the first and replays it,
    except on PostgreSQL's snapshot levels, where its snapshot (taken by the
    claim that found the key in flight) could never see the first's answer:
    there it gets its 409 at once, rather than after holding a worker."""
    name, held = gate
    key = new_key()
    url = f"{URL}?gate={name}"
    with override_settings(IDEMPOTENCY={"WAIT": 5}):
        first = Threads([lambda: send(user, key, url)])
        assert held.entered.wait(timeout=10)
        start = time.monotonic()
        second = Threads([lambda: (send(user, key, url), time.monotonic() - start)])
        time.sleep(1.0)
        held.release.set()
        ((duplicate, elapsed),) = second.join()
        (original,) = first.join()
    assert original.status_code == 201
    assert executions(key) == 1
    if VENDOR == "postgresql" and level.snapshot:
        assert duplicate.status_code == 409
        assert elapsed < 0.9, elapsed
    else:
        assert duplicate.status_code == 201
        assert duplicate["Idempotent-Replayed"] == "true"
        assert duplicate.content == original.content
        assert elapsed >= 0.9, elapsed


@pytest.mark.vendor("mysql")
def test_a_locking_read_that_meets_a_lock_leaves_the_answer_to_a_retry(user, transactional_db):
    # MariaDB at REPEATABLE READ: the plain read of a stale read view misses
    # the record, and the locking read that follows meets another
    # transaction's lock on it: no answer now (a 409), never a wait.
    key = new_key()
    connection = connections["default"]
    locked, release = threading.Event(), threading.Event()

    def hold_the_record_locked() -> None:
        with transaction.atomic():
            IdempotencyKey.objects.select_for_update().get(key=key)
            locked.set()
            release.wait(timeout=10)

    with connection.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    try:
        with transaction.atomic():
            Execution.objects.count()  # the read view is taken here
            in_another_thread(
                lambda: IdempotencyKey.objects.create(
                    scope="s", key=key, fingerprint="f", state="completed", method="POST",
                    path="/", created_at=timezone.now(), expires_at=timezone.now()
                    + timedelta(hours=1),
                )
            )  # fmt: skip
            holder = threading.Thread(target=hold_the_record_locked)
            holder.start()
            try:
                assert locked.wait(timeout=10)
                store = DatabaseStore("default")
                info = RequestInfo("s", key, "f", "POST", "/", timezone.now())
                params = store.parameters(info, timedelta(seconds=1))
                assert MARIADB.fetch(store.connection, store.sql, params) is None
            finally:
                release.set()
                holder.join(timeout=10)
    finally:
        connection.close()  # the session's isolation level goes with it


@pytest.mark.vendor("mysql")
def test_a_key_in_the_gap_of_another_keys_lock_is_not_refused(user, transactional_db):
    """MariaDB: a transaction whose insert failed on another key's record (a
    duplicate's claim) holds a shared next-key lock on the gap before it.
    A new key that sorts in that gap, which nobody else uses, waits for that
    transaction to end rather than answer 409 (the load harness met it once
    in a few hundred requests)."""
    client = APIClient()
    client.force_authenticate(user)
    scope = f"testapp.user:{user.pk}"
    neighbour = "m-0002"
    IdempotencyKey.objects.create(
        scope=scope, key=neighbour, fingerprint="f", state="completed", method="POST",
        path="/", created_at=timezone.now(), expires_at=timezone.now() + timedelta(hours=1),
    )  # fmt: skip
    locked, release = threading.Event(), threading.Event()

    def lock_the_gap_before_the_neighbour() -> None:
        # As a replay's claim does: its insert fails on the neighbour's
        # record, and keeps a shared next-key lock on it until it ends.
        with transaction.atomic(), connections["default"].cursor() as cursor:
            with contextlib.suppress(IntegrityError):
                cursor.execute(
                    f"INSERT INTO {TABLE} (scope, `key`, fingerprint, state, method, path,"
                    " created_at, expires_at) VALUES (%s, %s, 'f', 'in_flight', 'POST', '/',"
                    " NOW(), NOW())",
                    [scope, neighbour],
                )
            locked.set()
            release.wait(timeout=10)
        connections.close_all()

    holder = threading.Thread(target=lock_the_gap_before_the_neighbour)
    holder.start()
    try:
        assert locked.wait(timeout=10)
        threading.Timer(0.2, release.set).start()
        response = client.post(
            URL, {"amount": 1}, format="json", headers={"Idempotency-Key": "m-0001"}
        )
    finally:
        release.set()
        holder.join(timeout=10)
    assert response.status_code == 201, response.content
    assert executions("m-0001") == 1
