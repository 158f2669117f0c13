"""What a store of idempotency records offers, whatever it keeps them in.

The protocol in ``idempotency.core`` runs every request against a
:class:`Store`; it imports no concrete store. A store is built per request
(building it does no I/O), and its methods are called in this order::

    known = store.lookup(info)           # an answer before any I/O, or None
    with store.unit():                   # the unit of work
        claim = store.claim(info, lease)
        if claim.outcome is Outcome.CLAIMED:
            ... run the handler ...
            store.release(claim)          # a transient answer, or
            store.complete(claim, stored, ttl)
    # an exception from any of these: store.failure(exc, storing) says how
    # to answer it
    store.end()                          # always, once the unit is left

An exception that leaves ``unit()`` undoes the claim: a transactional store
rolls it back with the handler's effects, any other frees the key.
"""

from __future__ import annotations

import abc
import enum
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..problems import Problem


class Outcome(enum.Enum):
    CLAIMED = "claimed"  # this request owns the key: run the handler
    IN_FLIGHT = "in_flight"  # another request holds the key right now: 409
    COMPLETED = "completed"  # a finished request left a response: replay or 422


class Completion(enum.Enum):
    """What became of a response the protocol asked a store to keep."""

    STORED = "stored"
    # The lease ran out while the handler ran, but no other request had
    # claimed the key: the response is stored all the same.
    STORED_LATE = "stored late"
    # Another request holds the key now: it may be running the handler again.
    TAKEN_OVER = "taken over"
    # Another request ran the handler again and stored its response.
    REDONE = "redone"
    # The store cannot hold a response this large (MariaDB's
    # ``max_allowed_packet`` is below the statement that would store it).
    TOO_LARGE = "too large"
    # The store could not be reached to keep it (logged by the store).
    UNKNOWN = "unknown"


class Failure(enum.Enum):
    """How the protocol answers an exception from a store."""

    # The store cannot be reached, and nothing the request did was kept
    # without its record: 503, and a retry is safe.
    UNAVAILABLE = "unavailable"
    # A concurrent transaction won (a serialization failure or a deadlock
    # while storing or committing): everything rolled back; 409.
    CONFLICT = "conflict"


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    fingerprint: str = ""
    response: StoredResponse | None = None
    # When a completed record expires, if the store read it.
    expires_at: datetime | None = None
    # Whatever the store needs to prove, when it saves the response, that
    # this request still owns the record it claimed. Only its store reads it.
    token: Any = field(default=None, repr=False)
    # The database store's id of the record claimed or found: copies of a
    # record in Redis carry it, so that none outlives the record's deletion.
    record_id: int | None = None


@dataclass(frozen=True)
class RequestInfo:
    """The parts of a request a store needs in order to claim its key."""

    scope: str
    key: str
    fingerprint: str
    method: str
    path: str
    now: datetime


class ResponseTooLarge(Exception):
    """The store cannot hold this response: the request must take the path
    of a response over ``MAX_RESPONSE_BYTES``."""


class Store(abc.ABC):
    """Claims keys, keeps responses, and offers the unit of work that the
    handler runs in."""

    #: The store's name in signals and log lines.
    name: str
    #: ``True`` if the handler's database effects commit or roll back with
    #: the record (the database store's transaction); ``False`` if they stand
    #: whatever becomes of the record (Redis).
    transactional: bool
    #: The problem (503) a request gets when the store cannot be reached,
    #: and how the log line that goes with it begins.
    unavailable: Problem
    outage: str
    #: Run the handler unprotected, rather than answer ``unavailable``, when
    #: the store cannot be reached to claim the key.
    fail_open: bool = False

    def lookup(self, info: RequestInfo) -> Claim | None:
        """An answer known before the unit of work begins (the accelerator's
        copy of a completed record, or its in-flight marker), or ``None``."""
        return None

    @abc.abstractmethod
    def unit(self) -> AbstractContextManager[None]:
        """The unit of work around the claim, the handler and the store."""

    @abc.abstractmethod
    def claim(self, info: RequestInfo, lease: timedelta) -> Claim:
        """Claim ``info``'s key, or say who has it."""

    @abc.abstractmethod
    def wait(self, info: RequestInfo, lease: timedelta, timeout: timedelta) -> Claim:
        """Claim ``info``'s key again, after waiting up to ``timeout`` for the
        request that holds it to finish: its stored response, the key if it
        failed, or still in flight at the deadline. Blocks on what the holder
        releases, never polls."""

    @abc.abstractmethod
    def complete(self, claim: Claim, response: StoredResponse, ttl: timedelta) -> Completion:
        """Keep ``response`` as the answer to ``claim``'s key for ``ttl``."""

    @abc.abstractmethod
    def release(self, claim: Claim) -> None:
        """Leave the key free for a corrected retry (a transient answer): a
        transactional store also undoes the handler's effects."""

    def rolled_back(self) -> bool:
        """Whether the handler rolled back its own work (a transactional
        store's transaction is marked for rollback): nothing is stored, and
        any transaction around the unit (``ATOMIC_REQUESTS``) must roll back
        too once the unit is left, as without the package."""
        return False

    @abc.abstractmethod
    def failure(self, exc: Exception, storing: bool) -> Failure | None:
        """How to answer ``exc``, raised in the unit of work (``storing``:
        while the store kept the response or committed the unit); ``None``
        lets it propagate."""

    def end(self) -> None:
        """Called once the unit of work has been left, whatever happened."""
        return None
