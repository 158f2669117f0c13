"""The one protocol every protected request runs, whatever its view and its
store: prepare (key, body, fingerprint, scope), claim, run the handler once,
store its response or release the key, answer.

``@idempotent`` and ``IdempotentMixin`` call :func:`protect` (or
:func:`aprotect` for ``async def`` handlers) once the view's own checks have
run: DRF's ``initial()`` (authentication, permissions, throttling), or the
decorators above ``@idempotent`` on a plain Django view. Stores are reached
through the :class:`~idempotency.backends.base.Store` interface only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, sync_to_async
from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig, SuspiciousOperation
from django.dispatch import Signal
from django.http import HttpRequest, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.http.request import RawPostDataException
from django.http.response import HttpResponseBase
from django.utils import timezone
from rest_framework.exceptions import ParseError

from . import context, events, problems, signals
from .backends import open_store
from .backends.base import Claim, Completion, Failure, Outcome, RequestInfo, Store
from .conf import settings
from .events import view_name
from .keys import InvalidKey, is_missing, normalise_scope, parse_key
from .options import Options
from .responses import REPLAYED_HEADER, TooLarge, capture, keepable, replay

__all__ = ["REPLAYED_HEADER", "aprotect", "protect", "replay", "view_name"]

logger = logging.getLogger("idempotency")

_ACTIVE = "_idempotency_active"


class _RolledBack(Exception):
    """Leaves the unit of work by undoing it, carrying the answer."""

    def __init__(self, response: HttpResponseBase) -> None:
        self.response = response


def protect(
    request: HttpRequest, call: Callable[[], HttpResponseBase], options: Options
) -> HttpResponseBase:
    """Answer ``request``, running ``call`` at most once per key."""
    if not _applies(request, options):
        return call()
    prepared = prepare(request, options)
    if prepared is None:
        return call()
    if isinstance(prepared, HttpResponseBase):
        return prepared
    setattr(request, _ACTIVE, True)
    context.attach(request, context.Idempotency(key=prepared.key, scope=prepared.scope))
    return run(open_store(options.get_backend()), request, call, options, prepared)


async def aprotect(
    request: HttpRequest, call: Callable[[], Awaitable[HttpResponseBase]], options: Options
) -> HttpResponseBase:
    """:func:`protect` for an ``async def`` handler.

    Django's transactions do not span ``await``: so the protocol runs as it
    does for a sync handler, in a worker thread (Django's, for this request)
    that holds the claim's transaction, while the handler runs on the event
    loop. The database work the handler awaits through Django's async ORM or
    ``sync_to_async`` comes back to that thread, inside the transaction, so
    its effects and its stored response commit together or not at all, as
    for a sync handler. The event loop never waits for the database or Redis.
    """
    if not _applies(request, options):
        return await call()

    async def handler() -> HttpResponseBase:
        return await call()

    protected = asyncio.ensure_future(
        sync_to_async(protect)(request, async_to_sync(handler), options)
    )
    try:
        return await asyncio.shield(protected)
    except asyncio.CancelledError:
        # The client hung up, and Django cancels an async view when it does.
        # A sync view's thread runs to its end all the same, and so must
        # this one: cancelled midway, the handler's effects outside the
        # database (a provider's charge) would stand while its claim was
        # undone, and the client's retry would run it again. Run to the
        # end, store the response for that retry, then let the
        # cancellation go on.
        await _finish(protected)
        raise


async def _finish(task: asyncio.Future[HttpResponseBase]) -> None:
    """Wait for ``task`` to end, whatever cancels the waiting meanwhile. Its
    error, if any, goes on: Django logs it as any view's."""
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([task])
    task.result()


def guard(
    handler: Callable[..., Any],
    find_request: Callable[[tuple[Any, ...]], HttpRequest],
    options: Options,
) -> Callable[..., Any]:
    """``handler``, answering through :func:`protect`, or :func:`aprotect`
    if it is a coroutine function (it stays one: adrf and Django await it
    only then). ``find_request`` picks the request out of its arguments.
    What ``@idempotent`` and ``IdempotentMixin`` put in a handler's place."""
    if iscoroutinefunction(handler):

        async def protected_async(*args: Any, **kwargs: Any) -> Any:
            return await aprotect(find_request(args), lambda: handler(*args, **kwargs), options)

        return protected_async

    def protected(*args: Any, **kwargs: Any) -> Any:
        return protect(find_request(args), lambda: handler(*args, **kwargs), options)

    return protected


def _applies(request: HttpRequest, options: Options) -> bool:
    return request.method in options.methods and not getattr(request, _ACTIVE, False)


def prepare(request: HttpRequest, options: Options) -> RequestInfo | HttpResponseBase | None:
    """What a store needs to claim the request's key; a problem the client
    must fix, answered before anything is claimed; or ``None`` if the request
    has no key and the view does not require one."""
    raw_key = request.headers.get(settings.HEADER)
    if raw_key is None:
        if not options.get_required():
            return None
        return _refused(request, problems.KEY_MISSING.response(), key=None, scope=None)
    try:
        key = parse_key(raw_key)
    except InvalidKey as exc:
        return _refused(
            request, problems.KEY_MALFORMED.response(reason=exc.reason), key=None, scope=None
        )
    if not _content_length_is_a_number(request):
        # Django cannot read such a body at all (DRF alone would read it as
        # empty): the client must fix its framing, and nothing is claimed.
        response = problems.BODY_MALFORMED.response(reason="Content-Length is not a number.")
        return _refused(request, response, key=key, scope=None)
    fingerprint = _fingerprint_or_problem(request, options)
    if not isinstance(fingerprint, str):
        return _refused(request, fingerprint, key=key, scope=None)
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
        return _refused(request, problems.SCOPE_MISSING.response(), key=key, scope=None)
    try:
        scope = normalise_scope(scope)
    except TypeError as exc:
        raise ImproperlyConfigured(f"The scope of {view_name(request)} is wrong: {exc}") from None
    return RequestInfo(
        scope=scope,
        key=key,
        fingerprint=fingerprint,
        method=request.method or "",
        path=request.get_full_path(),
        now=timezone.now(),
    )


def _refused(
    request: HttpRequest, response: HttpResponseBase, *, key: str | None, scope: str | None
) -> HttpResponseBase:
    events.announce(
        signals.key_refused,
        request,
        scope=scope,
        key=key,
        status=response.status_code,
        store=None,
    )
    return response


def run(
    store: Store,
    request: HttpRequest,
    call: Callable[[], HttpResponseBase],
    options: Options,
    info: RequestInfo,
) -> HttpResponseBase:
    """Claim the key in ``store``, and run the handler if the claim is ours."""
    storing = False
    claim: Claim | None = None
    completion: Completion | None = None
    try:
        wait = options.get_wait()
        known = store.lookup(info)
        if known is not None and not (wait and known.outcome is Outcome.IN_FLIGHT):
            return _answer(known, info, request, store)
        with store.unit():
            claim = store.claim(info, settings.LOCK_TIMEOUT)
            if wait and claim.outcome is Outcome.IN_FLIGHT:
                # A duplicate of a request in flight: wait for its answer
                # (or, if it fails, for the key) rather than 409 at once.
                claim = store.wait(info, settings.LOCK_TIMEOUT, wait)
            if claim.outcome is Outcome.CLAIMED:
                _announce(signals.claimed, request, info, store, None)
                response, completion = _execute(store, request, call, options, info, claim)
            storing = True
    except _RolledBack as rolled_back:
        return rolled_back.response
    except Exception as exc:
        # Whatever the error's class, what matters is what the store makes
        # of it. If the store was lost, whatever the handler did either
        # committed with its stored response or vanished with the claim (or,
        # with Redis, no claim was made): a retry is safe.
        failure = store.failure(exc, storing)
        if failure is Failure.CONFLICT:
            return _conflict(request, info, store)
        if failure is not Failure.UNAVAILABLE:
            raise
        if claim is None and store.fail_open:
            logger.warning(
                "%s during %s %s; ran the handler unprotected (IDEMPOTENCY['REDIS_FAIL_OPEN']).",
                store.outage,
                request.method,
                request.path,
                exc_info=True,
            )
            return call()
        logger.warning(
            "%s during %s %s; answered 503.",
            store.outage,
            request.method,
            request.path,
            exc_info=True,
        )
        return store.unavailable.response()
    finally:
        store.end()
    if claim.outcome is not Outcome.CLAIMED:
        return _answer(claim, info, request, store)
    if completion in STORED:
        _announce(signals.completed, request, info, store, response.status_code)
    return response


# Completions after which retries get the replay of the response.
STORED = (Completion.STORED, Completion.STORED_LATE)


def _announce(
    signal: Signal, request: HttpRequest, info: RequestInfo, store: Store, status: int | None
) -> None:
    events.announce(
        signal, request, scope=info.scope, key=info.key, status=status, store=store.name
    )


def _execute(
    store: Store,
    request: HttpRequest,
    call: Callable[[], HttpResponseBase],
    options: Options,
    info: RequestInfo,
    claim: Claim,
) -> tuple[HttpResponseBase, Completion | None]:
    """Run the handler in the unit of work and keep its response; say what
    became of it (``None``: a transient answer, not kept).

    An exception from the handler leaves the unit, which undoes the claim
    (with the handler's effects, in the database); the view turns it into a
    response as usual, and the key is free for a corrected retry.
    """
    try:
        response, stored = capture(request, call)
    except TooLarge:
        if store.transactional:
            raise _RolledBack(problems.RESPONSE_TOO_LARGE.response()) from None
        # Nothing rolls back: the handler's effects stand. A problem is
        # stored in the response's place, so that a retry gets it too
        # instead of running the handler again.
        response = problems.RESPONSE_NOT_STORED.response()
        stored = keepable(response, response.content)
    if store.rolled_back():
        # The handler rolled its own work back (transaction.set_rollback(),
        # or a database error it caught without a savepoint): its effects go
        # with the claim, nothing is stored, and the client gets the
        # handler's own answer, as it would without the decorator.
        raise _RolledBack(response)
    if stored is None:
        # A transient outcome: undo the effects and leave the key free.
        store.release(claim)
        return response, None
    try:
        completion = store.complete(claim, stored, options.get_ttl())
    except Exception as exc:
        if store.failure(exc, storing=True) is not Failure.CONFLICT:
            raise
        raise _RolledBack(_conflict(request, info, store)) from None
    if completion is Completion.TOO_LARGE:
        raise _RolledBack(problems.RESPONSE_TOO_LARGE.response())
    if completion is Completion.TAKEN_OVER and store.transactional:
        # Another request took an expired claim over while this one ran:
        # its effects roll back, and the key is the other's.
        raise _RolledBack(problems.IN_FLIGHT.response())
    return response, completion


def _conflict(request: HttpRequest, info: RequestInfo, store: Store) -> HttpResponseBase:
    logger.info(
        "%s %s conflicted with a concurrent transaction and was rolled back; answered 409.",
        request.method,
        request.path,
        exc_info=True,
    )
    response = problems.TRANSACTION_CONFLICT.response()
    _announce(signals.conflict, request, info, store, response.status_code)
    return response


def _answer(
    claim: Claim, info: RequestInfo, request: HttpRequest, store: Store
) -> HttpResponseBase:
    """The answer to a request whose key another request holds or used."""
    if claim.outcome is Outcome.IN_FLIGHT:
        response: HttpResponseBase = problems.IN_FLIGHT.response()
        signal = signals.conflict
    elif claim.fingerprint != info.fingerprint:
        response = problems.KEY_REUSED.response()
        signal = signals.key_reused
    else:
        assert claim.response is not None
        response = replay(claim.response)
        signal = signals.replayed
    _announce(signal, request, info, store, response.status_code)
    return response


def _content_length_is_a_number(request: HttpRequest) -> bool:
    try:
        int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False
    return True


def _fingerprint_or_problem(request: HttpRequest, options: Options) -> str | HttpResponseBase:
    """The request's fingerprint, or the problem that its body is."""
    try:
        return _fingerprint(request, options)
    except RequestDataTooBig:
        return problems.BODY_TOO_LARGE.response()
    except ParseError as exc:
        # DRF could not parse the body (it wraps multipart errors this way).
        return problems.BODY_MALFORMED.response(reason=str(exc.detail))
    except (SuspiciousOperation, UnreadablePostError, MultiPartParserError) as exc:
        # Too many fields or files, a broken multipart body, or a client that
        # hung up mid-body.
        return problems.BODY_MALFORMED.response(reason=str(exc) or type(exc).__name__)
    except RawPostDataException:
        # A plain Django view's body that is gone: the CSRF check read the
        # form, and the client hung up before its end (Django then leaves
        # the form empty rather than fail).
        return problems.BODY_MALFORMED.response(reason="The body could not be read whole.")


def _fingerprint(request: HttpRequest, options: Options) -> str:
    """The stored fingerprint: the view's, bound to the method and path, so
    that even a custom fingerprint callable cannot make a key used on another
    endpoint replay this one's response."""
    value = options.get_fingerprint()(request)
    bound = f"{request.method}\n{request.path}\n{value}"
    return hashlib.sha256(bound.encode()).hexdigest()
