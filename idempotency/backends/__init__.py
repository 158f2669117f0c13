"""Where idempotency records live.

Each store implements :class:`~idempotency.backends.base.Store` in a package
of its own: ``database`` (the default, and the source of truth: records
commit with the handler's effects) and ``redis`` (records in Redis only, for
handlers whose effects are elsewhere). The Redis accelerator
(``idempotency.accelerator``) wraps the database store.
"""

from __future__ import annotations

from ..conf import settings
from .base import Store


def open_store(backend: str) -> Store:
    """The store of one request to a view whose backend is ``backend``.

    Imported here, per call, rather than at the top: the stores import the
    models, which must not load before the app registry does."""
    if backend == "redis":
        from .redis import RedisStore

        return RedisStore(settings.REDIS)
    from ..accelerator import accelerate

    return accelerate(settings.DATABASE)
