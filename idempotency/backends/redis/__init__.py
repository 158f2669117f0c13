"""Records in Redis, through django-redis's connection.

:class:`RedisStore` (``store``) keeps the records of views that chose
``backend="redis"``, whose effects are outside the Django database. The
accelerator in front of the database store (``idempotency.accelerator``)
keeps its copies in the same format, with the same scripts:

* ``client``: the connection (django-redis's, imported and built as the
  application starts), and what an outage raises;
* ``records``: the record format and the keys records live under. Each
  record is one Redis string: a line of JSON (state, owner token,
  fingerprint, status, headers), a newline, then the response body's bytes;
* ``scripts``: the compare-and-set steps, as Lua scripts that Redis runs
  atomically, so nothing can happen between reading a record and replacing
  it. Each script touches a single key, as a Redis Cluster requires;
  ``cluster`` gives django-redis the cluster client it lacks.

Every command goes to the primary (``get_redis_connection(alias,
write=True)``): a replica may not have seen a claim yet.
"""

from __future__ import annotations

from .client import PREPARED_MODULES, Unusable, connection, errors, prepare
from .store import RedisStore

__all__ = [
    "PREPARED_MODULES",
    "RedisStore",
    "Unusable",
    "connection",
    "errors",
    "prepare",
]
