"""Per-view options, checked when the view is defined and merged with the
settings when a request arrives (so ``override_settings`` still applies)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .conf import BACKENDS, as_callable, as_timedelta, resolve_early, settings

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Long enough for any real TTL, short enough that now + TTL stays a datetime.
LONGEST_TTL = timedelta(days=36500)
# PostgreSQL takes LOCK_TIMEOUT as idle_in_transaction_session_timeout, an
# integer of milliseconds: at most 2**31 - 1 ms, just over 24.8 days.
LONGEST_LOCK_TIMEOUT = timedelta(days=24)
# A waiting duplicate holds a worker: minutes at most.
LONGEST_WAIT = timedelta(minutes=10)

# Where each view that chose backend="redis" is defined, so that the system
# checks can name them if IDEMPOTENCY["REDIS"] is missing.
REDIS_BACKEND_VIEWS: set[str] = set()

ScopeFunc = Callable[[Any], str]
FingerprintFunc = Callable[[Any], str]


@dataclass(frozen=True)
class Options:
    """Overrides of the ``IDEMPOTENCY`` settings for one view; ``None`` defers
    to the setting."""

    ttl: timedelta | None = None
    required: bool | None = None
    scope: ScopeFunc | str | None = None
    fingerprint: FingerprintFunc | str | None = None
    methods: frozenset[str] = UNSAFE_METHODS
    backend: str | None = None
    wait: timedelta | None = None

    @classmethod
    def build(
        cls,
        *,
        ttl: timedelta | float | None = None,
        required: bool | None = None,
        scope: ScopeFunc | str | None = None,
        fingerprint: FingerprintFunc | str | None = None,
        methods: Iterable[str] | None = None,
        backend: str | None = None,
        wait: timedelta | float | None = None,
    ) -> Options:
        """Validate options as a user wrote them; raise ``TypeError`` or
        ``ValueError`` at import time rather than on the first request."""
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, (timedelta, int, float)):
                raise TypeError("ttl must be a timedelta or a number of seconds.")
            try:
                ttl = as_timedelta(ttl)
            except (OverflowError, ValueError):  # inf, nan, beyond timedelta
                raise ValueError("ttl must be at most 100 years.") from None
            if ttl <= timedelta(0):
                raise ValueError("ttl must be positive.")
            if ttl > LONGEST_TTL:
                raise ValueError("ttl must be at most 100 years.")
        if required is not None and not isinstance(required, bool):
            raise TypeError("required must be True or False.")
        for name, value in (("scope", scope), ("fingerprint", fingerprint)):
            if value is not None and not (callable(value) or isinstance(value, str)):
                raise TypeError(f"{name} must be a callable or a dotted path to one.")
        if methods is None:
            chosen = UNSAFE_METHODS
        else:
            if isinstance(methods, str):
                raise TypeError('methods must be a list of method names, such as ["POST"].')
            chosen = frozenset(method.upper() for method in methods)
            if not chosen or not chosen <= UNSAFE_METHODS:
                raise ValueError("methods must name some of POST, PUT, PATCH and DELETE.")
        if backend is not None and backend not in BACKENDS:
            raise ValueError('backend must be "database" or "redis".')
        if wait is not None:
            wait = _wait(wait)
        return cls(
            ttl=ttl,
            required=required,
            scope=scope,
            fingerprint=fingerprint,
            methods=chosen,
            backend=backend,
            wait=wait,
        )

    def resolve(self, where: str) -> Options:
        """These options with their dotted paths imported, for the view
        ``where``: raises ``ImproperlyConfigured`` if one cannot be, when the
        view is defined rather than on every request."""
        return dataclasses.replace(
            self,
            scope=None
            if self.scope is None
            else resolve_early(self.scope, f"The scope of {where}"),
            fingerprint=(
                None
                if self.fingerprint is None
                else resolve_early(self.fingerprint, f"The fingerprint of {where}")
            ),
        )

    def get_ttl(self) -> timedelta:
        return self.ttl if self.ttl is not None else settings.TTL

    def get_required(self) -> bool:
        return self.required if self.required is not None else settings.REQUIRED

    def get_wait(self) -> timedelta:
        return self.wait if self.wait is not None else settings.WAIT

    def get_backend(self) -> str:
        return self.backend if self.backend is not None else settings.BACKEND

    def get_scope(self) -> ScopeFunc:
        if self.scope is None:
            return settings.SCOPE
        return as_callable(self.scope, "The view's scope")

    def get_fingerprint(self) -> FingerprintFunc:
        if self.fingerprint is None:
            return settings.FINGERPRINT
        return as_callable(self.fingerprint, "The view's fingerprint")


def _wait(value: timedelta | float) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, (timedelta, int, float)):
        raise TypeError("wait must be a timedelta or a number of seconds.")
    try:
        wait = as_timedelta(value)
    except (OverflowError, ValueError):  # inf, nan, beyond timedelta
        raise ValueError("wait must be at most 10 minutes.") from None
    if wait < timedelta(0):
        raise ValueError("wait must not be negative.")
    if wait > LONGEST_WAIT:
        raise ValueError("wait must be at most 10 minutes.")
    return wait
