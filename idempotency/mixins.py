"""``IdempotentMixin``: the ``@idempotent`` protocol for a whole DRF view class
(adrf's async views included)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, ClassVar

from rest_framework.request import Request
from rest_framework.views import APIView

from .core import guard
from .decorators import OPTIONS_ATTRIBUTE
from .options import REDIS_BACKEND_VIEWS, FingerprintFunc, Options, ScopeFunc


# Runs each unsafe request of a view at most once per Idempotency-Key. A
# comment, not a docstring: schema generators (drf-spectacular) describe an
# operation by the first docstring in its view's MRO, so a docstring here
# would describe every operation of every view without one of its own.
class IdempotentMixin:
    # Each defaults to the IDEMPOTENCY setting of the same name.
    idempotency_ttl: timedelta | float | None = None
    idempotency_required: bool | None = None
    # A callable taking the request, or a dotted path to one. It is read from
    # the class, where a plain function stays unbound.
    idempotency_scope: ScopeFunc | str | None = None
    idempotency_fingerprint: FingerprintFunc | str | None = None
    # The unsafe methods to protect; None protects POST, PUT, PATCH and DELETE.
    idempotency_methods: Iterable[str] | None = None
    # "database" or "redis"; None defers to IDEMPOTENCY["BACKEND"].
    idempotency_backend: str | None = None
    # How long a duplicate waits for the request in flight; None defers to
    # IDEMPOTENCY["WAIT"].
    idempotency_wait: timedelta | float | None = None

    _idempotency_options: ClassVar[Options] = Options()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Refuse a bad attribute when the class is defined, not on the first
        # request, and build the options once rather than per request.
        cls._idempotency_options = Options.build(
            ttl=cls.idempotency_ttl,
            required=cls.idempotency_required,
            scope=cls.idempotency_scope,
            fingerprint=cls.idempotency_fingerprint,
            methods=cls.idempotency_methods,
            backend=cls.idempotency_backend,
            wait=cls.idempotency_wait,
        ).resolve(f"{cls.__module__}.{cls.__qualname__}")
        if cls._idempotency_options.backend == "redis":
            REDIS_BACKEND_VIEWS.add(f"{cls.__module__}.{cls.__qualname__}")
        mro = cls.__mro__
        if APIView in mro and mro.index(APIView) < mro.index(IdempotentMixin):
            # APIView.initial() does not call super(), so the mixin's would
            # never run and the view would be silently unprotected.
            raise TypeError(
                f"{cls.__name__} lists IdempotentMixin after a DRF view class. List it "
                f"first, as in: class {cls.__name__}(IdempotentMixin, ModelViewSet)."
            )

    def get_idempotency_options(self) -> Options:
        """The options for this request; override to choose them per request."""
        return self._idempotency_options

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # DRF looks the handler up after initial() returns, so wrapping it
        # here puts the protocol after authentication, permissions and
        # throttling, as with the decorator. ViewSets bind their actions to
        # method names on the instance the same way.
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        name = (request.method or "").lower()
        handler = getattr(self, name, None)
        # A handler decorated with @idempotent keeps its own options.
        if handler is None or hasattr(handler, OPTIONS_ATTRIBUTE):
            return
        # The request comes first: the handler is a bound method.
        protected = guard(handler, lambda args: args[0], self.get_idempotency_options())
        setattr(self, name, protected)
