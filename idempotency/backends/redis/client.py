"""The Redis connection this package uses: django-redis's client, imported
and built as the application starts."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from django.core.cache import InvalidCacheBackendError
from django.core.exceptions import ImproperlyConfigured

from ...conf import settings

logger = logging.getLogger("idempotency")


class Unusable(Exception):
    """The cache gives no Redis connection this package can use."""


def connection(alias: str | None) -> Any:
    """The raw client of the django-redis cache ``alias`` (the primary).

    Raises :class:`Unusable` if the cache's configuration gives none, which
    callers treat as an outage: the system checks report the configuration,
    and requests must not fail for it where the database can answer. A
    module that cannot be imported is no outage, and no retry will cure it:
    ``ImproperlyConfigured``, a 500.
    """
    if alias is None:
        raise ImproperlyConfigured(
            'A view uses backend="redis" but IDEMPOTENCY["REDIS"] names no django-redis '
            "cache. `manage.py check` reports this as idempotency.E021."
        )
    try:
        from django_redis import get_redis_connection

        client = get_redis_connection(alias, write=True)
        decodes = client.get_connection_kwargs().get("decode_responses")
    except (ImportError, InvalidCacheBackendError) as exc:
        # A module that cannot be imported (django-redis missing, a typo in
        # the cache's BACKEND or CLIENT_CLASS): no outage, and no retry will
        # cure it.
        raise ImproperlyConfigured(
            f"The {alias!r} cache cannot be used: {exc}. `manage.py check` reports this "
            "(idempotency.E018, E019, E024)."
        ) from exc
    except Exception as exc:
        # Whatever django-redis or a custom client class raises for its
        # configuration (the checks report it as E024).
        # The message itself: some exceptions' repr hides it (redis-py's
        # cluster errors).
        raise Unusable(
            f"the {alias!r} cache gives no Redis connection: {type(exc).__name__}: {exc}"
        ) from exc
    if decodes:
        # Records hold response bodies as bytes; decoded, they would not
        # parse, and a binary body could not be read back at all.
        raise Unusable(f"the {alias!r} cache decodes responses (decode_responses=True)")
    return client


def errors() -> tuple[type[Exception], ...]:
    """What a lost, refusing or unusable Redis raises: connection refused or
    reset, timeouts, a read-only replica, a script error, and a Redis
    Cluster's own (no node reachable, a slot no master holds), which redis-py
    does not derive from ``RedisError``. Imported late so that the package
    works without redis-py until Redis is configured."""
    try:
        from redis.exceptions import RedisClusterException, RedisError
    except ImportError:
        return (Unusable,)
    return (RedisError, RedisClusterException, Unusable)


# What a request enters redis-py and django-redis by: imported by prepare().
PREPARED_MODULES = ("redis", "redis.exceptions", "redis.connection", "django_redis")


def prepare() -> None:
    """Import redis-py and django-redis, and build the client of each cache
    that ``IDEMPOTENCY`` names, as the application starts (``ready()``).

    Left to the requests, the imports would run in a worker's first requests,
    several threads at once, each entering redis-py by another module
    (``redis.exceptions`` here, ``redis.connection`` through django-redis):
    Python's per-module import locks then gave one a ``_DeadlockError`` (a
    500) and another a partially initialized module (a false outage).
    Building a client and its pool connects to nothing, so this works with
    Redis down. Nothing here may fail the start-up: a configuration it cannot
    build is logged, reported by the system checks, and met again by requests.
    """
    aliases = sorted(alias for alias in {settings.REDIS, settings.REDIS_ACCELERATOR} if alias)
    if not aliases:
        return
    try:
        for module in PREPARED_MODULES:
            importlib.import_module(module)
        for alias in aliases:
            connection(alias)
    except Exception as exc:
        logger.warning("The Redis caches %s could not be prepared at start-up: %r", aliases, exc)
