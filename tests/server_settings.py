"""The test settings, for the test project served by a real server
(tests/servers.py): gunicorn, uvicorn or Django's runserver.

* Every warning and error is written to stderr, tracebacks included (Django
  logs a 500 to ``django.request``, which prints nothing without DEBUG).
* The database is a SQLite file (``DATABASE_URL``), whose transactions take
  the write lock as they begin and wait for it: a server's threads write at
  once.
* ``REPLICA_URL`` adds a ``replica`` alias and a router that sends every
  read there.
* ``SERVER_ACCELERATOR=1`` turns the Redis accelerator on, in front of the
  database store; ``SERVER_ATOMIC_REQUESTS=1`` turns ATOMIC_REQUESTS on.
* Records expire after five minutes: a test leaves the Redis database as
  it found it, give or take keys about to expire.
"""

import os
from datetime import timedelta

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, IDEMPOTENCY
from tests.settings import _database as database_settings

for _database in DATABASES.values():
    if _database["ENGINE"] == "django.db.backends.sqlite3":
        _database["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20}
# Only on the default alias: on SQLite the other alias is the same file, and
# a request would wait for its own lock.
DATABASES["default"]["ATOMIC_REQUESTS"] = os.environ.get("SERVER_ATOMIC_REQUESTS") == "1"

# REPLICA_URL: a streaming replica of DATABASE_URL's server, where a router
# sends every read (tests/test_replica.py).
if os.environ.get("REPLICA_URL"):
    DATABASES["replica"] = database_settings(os.environ["REPLICA_URL"])
    DATABASE_ROUTERS = ["tests.testapp.routers.ReadsFromReplica"]

IDEMPOTENCY = {
    **IDEMPOTENCY,
    "REDIS_ACCELERATOR": os.environ.get("SERVER_ACCELERATOR") == "1",
    "TTL": timedelta(minutes=5),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "level": "WARNING", "formatter": "plain"}
    },
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
