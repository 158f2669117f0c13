"""Responses as the stores keep them: captured once the handler returns,
rebuilt byte for byte for every replay."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from functools import cached_property
from typing import Any

from asgiref.sync import async_to_sync
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from rest_framework.response import Response

from .backends.base import StoredResponse
from .conf import settings

REPLAYED_HEADER = "Idempotent-Replayed"


class TooLarge(Exception):
    """The response's body is over ``MAX_RESPONSE_BYTES``."""


def capture(
    request: HttpRequest, call: Callable[[], HttpResponseBase]
) -> tuple[HttpResponseBase, StoredResponse | None]:
    """Run the handler and read its response as it will be stored, or
    ``None`` for a transient outcome (429, 5xx) that must not be.

    Raises :class:`TooLarge` past ``MAX_RESPONSE_BYTES``, a limit for what
    is stored: a transient answer has none."""
    response = render(request, call())
    status = response.status_code
    transient = status == 429 or (status >= 500 and not settings.STORE_SERVER_ERRORS)
    # Drained here even when it will not be stored, so that a streaming
    # handler's work happens inside the database store's transaction, which
    # may roll it back.
    body = read_body(response, None if transient else settings.MAX_RESPONSE_BYTES)
    if transient:
        return response, None
    return response, keepable(response, body)


def keepable(response: HttpResponseBase, body: bytes) -> StoredResponse:
    """What a store keeps of ``response``: its status, its allow-listed
    headers and ``body``."""
    replay_headers = settings.REPLAY_HEADERS
    return StoredResponse(
        status=response.status_code,
        headers=[
            (name, value) for name, value in response.items() if name.lower() in replay_headers
        ],
        body=body,
    )


def render(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """Render a response that is rendered late (a DRF ``Response``, a
    ``TemplateResponse``) now, exactly as its view would, so that the bytes
    stored are the bytes sent. Django and DRF render it again afterwards,
    which changes nothing once it is rendered."""
    if getattr(response, "is_rendered", True) or not hasattr(response, "render"):
        return response
    view = (getattr(request, "parser_context", None) or {}).get("view")
    if view is not None:
        # DRF's own headers (Allow, Vary) come with finalizing.
        response = view.finalize_response(request, response, *view.args, **view.kwargs)
    elif isinstance(response, Response):
        raise TypeError(
            "A handler protected by @idempotent returned a DRF Response, which only a "
            "Django REST framework view can render. Return a Django HttpResponse (or "
            "JsonResponse) from a plain Django view."
        )
    response.render()
    return response


def read_body(response: HttpResponseBase, limit: int | None) -> bytes:
    """The response's body, read up to ``limit`` bytes.

    A stream is drained into memory and handed back to the same response, so
    the client gets it all once it has ended, and an asynchronous stream
    stays asynchronous for the server that serves it. Its ``close()`` must
    not be called here: that sends ``request_finished``, whose handler closes
    the database connection in the middle of the claim's transaction. The
    server closes the response at the end of the request, as always.
    """
    if not response.streaming:
        body: bytes = response.content  # type: ignore[attr-defined]
        if limit is not None and len(body) > limit:
            raise TooLarge
        return body
    if response.is_async:  # type: ignore[attr-defined]
        # The protocol runs in a thread of its own, even for async handlers,
        # so the iterator is drained on the server's event loop from here.
        body = async_to_sync(_drain_async)(response.streaming_content, limit)  # type: ignore[attr-defined]
        response.streaming_content = _replay_async(body)  # type: ignore[attr-defined]
        return body
    body = _drain(response.streaming_content, limit)  # type: ignore[attr-defined]
    response.streaming_content = [body]  # type: ignore[attr-defined]
    return body


def _drain(chunks: Iterable[bytes], limit: int | None) -> bytes:
    read = _Read(limit)
    for chunk in chunks:
        read.add(chunk)
    return read.body()


async def _drain_async(chunks: AsyncIterable[bytes], limit: int | None) -> bytes:
    read = _Read(limit)
    async for chunk in chunks:
        read.add(chunk)
    return read.body()


async def _replay_async(body: bytes) -> AsyncIterator[bytes]:
    yield body


class _Read:
    """A stream's chunks, refused past ``limit`` bytes if there is one."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            raise TooLarge
        self.chunks.append(bytes(chunk))

    def body(self) -> bytes:
        return b"".join(self.chunks)


class ReplayedResponse(HttpResponse):
    """A stored response, sent again."""

    @cached_property
    def data(self) -> Any:
        """The body decoded, if it is JSON, as DRF's tests read the first
        response's ``response.data``; else ``None``."""
        content_type = self.get("Content-Type", "").split(";")[0].strip()
        if content_type != "application/json" and not content_type.endswith("+json"):
            return None
        return json.loads(self.content)


def replay(stored: StoredResponse) -> HttpResponse:
    """Rebuild a stored response: same status, body bytes and allow-listed
    headers, marked as a replay."""
    response = ReplayedResponse(stored.body, status=stored.status)
    del response["Content-Type"]  # only the stored one, if any (a 204 has none)
    for name, value in stored.headers:
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return response
