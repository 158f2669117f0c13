"""What a protected handler can read of its own request's key."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest

ATTRIBUTE = "idempotency"


@dataclass(frozen=True)
class Idempotency:
    """``request.idempotency`` in a protected handler: the parsed key (pass
    it on to a payment provider's own idempotency parameter, so that a retry
    the provider sees is deduplicated there too) and the request's scope."""

    key: str
    scope: str


def idempotency_of(request: object) -> Idempotency | None:
    """``request.idempotency``, typed; ``None`` where no key protects the
    request (a safe method, or an optional key the client did not send)."""
    value = getattr(request, ATTRIBUTE, None)
    return value if isinstance(value, Idempotency) else None


def attach(request: HttpRequest, idempotency: Idempotency) -> None:
    """Put ``idempotency`` on the request the handler gets, and on Django's
    request under a DRF one."""
    setattr(request, ATTRIBUTE, idempotency)
    inner = getattr(request, "_request", None)
    if inner is not None:
        setattr(inner, ATTRIBUTE, idempotency)
