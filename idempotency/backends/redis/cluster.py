"""A django-redis client for Redis Cluster.

django-redis has no cluster client: its ``DefaultClient`` talks to one
server (and its replicas). :class:`ClusterClient` is that client with a
``redis.cluster.RedisCluster`` as its connection, so that a cache configured
with it serves Django's cache API and gives this package, through
``django_redis.get_redis_connection(alias, write=True)``, a client that
routes each key to the master that holds its slot::

    CACHES = {
        "idempotency": {
            "BACKEND": "django_redis.cache.RedisCache",
            # Any of the cluster's nodes; the others are discovered.
            "LOCATION": ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"],
            "OPTIONS": {
                "CLIENT_CLASS": "idempotency.backends.redis.cluster.ClusterClient",
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
            },
        }
    }

What the package sends fits a cluster as it is: each script names one key
(and publishes on a channel of that key's name), and the accelerator's batch
``DEL`` is split by slot by ``RedisCluster.delete``; ``SCAN`` visits every
master.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django_redis.client import DefaultClient
from redis.cluster import ClusterNode, RedisCluster

# One cluster client per process and configuration, shared by the threads:
# Django gives each thread a cache client of its own, and each RedisCluster
# asks the cluster for its slot map and keeps a pool per node.
_clusters: dict[str, RedisCluster] = {}


class ClusterClient(DefaultClient):
    """``DefaultClient`` whose connection is a ``RedisCluster`` built from
    ``LOCATION`` (one node's URL, a comma-separated list or a list: where to
    discover the cluster from) and the usual ``OPTIONS``: ``PASSWORD``,
    ``USERNAME``, ``SOCKET_TIMEOUT``, ``SOCKET_CONNECT_TIMEOUT``,
    ``CONNECTION_POOL_KWARGS`` (each node's pool, e.g. ``max_connections``)
    and ``REDIS_CLIENT_KWARGS`` (``RedisCluster``'s own, e.g.
    ``require_full_coverage``)."""

    def get_next_client_index(self, write: bool = True, tried: list[int] | None = None) -> int:
        # One client for every node: it sends each command to the master of
        # its key's slot, and never reads from a replica.
        return 0

    def connect(self, index: int = 0) -> RedisCluster:
        """The process's client of this cluster; building it asks a node for
        the slot map, so it raises (``RedisClusterException``) if none of
        ``LOCATION``'s nodes answers."""
        identity = repr((self._server, sorted(self._options.items(), key=str)))
        cluster = _clusters.get(identity)
        if cluster is not None:
            return cluster
        # No lock around the build: while the cluster does not answer, each
        # thread's attempt takes its own socket timeouts, not the sum of
        # those of every thread queued before it. Threads that build at once
        # all keep the first client stored (setdefault is atomic); the
        # others' connections close as they are collected.
        return _clusters.setdefault(identity, self._build())

    def _build(self) -> RedisCluster:
        first, *others = self._server
        params = self.connection_factory.make_connection_params(first)
        # The URL is given to RedisCluster itself, and the parser is its own.
        for name in ("url", "parser_class"):
            params.pop(name)
        return RedisCluster(
            url=first,
            startup_nodes=[_node(location) for location in others],
            **params,
            **self._options.get("CONNECTION_POOL_KWARGS", {}),
            **self._options.get("REDIS_CLIENT_KWARGS", {}),
        )

    def disconnect(self, index: int = 0, client: Any = None) -> None:
        """Close every node's connections (``CLOSE_CONNECTION``): a cluster
        has no single pool."""
        client = client or self._clients[index]
        if client is not None:
            client.disconnect_connection_pools()

    def get_many(
        self, keys: Any, version: int | None = None, client: Any = None
    ) -> dict[str, Any]:
        """``MGET`` names keys of one slot only: ask each slot's master."""
        client = client or self.get_client(write=False)
        names = {self.make_key(key, version=version): key for key in keys}
        values = client.mget_nonatomic(list(names)) if names else []
        return {
            names[name]: self.decode(value)
            for name, value in zip(names, values, strict=True)
            if value is not None
        }


def _node(location: str) -> ClusterNode:
    parts = urlsplit(location)
    return ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379)  # type: ignore[no-untyped-call]
