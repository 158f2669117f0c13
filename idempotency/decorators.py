"""``@idempotent``: run a view's handler at most once per Idempotency-Key.

It protects DRF handlers (``APIView`` and ViewSet methods, ``@action``,
``@api_view`` functions, and adrf's async ones) and plain Django views
(functions and class-based views' methods), sync or ``async def``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any, TypeVar, overload

from django.contrib.auth.decorators import login_required, permission_required, user_passes_test
from django.http import HttpRequest
from django.middleware.csrf import CsrfViewMiddleware
from django.views import View
from rest_framework.request import Request
from rest_framework.views import APIView

from .core import guard
from .options import REDIS_BACKEND_VIEWS, FingerprintFunc, Options, ScopeFunc

F = TypeVar("F", bound=Callable[..., Any])

OPTIONS_ATTRIBUTE = "idempotency_options"


@overload
def idempotent(func: F) -> F: ...


@overload
def idempotent(
    *,
    ttl: timedelta | float | None = ...,
    required: bool | None = ...,
    scope: ScopeFunc | str | None = ...,
    fingerprint: FingerprintFunc | str | None = ...,
    methods: Iterable[str] | None = ...,
    backend: str | None = ...,
    wait: timedelta | float | None = ...,
) -> Callable[[F], F]: ...


def idempotent(
    func: F | None = None,
    *,
    ttl: timedelta | float | None = None,
    required: bool | None = None,
    scope: ScopeFunc | str | None = None,
    fingerprint: FingerprintFunc | str | None = None,
    methods: Iterable[str] | None = None,
    backend: str | None = None,
    wait: timedelta | float | None = None,
) -> F | Callable[[F], F]:
    """Protect an ``APIView`` method, a ViewSet action, an ``@action`` or an
    ``@api_view`` function (placed under ``@api_view``), or a plain Django
    view function or method (placed under ``@login_required``,
    ``@csrf_protect`` and the like), sync or ``async def``.

    Usable bare (``@idempotent``) or with options that override the
    ``IDEMPOTENCY`` settings for this handler: ``ttl`` (a ``timedelta`` or
    seconds), ``required``, ``scope`` and ``fingerprint`` (callables taking the
    request, or dotted paths to them), and ``methods`` (the unsafe methods to
    protect, by default all of POST, PUT, PATCH and DELETE that reach it), and
    ``backend``: ``"database"`` (records commit with the handler's database
    effects) or ``"redis"`` (records in Redis, for handlers whose effects are
    outside the database), by default ``IDEMPOTENCY["BACKEND"]``; and ``wait``
    (a ``timedelta`` or seconds): how long a duplicate of a request in flight
    waits for it and replays its response before answering 409.
    """
    options = Options.build(
        ttl=ttl,
        required=required,
        scope=scope,
        fingerprint=fingerprint,
        methods=methods,
        backend=backend,
        wait=wait,
    )

    def decorator(handler: F) -> F:
        _refuse_wrong_target(handler)
        where = _name(handler)
        resolved = options.resolve(f"@idempotent on {where}")
        if options.backend == "redis":
            REDIS_BACKEND_VIEWS.add(where)

        wrapper = functools.wraps(handler)(
            guard(handler, lambda args: _find_request(handler, args), resolved)
        )
        setattr(wrapper, OPTIONS_ATTRIBUTE, resolved)
        return wrapper  # type: ignore[return-value]

    return decorator(func) if func is not None else decorator


def options_of(handler: Any) -> Options | None:
    """The options ``@idempotent`` gave ``handler``, or ``None`` if it did not
    decorate it. They are found on the handler (``functools.wraps`` copies
    them up through other decorators) or, for an ``@api_view`` function, on
    the function that DRF's generated handler method calls."""
    for candidate in (handler, *_closed_over(handler, depth=1)):
        options = getattr(candidate, OPTIONS_ATTRIBUTE, None)
        if isinstance(options, Options):
            return options
    return None


def _refuse_wrong_target(handler: Any) -> None:
    """Refuse what ``@idempotent`` cannot protect, with the fix: when the
    module is imported, or, where ``method_decorator`` applies it (on each
    call), on the first request."""
    if isinstance(handler, type):
        if issubclass(handler, APIView):
            fix = (
                "To protect every unsafe method of a view class, add "
                "idempotency.mixins.IdempotentMixin to its bases."
            )
        else:
            fix = (
                "Decorate its handler method instead (@idempotent above def post), or the "
                'class with @method_decorator(idempotent, name="post").'
            )
        raise TypeError(
            f"@idempotent decorates handler methods and functions, not classes such as "
            f"{handler.__name__}. {fix}"
        )
    if not callable(handler):
        raise TypeError(
            f"@idempotent decorates a view function or a handler method, not {handler!r}. "
            "Use it bare (@idempotent) or with keyword options (@idempotent(ttl=3600))."
        )
    if inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler):
        raise TypeError(
            f"@idempotent cannot protect {_name(handler)}: it is a generator, whose "
            "work would run after the response is stored. Return a response (a "
            "StreamingHttpResponse over the generator is drained and stored in full)."
        )
    view_class = getattr(handler, "cls", None)
    if isinstance(view_class, type) and issubclass(view_class, APIView):
        raise TypeError(
            "@idempotent was placed above @api_view, where it would wrap the whole view "
            "and run before authentication. Place it underneath, next to the function:\n\n"
            '    @api_view(["POST"])\n'
            "    @idempotent\n"
            f"    def {view_class.__name__}(request):\n"
            "        ..."
        )
    if _is_dispatch(handler):
        raise TypeError(
            "@idempotent cannot protect dispatch() or a whole class-based view, which run "
            "before the view's own checks (a DRF view's authentication, LoginRequiredMixin, "
            "the decorators on its handlers). Decorate the handler methods (post, put, ...), "
            "or add idempotency.mixins.IdempotentMixin to a DRF view's bases."
        )
    checker = _checker_inside(handler)
    if checker is not None:
        name = getattr(handler, "__name__", "view")
        what = CHECKERS[checker]
        raise TypeError(
            f"@idempotent was placed above {what} on {name}, so a replay would be sent "
            f"before it runs. Place @idempotent underneath, next to the function:\n\n"
            f"    @{checker}\n"
            "    @idempotent\n"
            f"    def {name}(request):\n"
            "        ...\n\n"
            "On a method, the same order holds with method_decorator: "
            f"@method_decorator({checker}) above @idempotent."
        )


