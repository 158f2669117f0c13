"""The protocol that ``@idempotent`` and ``IdempotentMixin`` share: check the
key, claim it, run the handler once, store its response, replay it.

Both entry points call :func:`protect` after DRF's ``initial()`` has run, so
authentication, permissions and throttling always come before a replay.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable

from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError, transaction
from django.http import HttpResponse, UnreadablePostError
from django.http.response import HttpResponseBase
from django.utils import timezone
from rest_framework.exceptions import ParseError
from rest_framework.request import Request

from . import accelerator as accelerators
from . import problems
from .backends import redis
from .backends.base import Claim, Outcome, RequestInfo, ResponseTooLarge, StoredResponse
from .backends.database import DatabaseStore
from .conf import settings
from .keys import InvalidKey, is_missing, normalise_scope, parse_key
from .options import Options

logger = logging.getLogger("idempotency")

REPLAYED_HEADER = "Idempotent-Replayed"
_ACTIVE = "_idempotency_active"


class _RolledBack(Exception):
    """Leaves the claim's transaction by rolling it back, carrying the answer
    (the Redis store, with no transaction, catches it and stores a problem).
    ``whole``: the handler rolled its own work back, and so must any
    transaction around the claim's (ATOMIC_REQUESTS), as without the package."""

    def __init__(self, response: HttpResponseBase, whole: bool = False) -> None:
        self.response = response
        self.whole = whole


def protect(
    request: Request, call: Callable[[], HttpResponseBase], options: Options
) -> HttpResponseBase:
    """Answer ``request``, running ``call`` at most once per key."""
    if request.method not in options.methods or getattr(request, _ACTIVE, False):
        return call()
    raw_key = request.headers.get(settings.HEADER)
    if raw_key is None:
        return problems.KEY_MISSING.response() if options.get_required() else call()
    try:
        key = parse_key(raw_key)
    except InvalidKey as exc:
        return problems.KEY_MALFORMED.response(reason=exc.reason)
    if not _content_length_is_a_number(request):
        # Django cannot read such a body at all (DRF alone would read it as
        # empty): the client must fix its framing, and nothing is claimed.
        return problems.BODY_MALFORMED.response(reason="Content-Length is not a number.")
    try:
        fingerprint = _fingerprint(request, options)
    except RequestDataTooBig:
        return problems.BODY_TOO_LARGE.response()
    except ParseError as exc:
        # DRF could not parse the body (it wraps multipart errors this way).
        return problems.BODY_MALFORMED.response(reason=str(exc.detail))
    except (SuspiciousOperation, UnreadablePostError) as exc:
        # Too many fields or files, or a client that hung up mid-body: the
        # client's fault, and nothing is claimed yet.
        return problems.BODY_MALFORMED.response(reason=str(exc) or type(exc).__name__)
    scope = options.get_scope()(request)
    if is_missing(scope):
        # Never a scope of its own: every client it was returned for would
        # share it, and receive each other's responses.
        logger.warning(
            "The scope of %s returned %r for %s %s, which identifies no client; answered 400. "
            "Return a value that tells clients apart, such as their session key once they "
            "have a session.",
            view_name(request),
            scope,
            request.method,
            request.path,
        )
        return problems.SCOPE_MISSING.response()
    try:
        scope = normalise_scope(scope)
    except TypeError as exc:
        raise ImproperlyConfigured(f"The scope of {view_name(request)} is wrong: {exc}") from None
    setattr(request, _ACTIVE, True)
    info = RequestInfo(
        scope=scope,
        key=key,
        fingerprint=fingerprint,
        method=request.method,
        path=request.get_full_path(),
        now=timezone.now(),
    )
    if options.get_backend() == "redis":
        return _protect_in_redis(request, call, options, info)
    return _protect_in_database(request, call, options, info)


