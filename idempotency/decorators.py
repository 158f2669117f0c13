"""``@idempotent``: run a DRF handler at most once per Idempotency-Key."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar, overload

from rest_framework.request import Request
from rest_framework.views import APIView

from .core import protect
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
) -> F | Callable[[F], F]:
    """Protect an ``APIView`` method, a ViewSet action, an ``@action`` or an
    ``@api_view`` function (placed under ``@api_view``).

    Usable bare (``@idempotent``) or with options that override the
    ``IDEMPOTENCY`` settings for this handler: ``ttl`` (a ``timedelta`` or
    seconds), ``required``, ``scope`` and ``fingerprint`` (callables taking the
    request, or dotted paths to them), and ``methods`` (the unsafe methods to
    protect, by default all of POST, PUT, PATCH and DELETE that reach it), and
    ``backend``: ``"database"`` (records commit with the handler's database
    effects) or ``"redis"`` (records in Redis, for handlers whose effects are
    outside the database), by default ``IDEMPOTENCY["BACKEND"]``.
    """
    options = Options.build(
        ttl=ttl,
        required=required,
        scope=scope,
        fingerprint=fingerprint,
        methods=methods,
        backend=backend,
    )

    def decorator(handler: F) -> F:
        _refuse_wrong_target(handler)
        resolved = options.resolve(f"@idempotent on {handler.__module__}.{handler.__qualname__}")
        if options.backend == "redis":
            REDIS_BACKEND_VIEWS.add(f"{handler.__module__}.{handler.__qualname__}")

        @functools.wraps(handler)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = _find_request(handler, args)
            return protect(request, lambda: handler(*args, **kwargs), resolved)

        setattr(wrapper, OPTIONS_ATTRIBUTE, resolved)
        return wrapper  # type: ignore[return-value]

    return decorator(func) if func is not None else decorator


def _refuse_wrong_target(handler: Callable[..., Any]) -> None:
    if isinstance(handler, type):
        raise TypeError(
            f"@idempotent decorates handler methods and functions, not classes such as "
            f"{handler.__name__}. To protect every unsafe method of a view class, add "
            f"idempotency.mixins.IdempotentMixin to its bases."
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


def _find_request(handler: Callable[..., Any], args: tuple[Any, ...]) -> Request:
    # Function views get the request first; methods get it after ``self``.
    for candidate in args[:2]:
        if isinstance(candidate, Request):
            return candidate
    raise TypeError(
        f"@idempotent on {handler.__qualname__} did not receive a Django REST framework "
        f"Request. It protects APIView and ViewSet methods and @api_view functions; a plain "
        f"Django view must be turned into one of those first."
    )
