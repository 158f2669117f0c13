"""The ``IDEMPOTENCY`` settings, with their defaults, read on every access.

Nothing here is cached: reading ``django.conf.settings`` each time is what
makes ``override_settings`` work in tests (DRF issue 6030 shows the bug that
copying settings at import causes). Validation lives in ``checks.py``; these
properties only normalise values that the checks have already approved.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    "HEADER": "Idempotency-Key",
    "TTL": timedelta(hours=24),
    "LOCK_TIMEOUT": timedelta(seconds=60),
    # How long a duplicate of a request in flight waits for it to finish and
    # replays its response, before answering 409; 0 answers 409 at once.
    "WAIT": timedelta(0),
    "REQUIRED": True,
    "SCOPE": "idempotency.keys.default_scope",
    "FINGERPRINT": "idempotency.fingerprint.default_fingerprint",
    # What describes the stored representation (docs/settings.rst, "REPLAY_HEADERS").
    "REPLAY_HEADERS": (
        "Cache-Control",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Location",
        "Content-Type",
        "ETag",
        "Last-Modified",
        "Link",
        "Location",
    ),
    "STORE_SERVER_ERRORS": False,
    "MAX_RESPONSE_BYTES": 1024 * 1024,
    "DATABASE": "default",
    # Where records live unless a view says otherwise: "database" or "redis".
    "BACKEND": "database",
    # The alias of a django-redis cache in settings.CACHES. Setting it puts
    # Redis in front of the database store (REDIS_ACCELERATOR) and gives
    # views with backend="redis" their store.
    "REDIS": None,
    # True (use REDIS), False, or the alias of a cache of its own.
    "REDIS_ACCELERATOR": True,
    "REDIS_KEY_PREFIX": "idempotency",
    "REDIS_FAIL_OPEN": False,
    # How many replicas must acknowledge the Redis store's claim (Redis WAIT)
    # before its handler runs; 0 does not wait: a failover may lose a claim.
    "REDIS_REPLICAS": 0,
}

BACKENDS = ("database", "redis")

# Headers that belong to one client or one exchange. They are refused by the
# system checks and dropped again at run time, so a replay can never hand one
# client's session or credentials to another. Vary is computed again for
# each response, the replay included, by the middleware and DRF that set it.
NEVER_REPLAYED = frozenset(
    {
        "authentication-info",
        "clear-site-data",
        "proxy-authenticate",
        "proxy-authentication-info",
        "set-cookie",
        "vary",
        "www-authenticate",
        "x-csrftoken",
    }
)
# Part of what the stored body means: replayed whatever REPLAY_HEADERS says.
# The body is stored as sent, so it is still in its Content-Encoding.
ALWAYS_REPLAYED = frozenset({"content-encoding", "content-type", "location"})


def user_settings() -> dict[str, Any]:
    value = getattr(django_settings, "IDEMPOTENCY", {})
    return value if isinstance(value, dict) else {}


def as_timedelta(value: timedelta | float) -> timedelta:
    """Accept a ``timedelta`` or a number of seconds, as the settings do."""
    if isinstance(value, timedelta):
        return value
    return timedelta(seconds=value)


@lru_cache(maxsize=64)
def _import(path: str) -> Callable[..., Any]:
    return import_string(path)


def as_callable(value: str | Callable[..., Any], label: str) -> Callable[..., Any]:
    """Resolve a callable given directly or as a dotted path."""
    if callable(value):
        return value
    try:
        found = _import(value)
    except ImportError as exc:
        raise ImproperlyConfigured(f"{label} {value!r} cannot be imported: {exc}") from exc
    if not callable(found):
        raise ImproperlyConfigured(f"{label} {value!r} is not a callable.")
    return found


@dataclass(frozen=True)
class DeferredPath:
    """A view's dotted path that could not be resolved where the view was
    defined, because the module it names was still being imported."""

    label: str
    path: str


# Resolved by the system checks (idempotency.E025) and by the first request.
DEFERRED_PATHS: list[DeferredPath] = []


def resolve_early(value: str | Callable[..., Any], label: str) -> str | Callable[..., Any]:
    """Resolve a view's dotted path as the view is defined, so that a typo
    fails at import rather than on every request.

    A path into a module that is still being imported (a view naming a
    function defined further down its own module, or an import cycle) cannot
    be resolved yet: it is kept as a string, resolved on the first request,
    and checked by ``manage.py check`` once every module is loaded.
    """
    if callable(value):
        return value
    try:
        return as_callable(value, label)
    except ImproperlyConfigured as exc:
        if not _still_importing(value, exc.__cause__):
            raise
    DEFERRED_PATHS.append(DeferredPath(label, value))
    return value


def _still_importing(path: str, exc: BaseException | None) -> bool:
    names = {path.rpartition(".")[0], getattr(exc, "name", None) or ""}
    for name in names:
        module = sys.modules.get(name)
        if module is not None and getattr(module.__spec__, "_initializing", False):
            return True
    return False


class Settings:
    """Each property reads ``settings.IDEMPOTENCY`` anew."""

    def _get(self, name: str) -> Any:
        return user_settings().get(name, DEFAULTS[name])

    @property
    def HEADER(self) -> str:
        return str(self._get("HEADER"))

    @property
    def TTL(self) -> timedelta:
        return as_timedelta(self._get("TTL"))

    @property
    def LOCK_TIMEOUT(self) -> timedelta:
        return as_timedelta(self._get("LOCK_TIMEOUT"))

    @property
    def WAIT(self) -> timedelta:
        return as_timedelta(self._get("WAIT"))

    @property
    def REQUIRED(self) -> bool:
        return bool(self._get("REQUIRED"))

    @property
    def SCOPE(self) -> Callable[..., Any]:
        return as_callable(self._get("SCOPE"), "IDEMPOTENCY['SCOPE']")

    @property
    def FINGERPRINT(self) -> Callable[..., Any]:
        return as_callable(self._get("FINGERPRINT"), "IDEMPOTENCY['FINGERPRINT']")

    @property
    def REPLAY_HEADERS(self) -> frozenset[str]:
        names = {name.lower() for name in self._get("REPLAY_HEADERS")}
        return frozenset((names | ALWAYS_REPLAYED) - NEVER_REPLAYED)

    @property
    def STORE_SERVER_ERRORS(self) -> bool:
        return bool(self._get("STORE_SERVER_ERRORS"))

    @property
    def MAX_RESPONSE_BYTES(self) -> int:
        return int(self._get("MAX_RESPONSE_BYTES"))

    @property
    def DATABASE(self) -> str:
        return str(self._get("DATABASE"))

    @property
    def BACKEND(self) -> str:
        return str(self._get("BACKEND"))

    @property
    def REDIS(self) -> str | None:
        alias = self._get("REDIS")
        return None if alias is None else str(alias)

    @property
    def REDIS_ACCELERATOR(self) -> str | None:
        """The cache alias of the accelerator, or ``None`` when it is off."""
        value = self._get("REDIS_ACCELERATOR")
        if isinstance(value, str):
            return value
        return self.REDIS if value else None

    @property
    def REDIS_KEY_PREFIX(self) -> str:
        return str(self._get("REDIS_KEY_PREFIX"))

    @property
    def REDIS_FAIL_OPEN(self) -> bool:
        return bool(self._get("REDIS_FAIL_OPEN"))

    @property
    def REDIS_REPLICAS(self) -> int:
        return int(self._get("REDIS_REPLICAS"))


settings = Settings()
