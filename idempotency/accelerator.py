"""Redis in front of the database store: replays without SQL, and a 409 for a
duplicate in flight without a database round trip.

The database decides every claim; Redis is never asked whether a handler may
run. It can only answer sooner than the database would:

* a replay (or 422) of a record the database committed: the copy is written
  after the commit, and expires with the record;
* a 409 while an in-flight marker lives: it is set once the database claim is
  held, removed when the claim rolls back, and expires after
  ``MARKER_LIFETIME`` (or ``LOCK_TIMEOUT`` if shorter) in any case. A marker
  left behind by a worker that died, or by an outage of Redis, can thus
  delay a retry by a few seconds at most; duplicates of a handler that runs
  longer than that get their 409 from the database instead.

A flush, a restart or an outage of Redis therefore only sends requests to
the database. Every Redis error is logged, once per failed command, on the
``idempotency`` logger, and the request goes on without Redis.
"""

from __future__ import annotations

import logging
import secrets
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
        self.redis = redis.connection(cache_alias)
        self.namespace = f"db:{database}"
        self.errors = redis.errors()

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
            _fall_back("read", exc)
            return None, None
        if found is None:
            return None, marker
        try:
            return redis.Entry.decode(found).claim(), None
        except (ValueError, KeyError, TypeError):
            return None, None  # not ours: the database will answer, and replace it

    def unmark(self, info: RequestInfo, marker: bytes) -> None:
        try:
            self.redis.eval(redis.RELEASE, 1, self._key(info), marker)
        except self.errors as exc:
            # The marker expires soon; until then duplicates get a 409 they
            # may retry.
            _fall_back("unmark", exc)

    def remember(
        self, info: RequestInfo, fingerprint: str, response: StoredResponse, expires_at: datetime
    ) -> None:
        """Keep a committed record until the database's copy expires (a
        record already past it is kept for a millisecond)."""
        left = expires_at - timezone.now()
        value = redis.encode(redis.COMPLETED, "", fingerprint, response)
        try:
            self.redis.set(self._key(info), value, px=redis.milliseconds(left))
        except self.errors as exc:
            _fall_back("copy", exc)

    def _key(self, info: RequestInfo) -> str:
        return redis.record_key(self.namespace, info)


def for_database(database: str) -> Accelerator | None:
    """The accelerator of ``database``, if ``IDEMPOTENCY`` turns it on."""
    alias = settings.REDIS
    if alias is None or not settings.REDIS_ACCELERATOR:
        return None
    return Accelerator(alias, database)


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
        self.stored = False

    def succeed(self, response: StoredResponse, expires_at: datetime) -> None:
        """The response is stored in the claim's transaction: copy it to
        Redis once (and only if) that transaction commits."""
        accelerator = self.accelerator
        if accelerator is None:
            return
        self.stored = True

        def copy() -> None:
            self.marker = None  # replaced by the copy
            accelerator.remember(self.info, self.info.fingerprint, response, expires_at)

        transaction.on_commit(copy, using=self.database)

    def end(self) -> None:
        """Called once the claim's ``atomic`` block has been left."""
        if self.accelerator is None or self.marker is None:
            return
        if self.stored and connections[self.database].in_atomic_block:
            # An outer transaction (ATOMIC_REQUESTS) has yet to commit; the
            # copy replaces the marker then. If it rolls back instead, the
            # marker expires soon.
            return
        self.accelerator.unmark(self.info, self.marker)
        self.marker = None


def _fall_back(step: str, exc: Exception) -> None:
    logger.warning(
        "Redis unavailable (%s: %s: %s); the database answers instead.",
        step,
        type(exc).__name__,
        exc,
    )
