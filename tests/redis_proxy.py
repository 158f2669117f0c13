"""A TCP relay between the tests and the real Redis, which a test can cut,
and the cache settings the Redis tests share.

Cutting it closes every relayed connection and stops listening, so the
package's next Redis command meets what it would meet if Redis stopped or
the network failed: a connection reset, then connection refused. Nothing of
Redis or redis-py is replaced.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from urllib.parse import urlsplit


def caches_with(alias: str, location: str, **options: object) -> dict:
    """``settings.CACHES`` plus a django-redis cache ``alias`` at ``location``
    (with the test settings' socket timeouts unless ``options`` are given)."""
    from django.conf import settings

    return {
        **settings.CACHES,
        alias: {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": location,
            "OPTIONS": options or settings.REDIS_OPTIONS,
        },
    }


def other_database(url: str, number: int) -> str:
    """``url`` with another Redis database number: django-redis keeps one
    connection pool per URL, so a cache with other options needs its own."""
    return f"{url.rsplit('/', 1)[0]}/{number}"


class RedisProxy:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.database = (parts.path or "/0").lstrip("/") or "0"
        self.port = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.stalled = False
        # Seconds each of Redis's replies is held before it is passed on: a
        # slow Redis, or a slow network.
        self.delay = 0.0
        self.restore()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.database}"

    def restore(self) -> None:
        """Listen (again, on the same port) and relay new connections."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stall(self) -> None:
        """Keep every connection open but pass nothing on, as a Redis that
        hangs would: the client's socket timeout decides."""
        self.stalled = True

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        if listener is not None:
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            server = socket.create_connection(self.target)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    if self.stalled:
                        continue
                    if self.delay and key.fileobj is server:
                        time.sleep(self.delay)
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            for sock in (client, server):
                sock.close()
