"""Reading the client's key from its header, and the scope it lives in."""

from __future__ import annotations

import hashlib

from rest_framework.request import Request

MAX_KEY_LENGTH = 255
MAX_SCOPE_LENGTH = 255


class InvalidKey(ValueError):
    """The header is present but its value cannot be a key."""


def parse_key(raw: str) -> str:
    """Return the key carried by a raw header value, or raise ``InvalidKey``.

    The IETF draft defines the header as a structured-field string, so
    ``"8e03978e"`` (quoted) is the same key as the bare ``8e03978e`` that most
    clients send. Inside quotes, ``\\"`` and ``\\\\`` are the only escapes
    RFC 8941 allows. Keys are 1-255 visible ASCII characters; WSGI servers
    hand non-ASCII header bytes over as Latin-1 text, so those fail this test
    too instead of reaching the database.
    """
    value = raw.strip(" \t")
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise InvalidKey(value)
        value = _unquote(value[1:-1])
    if not 0 < len(value) <= MAX_KEY_LENGTH:
        raise InvalidKey(value)
    if not all("!" <= char <= "~" for char in value):
        raise InvalidKey(value)
    return value


def _unquote(inner: str) -> str:
    chars: list[str] = []
    escaped = False
    for char in inner:
        if escaped:
            if char not in '"\\':
                raise InvalidKey(inner)
            chars.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            raise InvalidKey(inner)
        else:
            chars.append(char)
    if escaped:
        raise InvalidKey(inner)
    return "".join(chars)


def default_scope(request: Request) -> str:
    """Scope keys to the authenticated user, so users never share records.

    Anonymous requests share one scope: their key is then a bearer secret,
    as in the IETF draft. Views that answer anonymous clients with private
    data should pass a ``scope`` that tells those clients apart.
    """
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return "anonymous"


def normalise_scope(scope: object) -> str:
    """Fit whatever a scope callable returned into the indexed column.

    A scope too long for it, or with characters a database may refuse (NUL
    in PostgreSQL text, lone surrogates in utf8mb4), is stored as its hash.
    """
    text = str(scope)
    if len(text) <= MAX_SCOPE_LENGTH and text.isprintable():
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
