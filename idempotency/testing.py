"""Tools for a project's own tests of protected views: a client that sends
keys, assertions for replays and problems, and (through the pytest plugin
``idempotency.pytest_plugin``) fixtures.

In a project whose existing tests post without a key, either send keys
(``IdempotentAPIClient`` in place of DRF's ``APIClient``), or make keys
optional for the tests that do not care (the ``idempotency_keys_optional``
fixture, or ``keys_optional()``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings as django_settings
from django.http.response import HttpResponseBase
from django.test import override_settings
from rest_framework.test import APIClient

from .conf import settings
from .options import UNSAFE_METHODS
from .problems import CONTENT_TYPE, TYPE_PREFIX
from .responses import REPLAYED_HEADER

__all__ = [
    "IdempotentAPIClient",
    "assert_problem",
    "assert_replay",
    "keys_optional",
    "keys_required",
]


class IdempotentAPIClient(APIClient):
    """DRF's ``APIClient``, sending a new key with every unsafe request
    (POST, PUT, PATCH, DELETE) unless the test passes one, and able to send
    its last unsafe request again, with the same key: :meth:`retry`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_request: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._following = False

    def generic(  # type: ignore[override]
        self,
        method: str,
        path: str,
        data: Any = "",
        content_type: str = "application/octet-stream",
        secure: bool = False,
        **extra: Any,
    ) -> Any:
        unsafe = method.upper() in UNSAFE_METHODS
        if unsafe and self._key_sent(extra) is None:
            # A redirect that repeats the request (307, 308) repeats its key,
            # as HTTP clients do.
            key = self.last_key if self._following else None
            extra["headers"] = {**(extra.get("headers") or {}), settings.HEADER: key or new_key()}
        if unsafe and not self._following:
            self.last_request = ((method, path, data, content_type, secure), dict(extra))
        return super().generic(method, path, data, content_type, secure, **extra)

    def _handle_redirects(self, *args: Any, **kwargs: Any) -> Any:
        # The requests that follow=True makes are hops of the one the test
        # sent: retry() sends that one again, not its last hop.
        self._following = True
        try:
            return super()._handle_redirects(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._following = False

    @property
    def last_key(self) -> str | None:
        """The key of the last unsafe request, if there was one."""
        if self.last_request is None:
            return None
        return self._key_sent(self.last_request[1])

    def _key_sent(self, extra: dict[str, Any]) -> str | None:
        # Headers set with credentials() go with every request too.
        return _key_of({**getattr(self, "_credentials", {}), **extra})

    def retry(self) -> Any:
        """Send the last unsafe request (POST, PUT, PATCH or DELETE) again,
        key and all, as a client that timed out would."""
        if self.last_request is None:
            raise RuntimeError(
                "retry() needs an unsafe request (POST, PUT, PATCH, DELETE) to send again."
            )
        arguments, extra = self.last_request
        return super().generic(*arguments, **extra)


def new_key() -> str:
    """A new key, as a client makes one: a random UUID."""
    return str(uuid.uuid4())


def _meta_name() -> str:
    return "HTTP_" + settings.HEADER.upper().replace("-", "_")


def _key_of(extra: dict[str, Any]) -> str | None:
    headers = {name.lower(): value for name, value in (extra.get("headers") or {}).items()}
    return headers.get(settings.HEADER.lower(), extra.get(_meta_name()))


def assert_replay(first: HttpResponseBase, second: HttpResponseBase) -> None:
    """``second`` is a faithful replay of ``first``: the same status and
    body bytes, the allow-listed headers with the same values, and marked as
    a replay (``first`` is not)."""
    assert first.get(REPLAYED_HEADER) is None, "the first response is itself a replay"
    assert second.get(REPLAYED_HEADER) == "true", "the second response is not a replay"
    assert second.status_code == first.status_code, (second.status_code, first.status_code)
    assert _body(second) == _body(first), "the replayed body differs from the first"
    for name in settings.REPLAY_HEADERS:
        assert second.get(name) == first.get(name), f"{name}: {second.get(name)!r}"


def assert_problem(response: HttpResponseBase, problem: str, status: int | None = None) -> None:
    """``response`` is the package's problem document of type ``problem``
    (such as ``"key-missing"`` or ``"key-reused"``), with ``status`` if
    given."""
    assert response.get("Content-Type") == CONTENT_TYPE, (
        f"not a problem document: {response.status_code}, {response.get('Content-Type')}"
    )
    document = json.loads(_body(response))
    assert document["type"] == TYPE_PREFIX + problem, document["type"]
    assert document["status"] == response.status_code
    if status is not None:
        assert response.status_code == status, response.status_code


def _body(response: HttpResponseBase) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)  # type: ignore[attr-defined]
    return response.content  # type: ignore[attr-defined]


@contextmanager
def keys_optional() -> Iterator[None]:
    """Within the block, views whose options do not say otherwise run
    without a key, as they would without the package (``REQUIRED`` off)."""
    with _required(False):
        yield


@contextmanager
def keys_required() -> Iterator[None]:
    """Within the block, views whose options do not say otherwise refuse a
    request without a key (``REQUIRED`` on): for a test of that ``400`` in a
    suite that :func:`keys_optional` covers."""
    with _required(True):
        yield


@contextmanager
def _required(required: bool) -> Iterator[None]:
    current = getattr(django_settings, "IDEMPOTENCY", {}) or {}
    with override_settings(IDEMPOTENCY={**current, "REQUIRED": required}):
        yield
