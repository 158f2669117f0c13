"""The load harness: the package's guarantees under production conditions
(docs/load-testing.rst).

gunicorn serves the example project with several worker processes on
127.0.0.1; this process drives it over real HTTP and then checks the outcome
against the database itself (charges per key, balances, records left in
flight), not against the responses alone. Per database:

1. duplicates: every key is fired many times at once (a barrier per key),
   some keys by two users at once, while distinct keys are interleaved;
2. a killed worker: SIGKILL to a worker holding a charge inside its
   transaction, then the client's retry after LOCK_TIMEOUT;
3. terminated sessions: the database ends every session of the server while
   charges are held in flight and others arrive;
4. (PostgreSQL) a restart of the database server under the same traffic;
5. with ``--redis``, a restart of Redis under the same traffic;
6. every key once more: each must answer 201 (a replay, or a first
   execution for a key whose request never committed), never 409 or 5xx.

With ``--redis`` the server runs with the Redis accelerator in front of the
database store, and phase 1 also fires every other key at the charge under
``backend="redis"`` (``BENCH_REDIS_URL``, default redis://127.0.0.1:6379/1).
Redis restarts without persistence, which by design forgets the Redis
store's records, so those keys are checked in phase 1 and left out of
phase 6.

    python -m benchmarks.stress [postgres] [mariadb]            # the full run
    python -m benchmarks.stress postgres mariadb --quick        # CI's bounded run
    python -m benchmarks.stress postgres --quick --redis        # with Redis
    python -m benchmarks.stress postgres --quick --pgbouncer transaction

With ``--pgbouncer transaction`` (or ``session``) the server reaches
PostgreSQL through PgBouncer (tests/pgbouncer.py), with a pool of one server
connection per worker; the harness itself connects directly.

It restarts PostgreSQL (``pg_ctlcluster``) and, with ``--redis``, the Redis
server (``redis-cli shutdown``, then ``redis-server`` as CI starts it), so it
needs the rights to.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any

from . import common, logs, server

CHARGES = "/api/charges/"
REDIS_STORE_CHARGES = "/api/redis-store/charges/"
USERS = ("bench", "bench2")
BALANCE = 1_000_000_000
LOCK_TIMEOUT = 3.0  # seconds: short, so a killed worker's claim expires soon
DATABASE_NAME = "idempotency_stress"
REDIS_DOWN = 3.0  # seconds Redis stays stopped in the --redis phase


@dataclass
class Answer:
    user: str
    key: str
    amount: int
    phase: str
    status: int  # 0: no answer at all (the connection broke)
    hold: bool = False
    body: bytes = b""
    replayed: bool = False
    problem: str = ""
    location: str = ""
    path: str = CHARGES


@dataclass
class Harness:
    port: int
    hold_file: Path
    answers: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Anything that went wrong in the client itself: a broken barrier, a
    # thread still running after its time. The run fails on any.
    errors: list[str] = field(default_factory=list)

    def charge(
        self,
        user: str,
        key: str,
        amount: int,
        phase: str,
        hold: bool = False,
        path: str = CHARGES,
    ) -> Answer:
        # A retry sends the same payload, hold marker included.
        payload = json.dumps({"amount": amount, "description": f"hold {key}" if hold else key})
        headers = {"X-Bench-User": user, "Idempotency-Key": key}
        try:
            status, body, response_headers = server.post(
                self.port, path, payload.encode(), headers, timeout=90
            )
        except (OSError, HTTPException):
            answer = Answer(user, key, amount, phase, 0, hold, path=path)
        else:
            problem = ""
            if response_headers.get("Content-Type") == "application/problem+json":
                problem = json.loads(body)["type"].rsplit(":", 1)[-1]
            answer = Answer(
                user,
                key,
                amount,
                phase,
                status,
                hold,
                body,
                response_headers.get("Idempotent-Replayed") == "true",
                problem,
                response_headers.get("Location", ""),
                path,
            )
        with self.lock:
            self.answers.append(answer)
        return answer

    def at_once(self, calls: list[Callable[[], Any]]) -> None:
        """Run ``calls`` in threads released together by one barrier."""
        barrier = threading.Barrier(len(calls))

        def run(call: Callable[[], Any]) -> None:
            try:
                barrier.wait(timeout=60)
                call()
            except Exception as exc:  # reported, and fails the run
                self.errors.append(repr(exc))

        threads = [threading.Thread(target=run, args=(call,)) for call in calls]
        for thread in threads:
            thread.start()
        self.join(threads)

    def join(self, threads: list[threading.Thread]) -> None:
        for thread in threads:
            thread.join(timeout=120)
            if thread.is_alive():
                self.errors.append(f"{thread.name} still running after 120 s")

    # The phases.

    def duplicates(
        self, keys: int, copies: int, distinct: int, concurrent_keys: int, redis_store: bool
    ) -> None:
        """Every key ``copies`` times at once; every fourth key by both users;
        with ``redis_store``, every other key to the Redis store's charge.
        Meanwhile ``distinct`` keys are sent once each, interleaved."""
        stop = threading.Event()
        distinct_keys = [str(uuid.uuid4()) for _ in range(distinct)]

        def interleave() -> None:
            for key in distinct_keys:
                self.charge(random.choice(USERS), key, random.randint(1, 9), "distinct")
            stop.set()

        background = threading.Thread(target=interleave)
        background.start()

        def burst(index: int) -> None:
            key, amount = str(uuid.uuid4()), random.randint(1, 9)
            users = USERS if index % 4 == 0 else USERS[:1]
            senders = [users[n % len(users)] for n in range(copies)]
            path = REDIS_STORE_CHARGES if redis_store and index % 2 else CHARGES
            self.at_once(
                [
                    lambda user=user: self.charge(user, key, amount, "dup", path=path)
                    for user in senders
                ]
            )

        with ThreadPoolExecutor(concurrent_keys) as pool:
            list(pool.map(burst, range(keys)))
        background.join(timeout=600)
        if background.is_alive():
            self.errors.append("the distinct keys were still being sent after 600 s")

    def hold(self, count: int, phase: str) -> list[threading.Thread]:
        """Start ``count`` charges that stay inside their transaction until
        the hold file goes; return once one is known to be held."""
        self.hold_file.touch()
        pid_file = Path(f"{self.hold_file}.pid")
        pid_file.unlink(missing_ok=True)
        threads = [
            threading.Thread(
                target=self.charge,
                args=(USERS[0], str(uuid.uuid4()), random.randint(1, 9), phase, True),
            )
            for _ in range(count)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("no charge reached its hold")
            time.sleep(0.01)
        time.sleep(0.2)  # let the others reach theirs too
        return threads

    def release(self, threads: list[threading.Thread]) -> None:
        self.hold_file.unlink(missing_ok=True)
        self.join(threads)

    def killed_worker(self) -> tuple[int, Answer]:
        """SIGKILL the worker holding a charge; the client retries after
        LOCK_TIMEOUT, and its retry must run the charge, once."""
        threads = self.hold(1, "kill")
        pid = int(Path(f"{self.hold_file}.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        self.release(threads)
        time.sleep(LOCK_TIMEOUT + 0.5)
        killed = next(answer for answer in self.answers if answer.phase == "kill")
        return pid, self.charge(killed.user, killed.key, killed.amount, "kill retry", True)

    def under_traffic(self, trouble: Callable[[], None], phase: str, requests: int) -> None:
        """Hold three charges in flight, send ``requests`` more from four
        clients, and cause ``trouble`` in the middle of it."""
        held = self.hold(3, phase)
        pending = [(random.choice(USERS), str(uuid.uuid4())) for _ in range(requests)]
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(self.charge, user, key, random.randint(1, 9), phase)
                for user, key in pending
            ]
            time.sleep(0.3)
            trouble()
            # Released now, not after the traffic: a held charge that reached
            # the database only after the trouble (its worker was busy) holds
            # its wallet's row lock until released, and the traffic queued
            # behind that lock would wait out MariaDB's lock wait timeout.
            self.release(held)
            for future in futures:
                future.result(timeout=120)

    def redis_outage(self, requests: int) -> None:
        """Stop Redis while three charges are in flight and ``requests`` more
        arrive, release the held ones while it is down, and start it again
        after REDIS_DOWN seconds."""
        held = self.hold(3, "redis restart")
        pending = [(random.choice(USERS), str(uuid.uuid4())) for _ in range(requests)]
        stop_redis()
        stopped = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(self.charge, user, key, random.randint(1, 9), "redis restart")
                for user, key in pending
            ]
            time.sleep(1)
            # Within LOCK_TIMEOUT of their claim, or the database would end
            # their idle sessions; their copies to Redis then fail.
            self.release(held)
            time.sleep(max(0.0, REDIS_DOWN - (time.monotonic() - stopped)))
            start_redis()
            for future in futures:
                future.result(timeout=120)

    def every_key_again(self) -> None:
        """The client's retry of every key, after LOCK_TIMEOUT."""
        time.sleep(LOCK_TIMEOUT + 0.5)
        latest: dict[tuple[str, str], Answer] = {}
        for answer in self.answers:
            if answer.path == CHARGES:
                latest[answer.user, answer.key] = answer
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda answer: self.charge(
                        answer.user, answer.key, answer.amount, "retry", answer.hold
                    ),
                    latest.values(),
                )
            )


