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

from django.db import connections, transaction
from django.utils import timezone

from .backends.base import Claim, Outcome, RequestInfo, StoredResponse
from .backends.database import DatabaseStore
from .backends.redis import scripts
from .backends.redis.client import Unusable, connection, errors
from .backends.redis.records import COMPLETED, DELETED, Mine, encode, namespace_pattern, record_key
from .conf import settings

logger = logging.getLogger("idempotency")

# Duplicates come in bursts right after the first request (a double click, a
# client's quick retry); that is when the marker saves database round trips.
MARKER_LIFETIME = timedelta(seconds=5)


class Accelerator:
    """Copies of one database alias's committed records, in Redis."""

    def __init__(self, cache_alias: str, database: str) -> None:
        self.cache_alias = cache_alias
        self.redis = connection(cache_alias)
        self.namespace = f"db:{database}:{_identity(database)}"
        self.errors = errors()
        self.failed = False  # once Redis failed, this request leaves it alone

    def lookup(
        self, info: RequestInfo, lock_timeout: timedelta
    ) -> tuple[Claim | None, Mine | None]:
        """What Redis knows of the key, or ``None`` (ask the database) and
        the in-flight marker this request set, in one round trip.

        Marking before the database has answered costs nothing in safety: a
        marker only ever yields a 409, it lives a few seconds at most, and
        the request removes it when it ends unless its committed response
        replaced it."""
        lifetime = min(lock_timeout, MARKER_LIFETIME)
        try:
            found = scripts.claim_or_read(self.redis, self._key(info), info.fingerprint, lifetime)
        except self.errors as exc:
            self._fall_back("read", exc)
            return None, None
        if isinstance(found, Mine):
            return None, found
        # A value this package cannot read: the database answers, and the
        # copy of its answer replaces it.
        return found, None

    def unmark(self, marker: Mine) -> None:
        try:
            scripts.release(self.redis, marker)
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
        value = encode(COMPLETED, "", fingerprint, response, record=record_id)
        try:
            self._put(self._key(info), value, record_id, expires_at, COMPLETED)
        except self.errors as exc:
            self._fall_back("copy", exc)

    def forget(self, scope: str, key: str, record_id: int, expires_at: datetime) -> None:
        """Replace the copy of a record being deleted from the database by a
        tombstone that lives as long as any copy of it could: no request that
        read the record before its deletion committed can put its copy back.

        Raises :class:`CopyNotForgotten` if Redis cannot be told: the
        deletion must not go ahead while Redis may go on replaying it."""
        value = encode(DELETED, "", "", record=record_id)
        key_name = record_key(self.namespace, scope, key)
        try:
            self._put(key_name, value, record_id, expires_at, DELETED)
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
        scripts.put(self.redis, key, value, expires_at - timezone.now(), record_id, kind)

    def forget_all(self) -> int:
        """Drop every copy and marker of this database; return how many.

        On a Redis Cluster the copies are spread over the masters by slot (no
        hash tag gathers them): ``RedisCluster.scan_iter`` visits every
        master, and its ``delete`` sends one ``DEL`` per slot."""
        forgotten = 0
        try:
            batch: list[bytes] = []
            pattern = namespace_pattern(self.namespace)
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
        return record_key(self.namespace, info.scope, info.key)

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
    except Unusable as exc:
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


def accelerate(alias: str) -> DatabaseStore:
    """The database store of ``alias``, with the accelerator in front if
    ``IDEMPOTENCY`` turns it on for that database and Redis has not just
    failed."""
    accelerator = for_database(alias)
    if accelerator is None:
        return DatabaseStore(alias)
    return AcceleratedStore(alias, accelerator)


class AcceleratedStore(DatabaseStore):
    """The database store, with the accelerator in front of it: one request,
    marked in flight by the lookup, copied once its stored response commits,
    unmarked otherwise. The database store decides every claim."""

    name = "accelerator"

    def __init__(self, alias: str, accelerator: Accelerator) -> None:
        super().__init__(alias)
        self.accelerator = accelerator
        self.info: RequestInfo | None = None
        self.marker: Mine | None = None

    def lookup(self, info: RequestInfo) -> Claim | None:
        """Before anything touches the database: a replay from Redis needs
        no connection at all."""
        self.info = info
        known, self.marker = self.accelerator.lookup(info, settings.LOCK_TIMEOUT)
        return known

    def claim(self, info: RequestInfo, lease: timedelta) -> Claim:
        self.info = info
        claim = super().claim(info, lease)
        if claim.outcome is Outcome.COMPLETED:
            # The database answers from a record Redis had no copy of (it
            # was flushed, restarted or evicted one): put the copy back.
            assert claim.response is not None
            assert claim.expires_at is not None
            assert claim.record_id is not None
            self._copy_on_commit(
                claim.record_id, claim.fingerprint, claim.response, claim.expires_at
            )
        return claim

    def keep(self, claim: Claim, response: StoredResponse, ttl: timedelta) -> datetime | None:
        expires_at = super().keep(claim, response, ttl)
        if expires_at is not None:
            assert claim.record_id is not None
            assert self.info is not None
            self._copy_on_commit(claim.record_id, self.info.fingerprint, response, expires_at)
        return expires_at

    def end(self) -> None:
        """Remove this request's marker, unless a copy replaced it already.
        Under an outer transaction the copy comes with its commit; until
        then the database answers duplicates itself."""
        if self.marker is not None:
            self.accelerator.unmark(self.marker)
            self.marker = None
        super().end()

    def _copy_on_commit(
        self, record_id: int, fingerprint: str, response: StoredResponse, expires_at: datetime
    ) -> None:
        # Only once (and if) the record is known to be committed: an outer
        # transaction (ATOMIC_REQUESTS, a test case) may still roll it back.
        accelerator, info = self.accelerator, self.info
        assert info is not None

        def copy() -> None:
            self.marker = None  # the copy replaces it
            accelerator.remember(info, record_id, fingerprint, response, expires_at)

        transaction.on_commit(copy, using=self.alias, robust=True)
