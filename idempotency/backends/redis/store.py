"""The store of views that chose ``backend="redis"``, whose effects are
outside the Django database."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from ... import problems
from ...conf import settings
from ..base import Claim, Completion, Failure, Outcome, RequestInfo, Store, StoredResponse
from . import scripts
from .client import connection, errors
from .records import Mine, record_key

logger = logging.getLogger("idempotency")

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
    long as its lease and Redis's data last.
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
        found = scripts.claim_or_read(self.redis, key, info.fingerprint, lease)
        if isinstance(found, Mine):
            self.held = Claim(Outcome.CLAIMED, token=found)
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
        try:
            completion = scripts.complete(self.redis, claim.token, response, ttl)
        except errors():
            logger.error(
                "Redis unavailable while storing the response of %s %s: the handler ran but "
                "its response may not be stored; if not, the key is free again once its lease "
                "(LOCK_TIMEOUT) expires.",
                *self._request(),
                exc_info=True,
            )
            return Completion.UNKNOWN
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
        if isinstance(exc, errors()) and not self.claimed:
            return Failure.UNAVAILABLE
        return None

    def _request(self) -> tuple[str, str]:
        assert self.info is not None
        return self.info.method, self.info.path
