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
import time
from datetime import datetime, timedelta
from typing import Any

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
    ) -> tuple[Claim | None, redis.Mine | None]:
        """What Redis knows of the key, or ``None`` (ask the database) and
        the in-flight marker this request set, in one round trip.

        Marking before the database has answered costs nothing in safety: a
        marker only ever yields a 409, it lives a few seconds at most, and
        the request removes it when it ends unless its committed response
        replaced it."""
        lifetime = min(lock_timeout, MARKER_LIFETIME)
        try:
            found = redis.claim_or_read(self.redis, self._key(info), info.fingerprint, lifetime)
        except self.errors as exc:
            self._fall_back("read", exc)
            return None, None
        if isinstance(found, redis.Mine):
            return None, found
        # A value this package cannot read: the database answers, and the
        # copy of its answer replaces it.
        return found, None

    def unmark(self, marker: redis.Mine) -> None:
        try:
            redis.release(self.redis, marker)
        except self.errors as exc:
            # The marker expires soon; until then duplicates get a 409 they
            # may retry.
            self._fall_back("unmark", exc)

    def remember(
        self,
        info: RequestInfo,
        record_id: int,
        fingerprint: str,
        response: StoredResponse,
        expires_at: datetime,
    ) -> None:
        """Keep a committed record until the database's copy expires (a
        record already past it is kept for a millisecond), unless it has
        been deleted since it was read."""
        if self.failed:
            return
        value = redis.encode(redis.COMPLETED, "", fingerprint, response, record=record_id)
        try:
            self._put(self._key(info), value, record_id, expires_at, redis.COMPLETED)
        except self.errors as exc:
            self._fall_back("copy", exc)

    def forget(self, scope: str, key: str, record_id: int, expires_at: datetime) -> None:
        """Replace the copy of a record being deleted from the database by a
        tombstone that lives as long as any copy of it could: no request that
        read the record before its deletion committed can put its copy back.

        Raises :class:`CopyNotForgotten` if Redis cannot be told: the
        deletion must not go ahead while Redis may go on replaying it."""
        value = redis.encode(redis.DELETED, "", "", record=record_id)
        key_name = redis.record_key(self.namespace, scope, key)
        try:
            self._put(key_name, value, record_id, expires_at, redis.DELETED)
        except self.errors as exc:
            self._fall_back("forget", exc)
            raise CopyNotForgotten(
                f"The copy in Redis of the idempotency record {record_id} could not be "
                f"replaced by a tombstone ({type(exc).__name__}: {exc}), so its deletion was "
                "refused: Redis would go on replaying a record the database no longer has. "
                "Delete it again once Redis answers, or turn the accelerator off "
                "(IDEMPOTENCY['REDIS_ACCELERATOR'] = False)."
            ) from exc

    def _put(
        self, key: str, value: bytes, record_id: int, expires_at: datetime, kind: str
    ) -> None:
        left = redis.milliseconds(expires_at - timezone.now())
        self.redis.eval(redis.PUT, 1, key, value, left, str(record_id), kind)

    def forget_all(self) -> int:
        """Drop every copy and marker of this database; return how many."""
        forgotten = 0
        try:
            batch: list[bytes] = []
            pattern = redis.namespace_pattern(self.namespace)
            for key in self.redis.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) == 1000:
                    forgotten += self.redis.delete(*batch)
                    batch = []
            if batch:
                forgotten += self.redis.delete(*batch)
        except self.errors as exc:
            self._fall_back("forget", exc)
        return forgotten

    def _key(self, info: RequestInfo) -> str:
        return redis.record_key(self.namespace, info.scope, info.key)

    def _fall_back(self, step: str, exc: Exception) -> None:
        self.failed = True
        _rest(self.cache_alias, f"{step}: {type(exc).__name__}: {exc}")


class CopyNotForgotten(Exception):
    """A record cannot be deleted: Redis could not be told to drop its copy."""


def for_database(database: str, even_resting: bool = False) -> Accelerator | None:
    """The accelerator of ``database``, if ``IDEMPOTENCY`` turns it on and
    Redis has not just failed (or ``even_resting``)."""
    alias = settings.REDIS_ACCELERATOR
    if alias is None:
        return None
    if not even_resting and time.monotonic() < _resting.get(alias, 0.0):
        return None
    try:
        return Accelerator(alias, database)
    except redis.Unusable as exc:
        _rest(alias, str(exc))
        return None


def forget_deleted(sender: type, instance: Any, using: str, **kwargs: Any) -> None:
    """``pre_delete`` of a record (a shell, your own code; the purge deletes
    only expired records, whose copies have expired too, and the admin only
    in-flight ones, which have none): a key freed by hand must not go on
    being replayed from Redis.

    Before the deletion, and whatever the accelerator's rest after an error:
    a tombstone, unlike a dropped copy, also keeps a request that reads the
    record until the deletion commits from copying it back; and if Redis
    cannot take it, the deletion is refused (``CopyNotForgotten``) rather
    than leave a copy behind. If the deletion then rolls back, the record is
    only replayed by the database until it expires."""
    try:
        accelerator = for_database(using, even_resting=True)
    except Exception as exc:  # a cache that cannot be used at all
        raise CopyNotForgotten(f"The accelerator's cache cannot be used: {exc}") from exc
    if accelerator is not None:
        accelerator.forget(instance.scope, instance.key, instance.pk, instance.expires_at)


def forget_database(sender: Any, using: str, **kwargs: Any) -> None:
    """``post_migrate``: after ``migrate``, ``flush`` or a test database's
    creation or flush, the database may hold other records than Redis has
    copies of (a restored backup, a recreated test database under the same
    name). Its copies go."""
    accelerator = for_database(using)
    if accelerator is not None:
        accelerator.forget_all()


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
        marker: redis.Mine | None,
    ) -> None:
        self.accelerator = accelerator
        self.info = info
        self.database = database
        self.marker = marker

    def succeed(self, claim: Claim, response: StoredResponse, expires_at: datetime) -> None:
        """The response is stored in the claim's transaction."""
        assert claim.record_id is not None
        self._copy_on_commit(claim.record_id, self.info.fingerprint, response, expires_at)

    def replayed(self, claim: Claim) -> None:
        """The database answered from a record Redis had no copy of (it was
        flushed, restarted or evicted one): put the copy back."""
        assert claim.response is not None
        assert claim.expires_at is not None
        assert claim.record_id is not None
        self._copy_on_commit(claim.record_id, claim.fingerprint, claim.response, claim.expires_at)

    def _copy_on_commit(
        self, record_id: int, fingerprint: str, response: StoredResponse, expires_at: datetime
    ) -> None:
        # Only once (and if) the record is known to be committed: an outer
        # transaction (ATOMIC_REQUESTS, a test case) may still roll it back.
        accelerator = self.accelerator
        if accelerator is None:
            return

        def copy() -> None:
            self.marker = None  # the copy replaces it
            accelerator.remember(self.info, record_id, fingerprint, response, expires_at)

        transaction.on_commit(copy, using=self.database, robust=True)

    def end(self) -> None:
        """Called once the claim's ``atomic`` block has been left: remove
        this request's marker, unless a copy replaced it already. Under an
        outer transaction the copy comes with its commit; until then the
        database answers duplicates itself."""
        if self.accelerator is not None and self.marker is not None:
            self.accelerator.unmark(self.marker)
            self.marker = None
