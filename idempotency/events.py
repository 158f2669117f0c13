"""What became of a protected request, told to the receivers of
``idempotency.signals`` and to the ``idempotency`` logger."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

from django.db import connections, transaction
from django.dispatch import Signal
from django.http import HttpRequest
from django.utils.crypto import salted_hmac

from . import signals

logger = logging.getLogger("idempotency")

# How each event is logged: DEBUG for the normal course of a first request,
# INFO for what a client's retry or mistake caused.
LEVELS = {
    signals.claimed: (logging.DEBUG, "claimed"),
    signals.completed: (logging.DEBUG, "completed"),
    signals.replayed: (logging.INFO, "replayed"),
    signals.conflict: (logging.INFO, "conflict"),
    signals.key_reused: (logging.INFO, "key reused"),
    signals.key_refused: (logging.INFO, "key refused"),
}


def hash_key(key: str) -> str:
    """An HMAC of ``key`` under ``SECRET_KEY``: it tells keys apart in logs
    and metrics without revealing them, even short or guessable ones."""
    return salted_hmac("idempotency.events", key, algorithm="sha256").hexdigest()[:32]


def announce(
    signal: Signal,
    request: HttpRequest,
    *,
    scope: str | None,
    key: str | None,
    status: int | None,
    store: str | None,
) -> None:
    """Send ``signal`` and log the event it stands for. Nothing is computed
    unless a receiver or the log wants it: this runs on every request."""
    level, what = LEVELS[signal]
    logged = logger.isEnabledFor(level)
    if not logged and not signal.receivers:
        return
    view = view_name(request)
    key_hash = None if key is None else hash_key(key)
    if logged:
        logger.log(
            level,
            "%s %s: %s (status %s, view %s, scope %s, key %s, store %s)",
            request.method,
            request.path,
            what,
            status,
            view,
            scope,
            key_hash,
            store,
        )
    answers = _send(
        signal, sender=view, view=view, scope=scope, key_hash=key_hash, status=status, store=store
    )
    for receiver, answer in answers:
        if isinstance(answer, Exception):
            # Metrics must never fail a payment.
            logger.error(
                "A receiver of idempotency's %s signal (%r) failed.",
                what,
                receiver,
                exc_info=answer,
            )


def _send(signal: Signal, **kwargs: Any) -> list[tuple[Any, Any]]:
    """``signal.send_robust()``, under a savepoint in each transaction that is
    open (the claim's, or ATOMIC_REQUESTS'): on PostgreSQL a receiver's failed
    query aborts the transaction it runs in, and the request would fail, or
    its answer be rolled back as it commits. If a receiver fails, what the
    receivers wrote for this event is undone, and the request goes on."""
    if not signal.receivers:
        return []
    aliases = [
        connection.alias
        for connection in connections.all(initialized_only=True)
        if connection.in_atomic_block
    ]
    with ExitStack() as stack:
        for alias in aliases:
            stack.enter_context(transaction.atomic(using=alias))
        answers = signal.send_robust(**kwargs)
        if any(isinstance(answer, Exception) for _, answer in answers):
            for alias in aliases:
                transaction.set_rollback(True, using=alias)
    return answers


def view_name(request: HttpRequest) -> str:
    """The view a request reached, for log lines and signals: its module and
    class (an ``@api_view`` function's name) and a ViewSet's action, or a
    plain Django view's module and name."""
    view = (getattr(request, "parser_context", None) or {}).get("view")
    if view is not None:
        kind = type(view)
        action = getattr(view, "action", None)
        return f"{kind.__module__}.{kind.__name__}" + (f".{action}" if action else "")
    match = getattr(request, "resolver_match", None)
    if match is None:
        return request.path
    func = getattr(match.func, "view_class", match.func)
    return f"{func.__module__}.{func.__qualname__}"
