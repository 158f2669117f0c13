"""What a store of idempotency records answers, whatever it keeps them in."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Outcome(enum.Enum):
    CLAIMED = "claimed"  # this request owns the key: run the handler
    IN_FLIGHT = "in_flight"  # another request holds the key right now: 409
    COMPLETED = "completed"  # a finished request left a response: replay or 422


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
    # this request still owns the record it claimed.
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
    """The store cannot hold this response (MariaDB's ``max_allowed_packet``
    is below the statement that would store it): the request must take the
    path of a response over ``MAX_RESPONSE_BYTES``."""