def terminate_sessions() -> int:
    """End every session of the server's workers, from the database side."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return int(cursor.fetchone()[0])
        cursor.execute(
            "SELECT id FROM information_schema.processlist"
            " WHERE db = DATABASE() AND id <> CONNECTION_ID()"
        )
        sessions = [row[0] for row in cursor.fetchall()]
        for session in sessions:
            cursor.execute(f"KILL CONNECTION {int(session)}")
        return len(sessions)


def postgresql_started() -> tuple[str, str]:
    """The server's start time and its data directory."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_postmaster_start_time()::text, current_setting('data_directory')"
        )
        started, directory = cursor.fetchone()
    return started, directory


def restart_postgresql() -> None:
    """Restart the cluster serving the scratch database (Debian's layout:
    /var/lib/postgresql/<version>/<cluster>), and prove it restarted."""
    from django.db import connection

    before, directory = postgresql_started()
    version, cluster = directory.rstrip("/").split("/")[-2:]
    connection.close()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart", "-m", "fast"],
        check=True,
    )
    connection.close()
    if postgresql_started()[0] == before:
        raise RuntimeError("PostgreSQL did not restart")


def redis_address() -> tuple[str, str]:
    from django_redis import get_redis_connection

    kwargs = get_redis_connection("idempotency").connection_pool.connection_kwargs
    return str(kwargs.get("host", "127.0.0.1")), str(kwargs.get("port", 6379))