def _protect_in_database(
    request: Request, call: Callable[[], HttpResponseBase], options: Options, info: RequestInfo
) -> HttpResponseBase:
    """The handler runs in the claim's transaction: its effects and its
    stored response commit together or not at all (CONTRACT G2)."""
    alias = settings.DATABASE
    accelerator = accelerators.for_database(alias)
    marker = None
    if accelerator is not None:
        # Before anything touches the database: a replay from Redis needs no
        # connection at all.
        known, marker = accelerator.lookup(info, settings.LOCK_TIMEOUT)
        if known is not None:
            return _answer(known, info)
    flight = accelerators.Flight(accelerator, info, alias, marker)
    store: DatabaseStore | None = None
    session = None
    committing = False
    try:
        # Even building the store may ask the server (MySQL or MariaDB?).
        store = DatabaseStore(alias)
        session = store.session()
        with store.atomic():
            claim = store.claim(info, settings.LOCK_TIMEOUT)
            if claim.outcome is Outcome.CLAIMED:
                response = _execute(request, call, options, store, claim, flight)
            committing = True
    except _RolledBack as rolled_back:
        if rolled_back.whole and store is not None and store.connection.in_atomic_block:
            transaction.set_rollback(True, using=alias)
        return rolled_back.response
    except DatabaseError as exc:
        # Whatever the error's class (PostgreSQL reports a session ended for
        # idling as an InternalError), what matters is whether the session
        # survived it. If the database refused the connection, restarted or
        # ended this session, whatever the handler did either committed with
        # its stored response or vanished with the claim: a retry is safe.
        # Errors on a live connection stay the 500 they are, but one: the
        # commit of the claim's own transaction lost to a concurrent one
        # (SERIALIZABLE), which rolled everything back.
        if store is not None and store.session_alive(session):
            if committing and store.conflict(exc):
                return _conflict(request)
            raise
        logger.warning(
            "Database session lost during %s %s; answered 503.",
            request.method,
            request.path,
            exc_info=True,
        )
        return problems.DATABASE_UNAVAILABLE.response()
    finally:
        flight.end()
    if claim.outcome is Outcome.CLAIMED:
        return response
    if claim.outcome is Outcome.COMPLETED:
        flight.replayed(claim)
    return _answer(claim, info)


def _conflict(request: Request) -> HttpResponseBase:
    logger.info(
        "%s %s conflicted with a concurrent transaction and was rolled back; answered 409.",
        request.method,
        request.path,
        exc_info=True,
    )
    return problems.TRANSACTION_CONFLICT.response()


def _execute(
    request: Request,
    call: Callable[[], HttpResponseBase],
    options: Options,
    store: DatabaseStore,
    claim: Claim,
    flight: accelerators.Flight,
) -> HttpResponseBase:
    """Run the handler inside the claim's transaction and store its response.

    An exception from the handler leaves the ``atomic`` block, which rolls
    back its effects and the claim together; DRF then turns it into a
    response, and the key is free for a corrected retry.
    """
    response, stored = _capture(request, call)
    if store.rolled_back():
        # The handler rolled its own work back (transaction.set_rollback(),
        # or a database error it caught without a savepoint): its effects go
        # with the claim, nothing is stored, and the client gets the
        # handler's own answer, as it would without the decorator.
        raise _RolledBack(response, whole=True)
    if stored is None:
        # Transient outcomes: undo the effects and leave the key free.
        transaction.set_rollback(True, using=store.alias)
        return response
    try:
        expires_at = store.complete(claim, stored, options.get_ttl())
    except ResponseTooLarge:
        raise _RolledBack(problems.RESPONSE_TOO_LARGE.response()) from None
    except DatabaseError as exc:
        if not store.conflict(exc):
            raise
        raise _RolledBack(_conflict(request)) from None
    if expires_at is None:
        raise _RolledBack(problems.IN_FLIGHT.response())
    flight.succeed(claim, stored, expires_at)
    return response