# How a refusal names what it found.
CHECKERS = {
    "login_required": "@login_required (or another check of the user: permission_required, "
    "user_passes_test)",
    "csrf_protect": "@csrf_protect",
}


def _is_dispatch(handler: Any) -> bool:
    """Whether ``handler`` is a view class's ``dispatch()`` (a method of that
    name, not any function called so), or a whole class-based view."""
    view_class = getattr(handler, "view_class", None)
    if isinstance(view_class, type) and issubclass(view_class, View):
        return True  # View.as_view(): everything runs after it
    func = handler.func if isinstance(handler, functools.partial) else handler
    parts = getattr(func, "__qualname__", "").split(".")
    return len(parts) >= 2 and parts[-1] == "dispatch" and parts[-2] != "<locals>"


def _checker_inside(handler: Callable[..., Any]) -> str | None:
    """The Django decorator that checks the user or the CSRF token, if
    ``handler`` is already wrapped in one: protection must come after it.

    Such a wrapper is found through ``__wrapped__`` (``functools.wraps``),
    ``functools.partial``, or among the decorators that ``method_decorator``
    keeps to apply on each call."""
    seen: Any = handler
    while seen is not None:
        if isinstance(seen, functools.partial):
            seen = seen.func
            continue
        found = _checker(seen)
        if found is not None:
            return found
        for value in _closed_over(seen, depth=1):
            # method_decorator's wrapper keeps its decorators in a list.
            if isinstance(value, (list, tuple)):
                for decorator in value:
                    found = _checker(decorator)
                    if found is not None:
                        return found
        seen = getattr(seen, "__wrapped__", None)
    return None


def _checker(func: Any) -> str | None:
    """What ``func`` checks, if it is a view wrapped by, or itself is, one of
    Django's decorators that check the user or the CSRF token."""
    code = getattr(func, "__code__", None)
    if code is not None and code in _USER_TESTS:
        return "login_required"
    for value in _closed_over(func, depth=2):
        # Exactly the middleware: ensure_csrf_cookie and requires_csrf_token
        # use subclasses of it that never refuse a request.
        if value is CsrfViewMiddleware or type(value) is CsrfViewMiddleware:
            return "csrf_protect"
    return None


def _closed_over(func: Any, depth: int) -> Iterator[Any]:
    """What ``func`` closes over, and what the functions among that close
    over, ``depth`` levels deep (``csrf_protect``'s middleware is kept by the
    helpers its wrapper calls)."""
    for cell in getattr(func, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        yield value
        if depth > 1 and inspect.isfunction(value):
            yield from _closed_over(value, depth - 1)


def _code_of_user_tests() -> frozenset[Any]:
    """The code of the wrappers that ``login_required``, ``permission_required``
    and ``user_passes_test`` make, sync and async (every wrapper shares it),
    and of the decorators themselves, which ``method_decorator`` keeps."""

    def view(request: HttpRequest) -> None: ...

    async def async_view(request: HttpRequest) -> None: ...

    test = user_passes_test(lambda user: True)
    wrappers = {test(func).__code__ for func in (view, async_view)}  # type: ignore[type-var]
    decorators = (test, permission_required("-"), login_required)
    return frozenset({*wrappers, *(decorator.__code__ for decorator in decorators)})


_USER_TESTS = _code_of_user_tests()


def _name(handler: Any) -> str:
    """Where ``handler`` is defined, for messages (a ``functools.partial``
    names its function)."""
    func = handler.func if isinstance(handler, functools.partial) else handler
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _find_request(handler: Callable[..., Any], args: tuple[Any, ...]) -> HttpRequest:
    # Function views get the request first; methods get it after ``self``.
    for candidate in args[:2]:
        if isinstance(candidate, Request):
            return candidate
    for candidate in args[:2]:
        if isinstance(candidate, HttpRequest):
            if args and isinstance(args[0], APIView):
                # Django's request in a DRF view: DRF has not authenticated it.
                break
            return candidate
    raise TypeError(
        f"@idempotent on {_name(handler)} did not receive a request. It protects "
        f"DRF handler methods, @api_view functions and plain Django view functions and "
        f"methods, which receive the request as their first argument after self."
    )
