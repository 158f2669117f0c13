"""The store of views that chose ``backend="redis"``, whose effects are
outside the Django database."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from typing import Any

from ... import problems
from ...conf import settings
from ..base import Claim, Completion, Failure, Outcome, RequestInfo, Store, StoredResponse
from . import scripts
from .client import connection, errors
from .records import Mine, milliseconds, record_key

logger = logging.getLogger("idempotency")

# How long a claim or a stored response waits for REDIS_REPLICAS replicas to
# acknowledge it (Redis WAIT). A replica that keeps up answers within a
# millisecond or two, since WAIT asks it at once (REPLCONF GETACK) instead of
# waiting for its report of every second; one silent for a quarter of a
# second is cut off or far behind, and a failover then would lose the write
# whatever the wait. Fixed rather than a setting: it must stay under the
# SOCKET_TIMEOUT the checks advise (W002), so that WAIT's own answer comes
# back, not a socket timeout; and short, since while a replica is away every
# claim of a backend="redis" view waits this long before its 503.
REPLICA_TIMEOUT = timedelta(milliseconds=250)


class NotReplicated(Exception):
    """Fewer replicas than REDIS_REPLICAS acknowledged a claim in time: it
    was released, and the request is answered as in an outage."""


# What a request that outlived its lease logs, by what it found.
LATE_COMPLETIONS = {
    Completion.STORED_LATE: (
        logging.WARNING,
        "but no other request holds its key now, so its response was stored (had another "
        "claimed the key meanwhile and failed, the handler ran twice)",
    ),
    Completion.TAKEN_OVER: (
        logging.ERROR,
        "and another request has claimed its key since: the handler may run twice, and this "
        "response is not stored",
    ),
    Completion.REDONE: (
        logging.ERROR,
        "and another request has run the handler again and stored its response since: the "
        "handler ran twice, and this response is not stored",
    ),
}


class RedisStore(Store):
    """Records of ``backend="redis"`` views, in Redis only.

    A claim is ``SET NX`` with the lease (``LOCK_TIMEOUT``) as its expiry and
    a random owner token in its value. If the worker dies, the lease runs out
    and a retry may claim the key again. If the worker is only slow, the same
    happens: the lease must outlast the slowest handler. Completing or
    releasing checks the owner token first, so a worker whose lease ran out
    leaves the new owner's record alone.

    No transaction joins the record to the handler's effects: they stand
    whatever becomes of the record, and the handler runs once per key for as
    long as its lease and Redis's data last. A failover to a replica loses
    the writes it had not received yet, claims included, unless
    ``REDIS_REPLICAS`` has each claim wait until replicas have it (WAIT).
    """

    NAMESPACE = "redis"
    name = "redis"
    transactional = False
    unavailable = problems.REDIS_UNAVAILABLE
    outage = "Redis unavailable"

    def __init__(self, alias: str | None) -> None:
        self.alias = alias
        self.fail_open = settings.REDIS_FAIL_OPEN
        self.redis: Any = None  # the client, from the first claim on
        self.info: RequestInfo | None = None
        # The claim an exception leaving the unit must release, if any.
        self.held: Claim | None = None
        # Whether claim() got this request a claim: Redis errors before it
        # are an outage, after it the handler's own.
        self.claimed = False

    @contextmanager
    def unit(self) -> Iterator[None]:
        """Nothing rolls back here: an exception that leaves the unit frees
        the key this request claimed, so that a corrected retry may use it."""
        try:
            yield
        except BaseException:
            if self.held is not None:
                self.release(self.held)
            raise

    def claim(self, info: RequestInfo, lease: timedelta) -> Claim:
        """Raises one of :func:`~.client.errors` if Redis cannot be reached
        (or the cache gives no usable connection)."""
        self.info = info
        if self.redis is None:
            self.redis = connection(self.alias)
        key = record_key(self.NAMESPACE, info.scope, info.key)
        replicas = settings.REDIS_REPLICAS
        with self._writer(replicas) as client:
            found = scripts.claim_or_read(client, key, info.fingerprint, lease)
            if isinstance(found, Mine):
                # Held from here: should the replicas fail it, unit() releases it.
                self.held = Claim(Outcome.CLAIMED, token=found)
                acknowledged = _acknowledged(client, replicas)
                if acknowledged < replicas:
                    raise NotReplicated(
                        f"{acknowledged} of the {replicas} replicas that REDIS_REPLICAS asks "
                        f"for acknowledged the claim within {milliseconds(REPLICA_TIMEOUT)} ms: a "
                        "failover could lose it, so it was released and the handler not run"
                    )
                self.claimed = True
                return self.held
        # A value this package cannot read: never run the handler over it.
        return found or Claim(Outcome.IN_FLIGHT)

    def wait(self, info: RequestInfo, lease: timedelta, timeout: timedelta) -> Claim:
        """Listen on the record's channel, where the holder's completion or
        release is published, and claim again at each message: blocked on
        the socket meanwhile, never polling. The subscription is confirmed
        before the first claim, so no message can slip between a claim and
        the wait; and no wait outlasts the holder's lease, which a worker
        that died lets run out without a word."""
        deadline = time.monotonic() + timeout.total_seconds()
        channel = record_key(self.NAMESPACE, info.scope, info.key)
        listener = self.redis.pubsub()
        try:
            listener.subscribe(channel)
            # Its confirmation: once read, the subscription is in place.
            listener.get_message(timeout=max(deadline - time.monotonic(), 0))
            while True:
                claim = self.claim(info, lease)
                left = deadline - time.monotonic()
                if claim.outcome is not Outcome.IN_FLIGHT or left <= 0:
                    return claim
                lease_left = self.redis.pttl(channel) / 1000
                listener.get_message(timeout=min(left, lease_left) if lease_left > 0 else left)
        finally:
            listener.close()

    def complete(self, claim: Claim, response: StoredResponse, ttl: timedelta) -> Completion:
        """Store the response if the claim is still ours, or if its lease ran
        out and nobody claimed the key since; otherwise say who has it."""
        self.held = None
        replicas = settings.REDIS_REPLICAS
        try:
            with self._writer(replicas) as client:
                completion = scripts.complete(client, claim.token, response, ttl)
                acknowledged = _acknowledged(client, replicas if completion in WRITTEN else 0)
        except errors():
            logger.error(
                "Redis unavailable while storing the response of %s %s: the handler ran but "
                "its response may not be stored; if not, the key is free again once its lease "
                "(LOCK_TIMEOUT) expires.",
                *self._request(),
                exc_info=True,
            )
            return Completion.UNKNOWN
        if acknowledged < replicas and completion in WRITTEN:
            logger.error(
                "The response of %s %s was stored, but only %d of the %d replicas that "
                "REDIS_REPLICAS asks for acknowledged it within %d ms: a failover before they "
                "have it would leave its key in flight until its lease (LOCK_TIMEOUT) expires, "
                "and a retry after that would run the handler again. The response was sent.",
                *self._request(),
                acknowledged,
                replicas,
                milliseconds(REPLICA_TIMEOUT),
            )
        if completion is not Completion.STORED:
            level, what = LATE_COMPLETIONS[completion]
            logger.log(
                level,
                "%s %s outlived its lease (LOCK_TIMEOUT) %s. Raise LOCK_TIMEOUT above the "
                "slowest handler of backend='redis' views.",
                *self._request(),
                what,
            )
        return completion

    def release(self, claim: Claim) -> None:
        """Free the key after an exception or a transient answer, if the
        claim is still ours. If Redis is gone, the lease expires anyway."""
        self.held = None
        try:
            scripts.release(self.redis, claim.token)
        except errors():
            logger.warning(
                "Redis unavailable while releasing the key of %s %s; it is free again once "
                "its lease (LOCK_TIMEOUT) expires.",
                *self._request(),
                exc_info=True,
            )

    def failure(self, exc: Exception, storing: bool) -> Failure | None:
        if isinstance(exc, (*errors(), NotReplicated)) and not self.claimed:
            return Failure.UNAVAILABLE
        return None

    def _writer(self, replicas: int) -> Any:
        """The client to write with: with ``replicas``, one holding a single
        connection of the pool until the block ends: WAIT waits for the
        writes of its own connection only, and asked on another connection
        it would answer for that one's writes, not ours."""
        if replicas > 0:
            return self.redis.client()
        return nullcontext(self.redis)

    def _request(self) -> tuple[str, str]:
        assert self.info is not None
        return self.info.method, self.info.path


# What complete() wrote, if anything: the replicas must have it too.
WRITTEN = (Completion.STORED, Completion.STORED_LATE)


def _acknowledged(client: Any, replicas: int) -> int:
    """How many replicas have the writes of ``client``'s connection, once
    ``replicas`` of them do or REPLICA_TIMEOUT has passed (Redis WAIT); with
    none asked for, no round trip at all."""
    if replicas <= 0:
        return 0
    return int(client.wait(replicas, milliseconds(REPLICA_TIMEOUT)))
