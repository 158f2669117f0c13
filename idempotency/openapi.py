"""OpenAPI documentation of protected operations, for drf-spectacular.

Point DRF at the schema class, and every operation that ``@idempotent`` or
``IdempotentMixin`` protects documents its key header (required or optional,
its syntax and how long a key is kept), the problem documents this package
answers with (400, 409 with ``Retry-After``, 413, 422 and 503, as
``application/problem+json``), and the ``Idempotent-Replayed`` header of a
replay. Other operations are left as they were::

    REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "idempotency.openapi.AutoSchema"}

A project with its own ``AutoSchema`` puts :class:`IdempotencySchemaMixin`
first among its bases instead.

drf-spectacular adds documentation through a schema class and not through an
extension that loads itself: a view extension would be dropped for any
method that ``@extend_schema`` decorates, which is most of them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from drf_spectacular.drainage import warn
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import ComponentIdentity, ResolvedComponent
from drf_spectacular.utils import OpenApiParameter
from rest_framework.mixins import UpdateModelMixin

from . import keys, problems
from .conf import settings
from .decorators import options_of
from .mixins import IdempotentMixin
from .options import Options
from .responses import REPLAYED_HEADER

__all__ = ["AutoSchema", "IdempotencySchemaMixin"]

PROBLEM_COMPONENT = "IdempotencyProblem"

# A bare key: visible ASCII but no comma or semicolon (which make a list or
# parameters), not starting with a double quote; or a structured-field
# string whose 1 to 255 characters escape only " and \ (keys.parse_key).
# Spaces and tabs around a header's value are not part of it (RFC 9110).
KEY_PATTERN = r'^(?:[!#-+\--:<-~][!-+\--:<-~]{0,254}|"(?:[!#-\[\]-~]|\\["\\]){1,255}")$'

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A problem document (RFC 9457) of django-idempotency.",
    "properties": {
        "type": {
            "type": "string",
            "description": "What went wrong, as a tag URI that never changes, such as "
            f"{problems.IN_FLIGHT.type}: match on this.",
        },
        "title": {"type": "string", "description": "A short summary of the problem type."},
        "status": {"type": "integer", "description": "The response's status code."},
        "detail": {"type": "string", "description": "What happened, and what to do."},
    },
    "required": ["type", "title", "status", "detail"],
}

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying with the same key.",
        "schema": {"type": "integer", "minimum": 0},
    }
}

# An example detail for the problems whose detail says why.
REASONS = {
    problems.KEY_MALFORMED: keys.LIST,
    problems.BODY_MALFORMED: "Content-Length is not a number.",
}


class IdempotencySchemaMixin:
    """Documents what protection adds to an operation; put it before
    drf-spectacular's ``AutoSchema`` (or a subclass of it) in the bases."""

    view: Any
    method: str

    def get_override_parameters(self) -> list[Any]:
        parameters: list[Any] = super().get_override_parameters()  # type: ignore[misc]
        options = protection(self.view, self.method)
        if options is None:
            return parameters
        # First, so that the project's own declaration of the header (or its
        # exclusion, with OpenApiParameter(..., exclude=True)) wins.
        return [key_parameter(options), *parameters]

    def get_operation(
        self, path: str, path_regex: str, path_prefix: str, method: str, registry: Any
    ) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(  # type: ignore[misc]
            path, path_regex, path_prefix, method, registry
        )
        if operation is None:  # excluded from the schema
            return None
        options = protection(self.view, method)
        if options is not None:
            operation["responses"] = responses(operation.get("responses", {}), options, registry)
        return operation


class AutoSchema(IdempotencySchemaMixin, SpectacularAutoSchema):
    """drf-spectacular's ``AutoSchema``, documenting protected operations."""


def protection(view: Any, method: str) -> Options | None:
    """The options that protect ``method`` of ``view``, or ``None`` if it
    runs unprotected."""
    method = method.upper()
    action = getattr(view, "action", None) or method.lower()
    options = _decorated(view, action)
    if options is None and action == "partial_update" and _delegates_to_update(view):
        # DRF's partial_update() calls update(): @idempotent on update
        # protects PATCH too.
        options = _decorated(view, "update")
    if options is None and isinstance(view, IdempotentMixin):
        try:
            options = view.get_idempotency_options()
        except Exception as exc:
            # An override that reads the request's object or URL arguments,
            # which drf-spectacular's stand-in request does not have.
            warn(
                f"{type(view).__name__}.get_idempotency_options() failed ({exc!r}) for the "
                "schema; documented with the class's options. Return them when "
                "getattr(self, 'swagger_fake_view', False) is true."
            )
            options = view._idempotency_options
    if options is None or method not in options.methods:
        return None
    return options


def _decorated(view: Any, name: str) -> Options | None:
    handler = getattr(view, name, None)
    return options_of(handler) if handler is not None else None


def _delegates_to_update(view: Any) -> bool:
    return getattr(type(view), "partial_update", None) is UpdateModelMixin.partial_update