def _protect_in_redis(
    request: Request, call: Callable[[], HttpResponseBase], options: Options, info: RequestInfo
) -> HttpResponseBase:
    """The record lives in Redis and the handler's effects elsewhere: no
    transaction joins them, so the handler runs once per key for as long as
    its lease (``LOCK_TIMEOUT``) and Redis's data last."""
    redis_errors = redis.errors()
    try:
        store = redis.RedisStore(settings.REDIS)
        claim = store.claim(info, settings.LOCK_TIMEOUT)
    except redis_errors:
        if settings.REDIS_FAIL_OPEN:
            logger.warning(
                "Redis unavailable during %s %s; ran the handler unprotected "
                "(IDEMPOTENCY['REDIS_FAIL_OPEN']).",
                request.method,
                request.path,
                exc_info=True,
            )
            return call()
        logger.warning(
            "Redis unavailable during %s %s; answered 503.",
            request.method,
            request.path,
            exc_info=True,
        )
        return problems.REDIS_UNAVAILABLE.response()
    if claim.outcome is not Outcome.CLAIMED:
        return _answer(claim, info)
    try:
        response, stored = _capture(request, call)
    except _RolledBack:
        # The response was too large to store, but nothing rolls back here:
        # the handler's effects stand. Store a problem in its place, so that
        # a retry gets it too instead of running the handler again.
        response = problems.RESPONSE_NOT_STORED.response()
        stored = StoredResponse(
            status=response.status_code, headers=list(response.items()), body=response.content
        )
    except BaseException:
        _release(store, claim, request)
        raise
    if stored is None:
        _release(store, claim, request)
        return response
    try:
        kept = store.complete(claim, stored, options.get_ttl())
    except redis_errors:
        logger.error(
            "Redis unavailable while storing the response of %s %s: the handler ran but its "
            "response may not be stored; if not, the key is free again once its lease "
            "(LOCK_TIMEOUT) expires.",
            request.method,
            request.path,
            exc_info=True,
        )
        return response
    if kept is not redis.Completion.STORED:
        level, what = LATE_COMPLETIONS[kept]
        logger.log(
            level,
            "%s %s outlived its lease (LOCK_TIMEOUT) %s. Raise LOCK_TIMEOUT above the slowest "
            "handler of backend='redis' views.",
            request.method,
            request.path,
            what,
        )
    return response


# What a Redis-store request that outlived its lease logs, by what it found.
LATE_COMPLETIONS = {
    redis.Completion.STORED_LATE: (
        logging.WARNING,
        "but no other request holds its key now, so its response was stored (had another "
        "claimed the key meanwhile and failed, the handler ran twice)",
    ),
    redis.Completion.TAKEN_OVER: (
        logging.ERROR,
        "and another request has claimed its key since: the handler may run twice, and this "
        "response is not stored",
    ),
    redis.Completion.REDONE: (
        logging.ERROR,
        "and another request has run the handler again and stored its response since: the "
        "handler ran twice, and this response is not stored",
    ),
}


def _release(store: redis.RedisStore, claim: Claim, request: Request) -> None:
    """Free the key after an exception or a transient answer, so that a
    corrected retry may use it. If Redis is gone, the lease expires anyway."""
    try:
        store.release(claim)
    except redis.errors():
        logger.warning(
            "Redis unavailable while releasing the key of %s %s; it is free again once its "
            "lease (LOCK_TIMEOUT) expires.",
            request.method,
            request.path,
            exc_info=True,
        )


