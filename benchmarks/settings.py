"""The example project, set up for measuring.

The database comes from ``BENCH_DATABASE_URL`` and is a scratch database of
its own (``idempotency_bench``, or a file in the temporary directory for
SQLite), created and dropped by the benchmark. Authentication is a header
naming the user, cached per process, so that a request costs what the view
costs and not what PBKDF2 costs.
"""

import os
import tempfile

import dj_database_url

from example_project.settings import *  # noqa: F403
from example_project.settings import REST_FRAMEWORK

DEBUG = False
ROOT_URLCONF = "benchmarks.urls"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
REST_FRAMEWORK = {
    **REST_FRAMEWORK,
    "DEFAULT_AUTHENTICATION_CLASSES": ["benchmarks.auth.UserHeaderAuthentication"],
}

_url = os.environ.get("BENCH_DATABASE_URL", "sqlite://")
_database = dict(dj_database_url.parse(_url, conn_max_age=600, conn_health_checks=True))
if _database["ENGINE"] == "django.db.backends.sqlite3":
    _database["NAME"] = os.path.join(tempfile.gettempdir(), "idempotency_bench.sqlite3")
    # Several gunicorn workers write at once: a transaction that reads before
    # it writes (as the charge does) would fail its lock upgrade at once with
    # "database is locked". Django's advice for concurrent SQLite.
    _database["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20}
else:
    _database["NAME"] = "idempotency_bench"
if os.environ.get("BENCH_PREPARED") and "postgresql" in _database["ENGINE"]:
    # Server-side binding, and psycopg prepares a statement on its second
    # execution: how a project that opts in to prepared statements runs.
    _database["OPTIONS"] = {"server_side_binding": True, "prepare_threshold": 1}
if _database["ENGINE"] == "django.db.backends.mysql":
    _database["OPTIONS"] = {"charset": "utf8mb4"}
    _database["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
# The benchmark creates and drops this database with Django's test-database
# machinery, which works on TEST["NAME"].
_database.setdefault("TEST", {})["NAME"] = _database["NAME"]
# The load harness's server may reach PostgreSQL through PgBouncer (stress.py
# --pgbouncer): the same database on another port.
if os.environ.get("BENCH_DATABASE_PORT"):
    _database["PORT"] = os.environ["BENCH_DATABASE_PORT"]
DATABASES = {"default": _database}

# Redis for benchmarks/replay.py, which turns the accelerator on and off
# between requests, and for stress.py --redis.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "idempotency": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/1"),
        # As the package's checks ask (idempotency.W002): a hung Redis
        # answers within a second.
        "OPTIONS": {"SOCKET_TIMEOUT": 1, "SOCKET_CONNECT_TIMEOUT": 1},
    },
}
IDEMPOTENCY = {
    **IDEMPOTENCY,  # noqa: F405
    "REDIS": "idempotency",
    # On for the whole server with BENCH_REDIS_ACCELERATOR (stress --redis).
    "REDIS_ACCELERATOR": bool(os.environ.get("BENCH_REDIS_ACCELERATOR")),
    "REDIS_KEY_PREFIX": "idempotency-bench",
}

# With BENCH_LOG_DIR (the load harness), each worker process logs to a
# file of its own there, one JSON record a line (benchmarks/logs.py).
_log_handler = (
    {"()": "benchmarks.logs.WorkerFileHandler", "directory": os.environ["BENCH_LOG_DIR"]}
    if os.environ.get("BENCH_LOG_DIR")
    else {"class": "logging.StreamHandler"}
)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": _log_handler},
    # 409s and 422s are expected under load; only errors are news.
    "loggers": {
        "django.request": {
            "handlers": ["console"],
            # The load harness causes 503s on purpose, and counts them.
            "level": os.environ.get("BENCH_REQUEST_LOG_LEVEL", "ERROR"),
        },
        # The package's own warnings (503s, Redis fallbacks), which the load
        # harness counts in the server's log.
        "idempotency": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}

if os.environ.get("BENCH_LOCK_TIMEOUT"):
    # The load harness makes a killed worker's claim expire quickly.
    IDEMPOTENCY = {**IDEMPOTENCY, "LOCK_TIMEOUT": float(os.environ["BENCH_LOCK_TIMEOUT"])}
if os.environ.get("BENCH_DATABASE_NAME"):
    _database["NAME"] = _database["TEST"]["NAME"] = os.environ["BENCH_DATABASE_NAME"]