def responses(documented: dict[str, Any], options: Options, registry: Any) -> dict[str, Any]:
    """The ``documented`` responses of a protected operation, each marked
    as possibly a replay, with the problems this package may answer."""
    for status, response in documented.items():
        if _replayable(status) and "$ref" not in response:
            response.setdefault("headers", {})[REPLAYED_HEADER] = {
                "description": "true when this response is a replay: the stored response to "
                f"the first request with this {settings.HEADER}, which ran the operation.",
                "schema": {"type": "string", "enum": ["true"]},
            }
    reference = _problem_component(registry).ref
    for code, listed, description in _problems(options):
        content = {
            "schema": reference,
            "examples": {
                problem.slug: {
                    "summary": problem.title,
                    "value": problem.document(**_example_reason(problem)),
                }
                for problem in listed
            },
        }
        response = documented.setdefault(str(code), {"description": description})
        if "$ref" in response:
            continue  # a response the project keeps among its components
        if not response.get("description"):
            response["description"] = description
        elif response["description"] != description:
            response["description"] += f" Or: {description}"
        media = response.setdefault("content", {})
        theirs = media.get(problems.CONTENT_TYPE)
        if theirs is not None and "schema" in theirs:
            # The project's own problem documents, and the package's.
            content["schema"] = {"oneOf": [theirs["schema"], reference]}
            content["examples"] = {**theirs.get("examples", {}), **content["examples"]}
        media[problems.CONTENT_TYPE] = content
        if code in (409, 503):
            response.setdefault("headers", {}).update(RETRY_AFTER)
    return dict(sorted(documented.items(), key=lambda item: _status_order(item[0])))


def key_parameter(options: Options) -> OpenApiParameter:
    """The key header, as the operation that ``options`` protect takes it."""
    required = options.get_required()
    if required:
        presence = "Required: a request without it is refused with 400."
    else:
        presence = "Optional: a request without it runs unprotected, as often as it is sent."
    return OpenApiParameter(
        name=settings.HEADER,
        type={"type": "string", "pattern": KEY_PATTERN},
        location=OpenApiParameter.HEADER,
        required=required,
        description=(
            f"A key the client chooses for this one intended request (a UUID serves well) and "
            f"sends again, unchanged, with every retry of it. The first request with a key "
            f"runs; {_while_it_runs(options)}; a retry after it gets its stored "
            f"response again, marked {REPLAYED_HEADER}: true. A key is kept for "
            f"{_duration(options.get_ttl())} after its request completes, then forgotten; "
            f"until then, sending it with a different request (method, path or body) gets "
            f"422. Keys belong to the client that sends them. A key is 1 to "
            f"{keys.MAX_KEY_LENGTH} visible ASCII characters, sent bare or as a quoted "
            f"string (RFC 8941). {presence}"
        ),
    )


def _while_it_runs(options: Options) -> str:
    wait = options.get_wait()
    if not wait:
        return "a retry while it runs gets 409"
    return (
        f"a retry while it runs waits up to {_duration(wait)} for its response, and gets "
        "409 if it is still running then"
    )


def _problems(options: Options) -> list[tuple[int, list[problems.Problem], str]]:
    """Each status this package may answer the operation with, the problems
    behind it and their description."""
    refused = [problems.KEY_MALFORMED, problems.SCOPE_MISSING, problems.BODY_MALFORMED]
    if options.get_required():
        refused.insert(0, problems.KEY_MISSING)
    conflicts = [problems.IN_FLIGHT]
    if options.get_backend() == "database":
        unavailable = problems.DATABASE_UNAVAILABLE
        conflicts.append(problems.TRANSACTION_CONFLICT)
    else:
        unavailable = problems.REDIS_UNAVAILABLE
    header = settings.HEADER
    return [
        (400, refused, f"The {header} header or the request could not be used as sent."),
        (
            409,
            conflicts,
            f"A request with this {header} is still running, or this one conflicted with "
            "another and had no effect: retry with the same key after Retry-After.",
        ),
        (413, [problems.BODY_TOO_LARGE], "The request body is larger than this server accepts."),
        (
            422,
            [problems.KEY_REUSED],
            f"This {header} was already used for a different request.",
        ),
        (
            503,
            [unavailable],
            "The request was not run, or had no effect: retry with the same key after "
            "Retry-After.",
        ),
    ]


def _problem_component(registry: Any) -> ResolvedComponent:
    component = ResolvedComponent(  # type: ignore[no-untyped-call]
        name=PROBLEM_COMPONENT,
        type=ResolvedComponent.SCHEMA,
        object=ComponentIdentity(PROBLEM_COMPONENT),  # type: ignore[no-untyped-call]
        schema=PROBLEM_SCHEMA,
    )
    registry.register_on_missing(component)
    return component


def _example_reason(problem: problems.Problem) -> dict[str, str]:
    reason = REASONS.get(problem)
    return {"reason": reason} if reason is not None else {}


def _status_order(status: str) -> tuple[int, str]:
    return (0, status) if status[:1].isdigit() else (1, status)


def _replayable(status: str) -> bool:
    """Whether a response documented as ``status`` may be stored and
    replayed: 429 and 5xx are not, unless ``STORE_SERVER_ERRORS`` says so."""
    if status == "default":
        return True
    if not status.isdigit():  # "2XX" and the like
        status = status[0] + "00" if status[:1].isdigit() else "0"
    code = int(status)
    return code != 429 and (code < 500 or settings.STORE_SERVER_ERRORS)


def _duration(value: timedelta) -> str:
    """``value`` in words, in the largest unit that divides it."""
    seconds = int(value.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"