def _capture(
    request: Request, call: Callable[[], HttpResponseBase]
) -> tuple[HttpResponseBase, StoredResponse | None]:
    """Run the handler and read its response as it will be stored, or
    ``None`` for a transient outcome (429, 5xx) that must not be."""
    response = _render(request, call())
    status = response.status_code
    transient = status == 429 or (status >= 500 and not settings.STORE_SERVER_ERRORS)
    # Drained here even when it will not be stored, so that a streaming
    # handler's work happens inside the database store's transaction, which
    # may roll it back (raises _RolledBack past MAX_RESPONSE_BYTES, a limit
    # for what is stored: a transient answer is not).
    body = _read_body(response, None if transient else settings.MAX_RESPONSE_BYTES)
    if transient:
        return response, None
    replay_headers = settings.REPLAY_HEADERS
    stored = StoredResponse(
        status=status,
        headers=[
            (name, value) for name, value in response.items() if name.lower() in replay_headers
        ],
        body=body,
    )
    return response, stored


def _answer(claim: Claim, info: RequestInfo) -> HttpResponseBase:
    """The answer to a request whose key another request holds or used."""
    if claim.outcome is Outcome.IN_FLIGHT:
        return problems.IN_FLIGHT.response()
    if claim.fingerprint != info.fingerprint:
        return problems.KEY_REUSED.response()
    assert claim.response is not None
    return replay(claim.response)


def _render(request: Request, response: HttpResponseBase) -> HttpResponseBase:
    """Render a DRF ``Response`` now, exactly as DRF would, so that the bytes
    stored are the bytes sent (G3). DRF finalizes it again afterwards, which
    changes nothing once it is rendered."""
    render = getattr(response, "render", None)
    if render is None or getattr(response, "is_rendered", True):
        return response
    view = (request.parser_context or {}).get("view")
    if view is None:
        raise TypeError(
            "@idempotent protects handlers of Django REST framework views; this request "
            "was not dispatched by an APIView."
        )
    response = view.finalize_response(request, response, *view.args, **view.kwargs)
    response.render()  # type: ignore[attr-defined]
    return response


def _read_body(response: HttpResponseBase, limit: int | None) -> bytes:
    """The response's body, read up to ``limit`` bytes.

    A stream is drained into memory and handed back to the same response, so
    the client still gets it streamed, and an asynchronous stream (server-sent
    events, an export) stays asynchronous for the server that serves it. Its
    ``close()`` must not be called here: that sends ``request_finished``,
    whose handler closes the database connection in the middle of this
    transaction. The server closes the response at the end of the request,
    as always.
    """
    if not response.streaming:
        body: bytes = response.content  # type: ignore[attr-defined]
        if limit is not None and len(body) > limit:
            raise _RolledBack(problems.RESPONSE_TOO_LARGE.response())
        return body
    if response.is_async:  # type: ignore[attr-defined]
        # Handlers run in a thread of their own under ASGI too, so the
        # iterator is drained on the server's event loop from here.
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
            raise _RolledBack(problems.RESPONSE_TOO_LARGE.response())
        self.chunks.append(bytes(chunk))

    def body(self) -> bytes:
        return b"".join(self.chunks)


def replay(stored: StoredResponse) -> HttpResponse:
    """Rebuild a stored response: same status, body bytes and allow-listed
    headers, marked as a replay."""
    response = HttpResponse(stored.body, status=stored.status)
    del response["Content-Type"]  # only the stored one, if any (a 204 has none)
    for name, value in stored.headers:
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return response


def view_name(request: Request) -> str:
    """The view a request reached, for log lines: its module and class (an
    ``@api_view`` function's name), and a ViewSet's action."""
    view = (getattr(request, "parser_context", None) or {}).get("view")
    if view is None:
        return request.path
    kind = type(view)
    action = getattr(view, "action", None)
    return f"{kind.__module__}.{kind.__name__}" + (f".{action}" if action else "")


def _content_length_is_a_number(request: Request) -> bool:
    try:
        int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False
    return True


def _fingerprint(request: Request, options: Options) -> str:
    """The stored fingerprint: the view's, bound to the method and path, so
    that even a custom fingerprint callable cannot make a key used on another
    endpoint replay this one's response (G4)."""
    value = options.get_fingerprint()(request)
    bound = f"{request.method}\n{request.path}\n{value}"
    return hashlib.sha256(bound.encode()).hexdigest()