def stop_redis() -> None:
    """Shut the Redis server down, losing its data (it keeps none on disk)."""
    host, port = redis_address()
    subprocess.run(["redis-cli", "-h", host, "-p", port, "shutdown", "nosave"], check=False)


def start_redis() -> None:
    """Start Redis as CI does, and prove it is a new server."""
    from django_redis import get_redis_connection

    port = redis_address()[1]
    subprocess.run(
        [
            "redis-server",
            "--daemonize", "yes",
            "--bind", "127.0.0.1", "-::1",
            "--port", port,
            "--save", "",
            "--appendonly", "no",
            "--dir", "/var/lib/redis",
            "--logfile", "/var/log/redis/ci.log",
        ],
        check=True,
    )  # fmt: skip
    redis = get_redis_connection("idempotency")
    deadline = time.monotonic() + 30
    while True:  # --daemonize returns before the server listens
        try:
            uptime = int(redis.info("server")["uptime_in_seconds"])
            break
        except Exception:  # redis-py's ConnectionError, until it listens
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if uptime > 30:
        raise RuntimeError("Redis did not restart")


def verify(answers: list[Answer]) -> dict[str, Any]:
    """The outcome, from the database: charges per key and user, balances,
    records left in flight; and the answers checked against it."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.db.models import Sum

    from example_project.wallet.models import Charge, Wallet
    from idempotency.models import IdempotencyKey

    connection.close()  # after a restart, a fresh connection
    users = {
        user.pk: user.username for user in get_user_model().objects.filter(username__in=USERS)
    }
    executions: Counter[tuple[str, str]] = Counter()
    charge_of: dict[tuple[str, str], tuple[int, int]] = {}
    for pk, user_pk, description, amount in Charge.objects.values_list(
        "id", "wallet__user", "description", "amount"
    ):
        pair = (users[user_pk], description.removeprefix("hold "))
        executions[pair] += 1
        charge_of[pair] = (pk, amount)
    amounts = {(answer.user, answer.key): answer.amount for answer in answers}
    requested = set(amounts)
    doubles = [pair for pair, n in executions.items() if n > 1]
    unexecuted = [pair for pair in requested if not executions.get(pair)]
    # Every 201, first or replayed, shows the one charge of its own user and
    # key, with its amount; and all 201s of a (user, key) are byte-identical,
    # Location included, whether or not the first one reached its client.
    seen: dict[tuple[str, str], tuple[bytes, str]] = {}
    wrong_replays = foreign = 0
    for answer in answers:
        if answer.status != 201:
            continue
        pair = (answer.user, answer.key)
        shown = json.loads(answer.body)
        if (shown["id"], shown["amount"]) != charge_of.get(pair):
            foreign += 1
        if seen.setdefault(pair, (answer.body, answer.location)) != (
            answer.body,
            answer.location,
        ):
            wrong_replays += 1
    # What each phase may answer: in trouble, a 5xx (a 503 problem document
    # from this package, or a 500 from code before it, such as authentication,
    # that met the database down) or no answer from a killed worker.
    allowed = {
        "dup": {201, 409},
        "distinct": {201},
        "kill": {0},
        "kill retry": {201},
        "terminate": {0, 201, 409, 500, 503},
        "restart": {0, 201, 409, 500, 503},
        # Redis down: the database answers alone, so nothing changes.
        "redis restart": {201, 409},
        "retry": {201},
    }
    unexpected = Counter(
        f"{a.phase}: {a.status} {a.problem}".strip()
        for a in answers
        if a.status not in allowed[a.phase]
        or (a.status == 503 and a.problem != "database-unavailable")
    )
    balances_ok = True
    for user_pk in users:
        spent = Charge.objects.filter(wallet__user=user_pk).aggregate(total=Sum("amount"))
        balance = Wallet.objects.get(user=user_pk).balance
        balances_ok &= balance == BALANCE - (spent["total"] or 0)
    expected_spent = sum(amounts.values())  # every key once, at the end
    total_spent = Charge.objects.aggregate(total=Sum("amount"))["total"] or 0
    stuck = IdempotencyKey.objects.filter(state=IdempotencyKey.State.IN_FLIGHT).count()
    statuses = Counter(
        f"{a.status}{' replay' if a.replayed else ''}{f' {a.problem}' if a.problem else ''}"
        for a in answers
    )
    return {
        "requests": len(answers),
        "keys": len({answer.key for answer in answers}),
        "executions": sum(n for pair, n in executions.items()),
        "double_executions": len(doubles),
        "unexecuted_keys": len(unexecuted),
        "wrong_replays": wrong_replays,
        "balances_exact": balances_ok,
        "spent_matches_answers": total_spent == expected_spent,
        "spent": [total_spent, expected_spent],
        "foreign_responses": foreign,
        "unexpected": dict(unexpected),
        "server_errors": sum(1 for a in answers if a.status >= 500),
        "problem_503": sum(1 for a in answers if a.problem == "database-unavailable"),
        "no_answer": sum(1 for a in answers if a.status == 0),
        "stuck_keys": stuck,
        "statuses": dict(sorted(statuses.items())),
    }


def causes_of_500(log_directory: Path) -> dict[str, int]:
    """For each 500 the server logged: the exception and the last frame of
    the project's or this package's code it passed through."""
    causes: Counter[str] = Counter()
    for record in logs.records(log_directory):
        if record.logger != "django.request" or not record.message.startswith(
            "Internal Server Error"
        ):
            continue
        lines = record.traceback.splitlines()
        frames = [line.strip() for line in lines if line.strip().startswith('File "')]
        ours = [frame for frame in frames if "site-packages" not in frame] or frames[-1:]
        error = lines[-1] if lines else "?"
        where = "through the package" if any(_in_package(f) for f in frames) else "before it"
        causes[f"{where}: {error[:120]} <- {ours[-1] if ours else '?'}"] += 1
    return dict(causes)


def _in_package(frame: str) -> bool:
    """Whether a traceback line names a file of the package itself."""
    path = frame.split('"')[1]
    return Path(path).resolve().is_relative_to(PACKAGE)


PACKAGE = Path(__file__).resolve().parent.parent / "idempotency"


def one(url: str, quick: bool, workers: int, redis: bool, pooler: str | None) -> dict[str, Any]:
    os.environ["BENCH_LOCK_TIMEOUT"] = str(LOCK_TIMEOUT)
    if redis:
        os.environ["BENCH_REDIS_ACCELERATOR"] = "1"
    os.environ["BENCH_DATABASE_NAME"] = DATABASE_NAME
    # The server's log is read afterwards for the cause of every 500.
    os.environ["BENCH_REQUEST_LOG_LEVEL"] = "ERROR"
    log = Path(tempfile.mkdtemp()) / "gunicorn.log"
    log_directory = Path(tempfile.mkdtemp())
    os.environ["BENCH_LOG_DIR"] = str(log_directory)
    hold_file = Path(tempfile.mkdtemp()) / "hold"
    os.environ["EXAMPLE_CHARGE_HOLD_FILE"] = str(hold_file)
    common.configure(url)
    from django.contrib.auth import get_user_model
    from django.db import connection

    from example_project.wallet.models import Wallet

    size = (
        {"keys": 8, "copies": 20, "distinct": 40, "concurrent_keys": 2, "traffic": 30}
        if quick
        else {"keys": 120, "copies": 50, "distinct": 600, "concurrent_keys": 3, "traffic": 150}
    )
    events: dict[str, Any] = {}
    started = time.monotonic()
    with common.scratch_database(balance=BALANCE) as vendor:
        second = get_user_model().objects.create_user(USERS[1], password=USERS[1])
        Wallet.objects.create(user=second, balance=BALANCE)
        version = common.server_version()
        connection.close()
        env = {
            key: os.environ[key] for key in os.environ if key.startswith(("BENCH_", "EXAMPLE_"))
        }
        stack = contextlib.ExitStack()
        if pooler:
            from tests.pgbouncer import pgbouncer

            port = int(connection.settings_dict["PORT"] or 5432)
            env["BENCH_DATABASE_PORT"] = str(stack.enter_context(pgbouncer(pooler, workers, port)))
        with stack, server.gunicorn(workers, env=env, extra=("--timeout=120",), log=log) as served:
            harness = Harness(served.port, hold_file)
            harness.duplicates(
                size["keys"], size["copies"], size["distinct"], size["concurrent_keys"], redis
            )
            events["killed_worker"], kill_retry = harness.killed_worker()
            events["kill_retry"] = f"{kill_retry.status}{' replay' if kill_retry.replayed else ''}"
            events["workers_after_kill"] = len(served.workers())
            harness.under_traffic(
                lambda: events.__setitem__("terminated_sessions", terminate_sessions()),
                "terminate",
                size["traffic"],
            )
            if vendor == "postgresql":
                harness.under_traffic(restart_postgresql, "restart", size["traffic"])
            if redis:
                harness.redis_outage(size["traffic"])
            connection.close()
            harness.every_key_again()
            result = verify(harness.answers)
            result["client_errors"] = harness.errors
            if redis:
                # The accelerator really served: copies of committed responses.
                from django_redis import get_redis_connection

                result["redis_copies"] = sum(
                    1
                    for _ in get_redis_connection("idempotency").scan_iter(
                        match="idempotency-bench:v1:db:*", count=1000
                    )
                )
            result["unavailable_by_phase"] = dict(
                Counter(a.phase for a in harness.answers if a.problem == "database-unavailable")
            )
            result["retry_statuses"] = dict(
                Counter(
                    f"{a.status}{' replay' if a.replayed else ''}"
                    for a in harness.answers
                    if a.phase == "retry"
                )
            )
        connection.close()
    result["causes_of_500"] = causes_of_500(log_directory)
    result.update(
        pooler=pooler,
        redis=redis,
        redis_fallbacks=sum(
            record.message.startswith("Redis unavailable (")
            for record in logs.records(log_directory)
        ),
        vendor=vendor,
        server=version,
        workers=workers,
        seconds=round(time.monotonic() - started, 1),
        **events,
    )
    return result


def failures(result: dict[str, Any]) -> list[str]:
    """The pass conditions of the issue, for one database."""
    problems = []
    if result["double_executions"]:
        problems.append(f"{result['double_executions']} keys executed twice")
    if result["unexecuted_keys"]:
        problems.append(f"{result['unexecuted_keys']} keys never executed")
    if result["wrong_replays"]:
        problems.append(f"{result['wrong_replays']} replays differ from the first response")
    if not result["balances_exact"]:
        problems.append("a balance does not match its user's charges")
    if not result["spent_matches_answers"]:
        problems.append(f"charged {result['spent'][0]} in all, not {result['spent'][1]}")
    if result["stuck_keys"]:
        problems.append(f"{result['stuck_keys']} keys left in flight")
    if set(result["retry_statuses"]) - {"201", "201 replay"}:
        problems.append(f"a final retry did not get 201: {result['retry_statuses']}")
    if result["foreign_responses"]:
        problems.append(f"{result['foreign_responses']} 201s showed another charge than their own")
    if result["unexpected"]:
        problems.append(f"unexpected answers: {result['unexpected']}")
    through = sum(n for cause, n in result["causes_of_500"].items() if cause.startswith("through"))
    if through:
        problems.append(f"{through} 500s came through the package instead of a 503")
    if result["client_errors"]:
        problems.append(f"the client itself failed: {result['client_errors'][:5]}")
    # Each kind of trouble must have happened, and been answered with 503s.
    if not result["terminated_sessions"]:
        problems.append("no database session was terminated")
    troubles = ["terminate", "restart"] if result["vendor"] == "postgresql" else ["terminate"]
    for phase in troubles:
        if not result["unavailable_by_phase"].get(phase):
            problems.append(f"no request met the database trouble of phase {phase!r}")
    if result["redis"] and not result["redis_fallbacks"]:
        problems.append("no request met Redis down (no fallback was logged)")
    if result["redis"] and not result["redis_copies"]:
        problems.append("the accelerator left no copy in Redis")
    if result["kill_retry"] != "201":
        problems.append(f"the retry of the killed charge got {result['kill_retry']}")
    if result["workers_after_kill"] != result["workers"]:
        problems.append("gunicorn did not replace the killed worker")
    return problems


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="CI's bounded run")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--redis", action="store_true", help="with the accelerator, the Redis store, a restart"
    )
    parser.add_argument(
        "--pgbouncer",
        choices=["transaction", "session"],
        help="the server reaches PostgreSQL through PgBouncer in this pooling mode",
    )


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = []
    failed = []
    for result in results:
        rows.append(
            [
                result["server"],
                result["requests"],
                result["keys"],
                result["workers"],
                result["executions"],
                result["double_executions"],
                result["server_errors"],
                result["no_answer"],
                result["stuck_keys"],
                f"{result['seconds']:.0f}",
            ]
        )
        failed += [f"{result['server']}: {problem}" for problem in failures(result)]
    common.print_table(
        f"Load harness, {'bounded' if args.quick else 'full'} run"
        f"{', with Redis' if args.redis else ''}"
        f"{f', through PgBouncer ({args.pgbouncer} pooling)' if args.pgbouncer else ''}"
        f" ({common.machine()})",
        [
            "database",
            "requests",
            "keys",
            "workers",
            "executions",
            "double executions",
            "5xx",
            "no answer",
            "stuck keys",
            "seconds",
        ],
        rows,
    )
    for result in results:
        print(f"\n{result['server']}: {json.dumps(result['statuses'])}")
        print(
            f"  killed worker {result['killed_worker']}, its retry: {result['kill_retry']}; "
            f"sessions terminated: "
            f"{result['terminated_sessions']}; final retries: {result['retry_statuses']}"
        )
        if result["redis"]:
            print(
                f"  Redis fallbacks logged: {result['redis_fallbacks']}; "
                f"copies in Redis at the end: {result['redis_copies']}"
            )
        for cause, count in result["causes_of_500"].items():
            print(f"  500 x{count}: {cause}")
    if failed:
        raise SystemExit("\nFAILED:\n" + "\n".join(failed))
    print("\nEvery pass condition holds.")


def main() -> None:
    common.command(
        "benchmarks.stress",
        __doc__,
        ["postgres", "mariadb"],
        options,
        lambda url, args: one(url, args.quick, args.workers, args.redis, args.pgbouncer),
        report,
    )


if __name__ == "__main__":
    main()
