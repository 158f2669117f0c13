"""Redis in front of the database store: replays without SQL, and a 409 for a
duplicate in flight without a database round trip.

The database decides every claim; Redis is never asked whether a handler may
run. It can only answer sooner than the database would:

* a replay (or 422) of a record the database committed: the copy is written
  after the commit, and expires with the record;
* a 409 while an in-flight marker lives: the lookup sets it when Redis knows
  nothing of the key; the request removes it when it ends, unless the copy
  of its committed response replaced it; and it expires after
  ``MARKER_LIFETIME`` (or ``LOCK_TIMEOUT`` if shorter) in any case. A marker
  left behind by a worker that died, or by an outage of Redis, can thus
  delay a retry by a few seconds at most; duplicates of a handler that runs
  longer than that get their 409 from the database instead.

A flush, a restart or an outage of Redis therefore only sends requests to
the database. Every Redis error is logged on the ``idempotency`` logger, and
the process then leaves Redis alone for ``REST_AFTER_ERROR`` seconds.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from datetime import datetime, timedelta

from django.db import connections, transaction
from django.utils import timezone

from .backends import redis
from .backends.base import Claim, RequestInfo, StoredResponse
from .conf import settings

logger = logging.getLogger("idempotency")

# Duplicates come in bursts right after the first request (a double click, a
# client's quick retry); that is when the marker saves database round trips.
MARKER_LIFETIME = timedelta(seconds=5)


class Accelerator:
    """Copies of one database alias's committed records, in Redis."""

    def __init__(self, cache_alias: str, database: str) -> None:
        self.cache_alias = cache_alias
        self.redis = redis.connection(cache_alias)
        self.namespace = f"db:{database}:{_identity(database)}"
        self.errors = redis.errors()
        self.failed = False  # once Redis failed, this request leaves it alone

    def lookup(
        self, info: RequestInfo, lock_timeout: timedelta
    ) -> tuple[Claim | None, bytes | None]:
        """What Redis knows of the key, or ``None`` (ask the database) and
        the in-flight marker this request set, in one round trip.

        Marking before the database has answered costs nothing in safety: a
        marker only ever yields a 409, it lives a few seconds at most, and
        the caller removes it at once unless the database lets this request
        run the handler."""
        marker = redis.encode(redis.IN_FLIGHT, secrets.token_hex(16), info.fingerprint)
        lifetime = redis.milliseconds(min(lock_timeout, MARKER_LIFETIME))
        try:
            found = self.redis.eval(redis.CLAIM, 1, self._key(info), marker, lifetime)
        except self.errors as exc:
            self._fall_back("read", exc)
            return None, None
        if found is None:
            return None, marker
        try:
            return redis.Entry.decode(found).claim(), None
        except (ValueError, KeyError, TypeError):
            return None, None  # not ours: the database will answer, and replace it

    def unmark(self, info: RequestInfo, marker: bytes) -> None:
        # (A marker exists only if Redis answered the lookup.)
        try:
            self.redis.eval(redis.RELEASE, 1, self._key(info), marker)
        except self.errors as exc:
            # The marker expires soon; until then duplicates get a 409 they
            # may retry.
            self._fall_back("unmark", exc)

    def remember(
        self, info: RequestInfo, fingerprint: str, response: StoredResponse, expires_at: datetime
    ) -> None:
        """Keep a committed record until the database's copy expires (a
        record already past it is kept for a millisecond)."""
        if self.failed:
            return
        left = expires_at - timezone.now()
        value = redis.encode(redis.COMPLETED, "", fingerprint, response)
        try:
            self.redis.set(self._key(info), value, px=redis.milliseconds(left))
        except self.errors as exc:
            self._fall_back("copy", exc)

    def _key(self, info: RequestInfo) -> str:
        return redis.record_key(self.namespace, info)

    def _fall_back(self, step: str, exc: Exception) -> None:
        self.failed = True
        _rest(self.cache_alias, f"{step}: {type(exc).__name__}: {exc}")


def for_database(database: str) -> Accelerator | None:
    """The accelerator of ``database``, if ``IDEMPOTENCY`` turns it on and
    Redis has not just failed."""
    alias = settings.REDIS
    if alias is None or not settings.REDIS_ACCELERATOR:
        return None
    if time.monotonic() < _resting.get(alias, 0.0):
        return None
    try:
        return Accelerator(alias, database)
    except redis.Unusable as exc:
        _rest(alias, str(exc))
        return None


def _identity(database: str) -> str:
    """Which database a copy belongs to, beyond its alias: projects (or
    test runs) that share a Redis and an alias name must not share copies."""
    connection = connections[database]
    where = connection.settings_dict
    described = "\n".join(
        str(part)
        for part in (connection.vendor, where.get("HOST"), where.get("PORT"), where.get("NAME"))
    )
    return hashlib.sha256(described.encode()).hexdigest()[:16]


# After a Redis error the accelerator rests, per cache alias and process, so
# that a Redis that hangs costs one request a socket timeout now and then
# rather than every request several.
REST_AFTER_ERROR = 5.0
_resting: dict[str, float] = {}


def _rest(alias: str, what: str) -> None:
    _resting[alias] = time.monotonic() + REST_AFTER_ERROR
    logger.warning(
        "Redis unavailable (%s); the database answers alone for the next %g s.",
        what,
        REST_AFTER_ERROR,
    )


class Flight:
    """One request, as the accelerator follows it: marked in flight by the
    lookup, copied once its stored response commits, unmarked otherwise."""

    def __init__(
        self,
        accelerator: Accelerator | None,
        info: RequestInfo,
        database: str,
        marker: bytes | None,
    ) -> None:
        self.accelerator = accelerator
        self.info = info
        self.database = database
        self.marker = marker

    def succeed(self, response: StoredResponse, expires_at: datetime) -> None:
        """The response is stored in the claim's transaction: copy it to
        Redis once (and only if) that transaction commits."""
        accelerator = self.accelerator
        if accelerator is None:
            return

        def copy() -> None:
            self.marker = None  # replaced by the copy
            accelerator.remember(self.info, self.info.fingerprint, response, expires_at)

        transaction.on_commit(copy, using=self.database, robust=True)

    def end(self) -> None:
        """Called once the claim's ``atomic`` block has been left: remove
        this request's marker. A copy follows when the stored response
        commits (at once, or with an outer ``ATOMIC_REQUESTS`` transaction);
        until then the database answers duplicates itself."""
        if self.accelerator is not None and self.marker is not None:
            self.accelerator.unmark(self.info, self.marker)
            self.marker = None
