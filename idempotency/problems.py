"""The errors this package answers with, as RFC 9457 problem documents.

They are plain ``HttpResponse`` objects rather than DRF ``Response`` objects:
content negotiation must not turn a 409 into a 406 for a client that only
accepts ``application/json``, and the body must never depend on the view's
renderers. Each ``type`` is a tag URI (RFC 4151): stable and unique, and
documented in docs/http.rst under "Problem types".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.http import HttpResponse

from .conf import settings

CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "tag:django-idempotency,2026:"
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class Problem:
    slug: str
    status: int
    title: str
    detail: str

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.slug

    def document(self, **detail_args: str) -> dict[str, Any]:
        """The problem document, its detail filled in with ``detail_args``."""
        return {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail.format(header=settings.HEADER, **detail_args),
        }

    def response(self, **detail_args: str) -> HttpResponse:
        document = self.document(**detail_args)
        response = HttpResponse(
            json.dumps(document), status=self.status, content_type=CONTENT_TYPE
        )
        # As DRF's tests read an answer's document (``response.data``).
        response.data = document  # type: ignore[attr-defined]
        if self.status in (409, 503):
            response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response


KEY_MISSING = Problem(
    "key-missing",
    400,
    "Idempotency key missing",
    "This request must carry an {header} header. Send a new unique value, such as a UUID, "
    "and send the same value again when you retry the request.",
)
KEY_MALFORMED = Problem(
    "key-malformed",
    400,
    "Idempotency key malformed",
    "The {header} header must be one key of 1 to 255 visible ASCII characters, optionally in "
    "double quotes. {reason}",
)
SCOPE_MISSING = Problem(
    "scope-missing",
    400,
    "Client not identified",
    "This request could not be tied to a client: neither credentials nor a session identify "
    "it, so its {header} cannot be kept apart from other clients' keys. Sign in or start a "
    "session, then send the request again.",
)
BODY_MALFORMED = Problem(
    "body-malformed",
    400,
    "Request body malformed",
    "The request body could not be read: {reason}",
)
BODY_TOO_LARGE = Problem(
    "body-too-large",
    413,
    "Request body too large",
    "The request body is larger than this server accepts.",
)
IN_FLIGHT = Problem(
    "in-flight",
    409,
    "Request in progress",
    "A request with this {header} is still being processed. Retry after it has finished "
    "to receive its response.",
)
TRANSACTION_CONFLICT = Problem(
    "transaction-conflict",
    409,
    "Request conflicted with another",
    "This request conflicted with a concurrent one and was rolled back: it had no effect and "
    "its response was not stored. Retry it with the same {header}.",
)
KEY_REUSED = Problem(
    "key-reused",
    422,
    "Idempotency key reused",
    "This {header} was already used for a different request (another method, path or "
    "body). Use a new key for a new request.",
)
RESPONSE_TOO_LARGE = Problem(
    "response-too-large",
    500,
    "Response too large to store",
    "The response to this request was too large to store for replay, so the request was "
    "rolled back and had no effect. Please report this to the service operator.",
)
RESPONSE_NOT_STORED = Problem(
    "response-not-stored",
    500,
    "Response too large to store",
    "This request was processed, but its response was too large to store for replay. Retries "
    "with this {header} get this answer, and the request is not processed again. Please "
    "report this to the service operator.",
)
REDIS_UNAVAILABLE = Problem(
    "redis-unavailable",
    503,
    "Idempotency store unavailable",
    "The store that keeps track of {header} values could not be reached, so this request "
    "was not processed. Retry it with the same {header}.",
)
DATABASE_UNAVAILABLE = Problem(
    "database-unavailable",
    503,
    "Database unavailable",
    "The database could not be reached, or took no writes, while this request was "
    "processed. Its effects "
    "and its stored response commit together or not at all, so retry with the same {header}: "
    "the request then runs once, or its stored response is replayed.",
)
