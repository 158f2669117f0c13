"""What a record in Redis holds, and under which key.

Each record is one Redis string: a line of JSON (state, owner token,
fingerprint, status, headers, and for the accelerator's copies the database
record's id), a newline, then the response body's bytes. JSON never holds a
raw newline, so the first one ends the header, and a body is stored exactly
as it was sent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ...conf import settings
from ..base import Claim, Outcome, StoredResponse

IN_FLIGHT = "in_flight"
COMPLETED = "completed"
# The accelerator's mark of a record deleted from the database: no copy of
# it may be written until the record would have expired.
DELETED = "deleted"


def record_key(namespace: str, scope: str, key: str) -> str:
    """A fixed-length key for (scope, key): scopes are arbitrary text, and
    the hash keeps them out of the key space's syntax (``:``, ``{}``)."""
    digest = hashlib.sha256(f"{scope}\n{key}".encode("utf-8", "surrogatepass"))
    return f"{settings.REDIS_KEY_PREFIX}:v1:{namespace}:{digest.hexdigest()}"


def namespace_pattern(namespace: str) -> str:
    """A ``SCAN MATCH`` pattern for every key of ``namespace``."""
    prefix = f"{settings.REDIS_KEY_PREFIX}:v1:{namespace}:"
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in prefix) + "*"


def milliseconds(duration: timedelta) -> int:
    return max(1, int(duration / timedelta(milliseconds=1)))


def encode(
    state: str,
    owner: str,
    fingerprint: str,
    response: StoredResponse | None = None,
    record: int | None = None,
) -> bytes:
    header: dict[str, Any] = {"state": state, "owner": owner, "fingerprint": fingerprint}
    if record is not None:
        header["record"] = str(record)
    if response is not None:
        header["status"] = response.status
        header["headers"] = [list(pair) for pair in response.headers]
    body = response.body if response is not None else b""
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + body


@dataclass(frozen=True)
class Mine:
    """An in-flight value this request set, which only it may replace or
    remove (the owner token makes it unique)."""

    key: str
    owner: str
    fingerprint: str

    @property
    def value(self) -> bytes:
        return encode(IN_FLIGHT, self.owner, self.fingerprint)


@dataclass(frozen=True)
class Entry:
    state: str
    fingerprint: str
    response: StoredResponse | None

    @classmethod
    def decode(cls, value: bytes) -> Entry:
        """Raise ``ValueError`` (or ``KeyError``, ``TypeError``) if ``value``
        is not a record this package wrote."""
        head, _, body = value.partition(b"\n")
        header = json.loads(head)
        state = header["state"]
        if state not in (IN_FLIGHT, COMPLETED):
            raise ValueError(f"unknown state {state!r}")
        response = None
        if state == COMPLETED:
            response = StoredResponse(
                status=int(header["status"]),
                headers=[(str(name), str(value)) for name, value in header["headers"]],
                body=body,
            )
        return cls(state=state, fingerprint=str(header["fingerprint"]), response=response)

    def claim(self) -> Claim:
        if self.state == IN_FLIGHT:
            return Claim(Outcome.IN_FLIGHT)
        return Claim(Outcome.COMPLETED, fingerprint=self.fingerprint, response=self.response)
