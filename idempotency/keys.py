"""Reading the client's key from its header, and the scope it lives in."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from rest_framework.request import Request

MAX_KEY_LENGTH = 255
MAX_SCOPE_LENGTH = 255
# Optional white space around a header value (RFC 9110): space and tab.
OWS = " \t"


class InvalidKey(ValueError):
    """The header is present but its value cannot be a key; ``reason`` says
    why, in a sentence the client can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


EMPTY = "The header is empty."
LIST = (
    "It holds a list, not one key: the header was sent more than once (servers join repeated "
    "header lines with commas) or with several values. Send it once, with one key."
)
PARAMETERS = "Parameters after the key (;name=value) are not supported. Send the key alone."
QUOTING = (
    "Its double quotes do not form one structured-field string (RFC 8941): a quoted key "
    'may escape only " and \\ with a backslash.'
)
TOO_LONG = f"It is longer than {MAX_KEY_LENGTH} characters."
CHARACTERS = (
    "It may hold only visible ASCII characters: no spaces, control characters or non-ASCII "
    "letters."
)


def parse_key(raw: str) -> str:
    """Return the key carried by a raw header value, or raise ``InvalidKey``.

    The IETF draft defines the header as a structured-field string, so
    ``"8e03978e"`` (quoted) is the same key as the bare ``8e03978e`` that most
    clients send. Inside quotes, ``\\"`` and ``\\\\`` are the only escapes
    RFC 8941 allows, and a comma is an ordinary character.

    A bare value with a comma is a list: servers join a header sent twice
    into ``K,K`` (gunicorn, runserver and Django's ASGI handler all do), and
    reading that as a key of its own would run the handler again for a
    client that sent ``K``. A quoted string followed by anything (``"k";a=1``,
    ``"k", "k"``) is refused for the same reason.

    Keys are 1-255 visible ASCII characters; WSGI servers hand non-ASCII
    header bytes over as Latin-1 text, so those fail this test too instead of
    reaching the database.
    """
    value = raw.strip(OWS)
    if not value:
        raise InvalidKey(EMPTY)
    if value.startswith('"'):
        key, rest = _sf_string(value)
        rest = rest.lstrip(OWS)
        if rest.startswith(","):
            raise InvalidKey(LIST)
        if rest.startswith(";"):
            raise InvalidKey(PARAMETERS)
        if rest:
            raise InvalidKey(QUOTING)
    elif "," in value:
        raise InvalidKey(LIST)
    elif ";" in value:
        # Structured-field syntax outside quotes: parameters, not a key.
        raise InvalidKey(PARAMETERS)
    else:
        key = value
    if not key:
        raise InvalidKey(EMPTY)
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(TOO_LONG)
    if not all("!" <= char <= "~" for char in key):
        raise InvalidKey(CHARACTERS)
    return key


def _sf_string(value: str) -> tuple[str, str]:
    """Read the structured-field string at the start of ``value``: return
    its contents and whatever follows the closing quote."""
    chars: list[str] = []
    escaped = False
    for index, char in enumerate(value[1:], start=1):
        if escaped:
            if char not in '"\\':
                raise InvalidKey(QUOTING)
            chars.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return "".join(chars), value[index + 1 :]
        else:
            chars.append(char)
    raise InvalidKey(QUOTING)  # no closing quote


def default_scope(request: Request) -> str | None:
    """Scope keys to the authenticated principal, so principals never share
    records: its kind (the model's label, or the class of a principal that
    is not a model instance) and its primary key, such as ``auth.user:42``.
    The kind matters: a service account with ``pk=1`` returned by a custom
    authentication class is not the user with ``pk=1``.

    Anonymous requests share one scope: their key is then a bearer secret,
    as in the IETF draft. Views that answer anonymous clients with private
    data should pass a ``scope`` that tells those clients apart. A principal
    without a primary key cannot be told apart from others of its kind:
    ``None``, which refuses the request (pass a ``scope`` for such views).
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return "anonymous"
    pk = getattr(user, "pk", None)
    if is_missing(pk):
        return None
    return f"{principal_kind(user)}:{pk}"


def principal_kind(principal: Any) -> str:
    """What kind of principal this is: for a model instance, the label of the
    model whose table holds its primary key (a proxy's instance is its
    concrete model's row; a multi-table child's primary key is its parent's
    row); for anything else, its class's path."""
    meta = getattr(principal, "_meta", None)
    model = getattr(meta, "concrete_model", None)
    if model is None:
        kind = type(principal)
        return f"{kind.__module__}.{kind.__qualname__}"
    link = model._meta.pk.remote_field
    while link is not None and link.parent_link:
        model = link.model._meta.concrete_model
        link = model._meta.pk.remote_field
    return str(model._meta.label_lower)


def is_missing(scope: object) -> bool:
    """Whether a scope callable failed to name a scope: ``None``, ``False``,
    or an empty or blank value. Such a value must never become a scope of
    its own, which every client it was returned for would share."""
    if scope is None or scope is False:
        return True
    if isinstance(scope, (str, bytes)):
        return not scope.strip()
    try:
        return len(scope) == 0  # type: ignore[arg-type]
    except TypeError:
        return False


# What a scope callable may return: values whose text is the same on every
# request. Anything else is a bug in the callable: an object's default text
# holds its memory address, and a retry would land in another scope.
SCOPE_TYPES = (str, int, uuid.UUID)
HASHED = "sha256:"


def normalise_scope(scope: object) -> str:
    """Fit what a scope callable returned into the indexed column.

    A scope too long for it, with characters a database may refuse (NUL in
    PostgreSQL text, lone surrogates in utf8mb4), or that looks like a hashed
    one, is stored as its hash. Raises ``TypeError`` for a value of another
    type than ``SCOPE_TYPES``.
    """
    if not isinstance(scope, SCOPE_TYPES) or isinstance(scope, bool):
        raise TypeError(
            f"a scope must be a str, an int or a UUID, not {type(scope).__name__}: the same "
            "client must get the same scope on every request."
        )
    text = str(scope)
    if len(text) <= MAX_SCOPE_LENGTH and text.isprintable() and not text.startswith(HASHED):
        return text
    return HASHED + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
