"""Records in Redis, through django-redis's connection.

:class:`RedisStore` keeps the records of views that chose
``backend="redis"``, whose effects are outside the Django database. The
accelerator in front of the database store (``idempotency.accelerator``)
keeps its copies in the same format.

Each record is one Redis string: a line of JSON (state, owner token,
fingerprint, status, headers), a newline, then the response body's bytes.
JSON never holds a raw newline, so the first one ends the header, and a body
is stored exactly as it was sent.

The compare-and-set steps are Lua scripts: Redis runs each one atomically, so
nothing can happen between reading a record and replacing it. Each script
touches a single key, as a Redis Cluster would require (untested: django-redis
has no cluster client). Every command goes
to the primary (``get_redis_connection(alias, write=True)``): a replica may
not have seen a claim yet.
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.cache import InvalidCacheBackendError
from django.core.exceptions import ImproperlyConfigured

from ..conf import settings
from .base import Claim, Outcome, RequestInfo, StoredResponse

logger = logging.getLogger("idempotency")

IN_FLIGHT = "in_flight"
COMPLETED = "completed"
# The accelerator's mark of a record deleted from the database: no copy of
# it may be written until the record would have expired.
DELETED = "deleted"

# Redis's SET NX is the claim; the script only saves the round trip that a
# duplicate would otherwise spend reading what is in its way.
CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return false
end
return redis.call('GET', KEYS[1])
"""
# Only the owner of a claim may replace or remove it: a worker whose lease
# expired must not touch the record of the worker that took the key over.
# If nobody did, the key is free and the late response is stored all the
# same, so that retries replay it instead of running the handler again.
# Returns 1 (stored), 2 (stored after the lease ran out) or what holds the
# key now.
COMPLETE = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or not current then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    if current then return 1 end
    return 2
end
return current
"""
# The accelerator's writes: a copy of a committed record, or a tombstone
# for a deleted one, each naming its record's id (ARGV[3]; ids only grow).
# A write never replaces what names a newer record, and a copy never
# replaces its own record's tombstone: a retry that read a record just
# before it was deleted must not put its copy back after the deletion.
# Ids are compared as decimal strings, since Lua's numbers lose 64-bit ones.
PUT = """
local current = redis.call('GET', KEYS[1])
if current then
    local newline = string.find(current, '\\n', 1, true)
    local ok, header = false, nil
    if newline then
        ok, header = pcall(cjson.decode, string.sub(current, 1, newline - 1))
    end
    if ok and type(header) == 'table' and header.record then
        local held, mine = tostring(header.record), ARGV[3]
        if #held > #mine or (#held == #mine and held > mine) then
            return 0
        end
        if held == mine and header.state == 'deleted' and ARGV[4] ~= 'deleted' then
            return 0
        end
    end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class Unusable(Exception):
    """The cache gives no Redis connection this package can use."""


def connection(alias: str | None) -> Any:
    """The raw client of the django-redis cache ``alias`` (the primary).

    Raises :class:`Unusable` if the cache's configuration gives none, which
    callers treat as an outage: the system checks report the configuration,
    and requests must not fail for it where the database can answer. A
    module that cannot be imported is no outage, and no retry will cure it:
    ``ImproperlyConfigured``, a 500.
    """
    if alias is None:
        raise ImproperlyConfigured(
            'A view uses backend="redis" but IDEMPOTENCY["REDIS"] names no django-redis '
            "cache. `manage.py check` reports this as idempotency.E021."
        )
    try:
        from django_redis import get_redis_connection

        client = get_redis_connection(alias, write=True)
        decodes = client.get_connection_kwargs().get("decode_responses")
    except (ImportError, InvalidCacheBackendError) as exc:
        # A module that cannot be imported (django-redis missing, a typo in
        # the cache's BACKEND or CLIENT_CLASS): no outage, and no retry will
        # cure it.
        raise ImproperlyConfigured(
            f"The {alias!r} cache cannot be used: {exc}. `manage.py check` reports this "
            "(idempotency.E018, E019, E024)."
        ) from exc
    except Exception as exc:
        # Whatever django-redis or a custom client class raises for its
        # configuration (the checks report it as E024).
        raise Unusable(f"the {alias!r} cache gives no Redis connection: {exc!r}") from exc
    if decodes:
        # Records hold response bodies as bytes; decoded, they would not
        # parse, and a binary body could not be read back at all.
        raise Unusable(f"the {alias!r} cache decodes responses (decode_responses=True)")
    return client


# What a request enters redis-py and django-redis by: imported by prepare().
PREPARED_MODULES = ("redis", "redis.exceptions", "redis.connection", "django_redis")


def prepare() -> None:
    """Import redis-py and django-redis, and build the client of each cache
    that ``IDEMPOTENCY`` names, as the application starts (``ready()``).

    Left to the requests, the imports would run in a worker's first requests,
    several threads at once, each entering redis-py by another module
    (``redis.exceptions`` here, ``redis.connection`` through django-redis):
    Python's per-module import locks then gave one a ``_DeadlockError`` (a
    500) and another a partially initialized module (a false outage).
    Building a client and its pool connects to nothing, so this works with
    Redis down. Nothing here may fail the start-up: a configuration it cannot
    build is logged, reported by the system checks, and met again by requests.
    """
    aliases = sorted(alias for alias in {settings.REDIS, settings.REDIS_ACCELERATOR} if alias)
    if not aliases:
        return
    try:
        for module in PREPARED_MODULES:
            importlib.import_module(module)
        for alias in aliases:
            connection(alias)
    except Exception as exc:
        logger.warning("The Redis caches %s could not be prepared at start-up: %r", aliases, exc)


def errors() -> tuple[type[Exception], ...]:
    """What a lost, refusing or unusable Redis raises: connection refused or
    reset, timeouts, a read-only replica, a script error. Imported late so
    that the package works without redis-py until Redis is configured."""
    try:
        from redis.exceptions import RedisError
    except ImportError:
        return (Unusable,)
    return (RedisError, Unusable)


def record_key(namespace: str, scope: str, key: str) -> str:
    """A fixed-length key for (scope, key): scopes are arbitrary text, and
    the hash keeps them out of the key space's syntax (``:``, ``{}``)."""
    digest = hashlib.sha256(f"{scope}\n{key}".encode("utf-8", "surrogatepass"))
    return f"{settings.REDIS_KEY_PREFIX}:v1:{namespace}:{digest.hexdigest()}"


def namespace_pattern(namespace: str) -> str:
    """A ``SCAN MATCH`` pattern for every key of ``namespace``."""
    prefix = f"{settings.REDIS_KEY_PREFIX}:v1:{namespace}:"
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in prefix) + "*"


def milliseconds(duration: timedelta) -> int:
    return max(1, int(duration / timedelta(milliseconds=1)))


def encode(
    state: str,
    owner: str,
    fingerprint: str,
    response: StoredResponse | None = None,
    record: int | None = None,
) -> bytes:
    header: dict[str, Any] = {"state": state, "owner": owner, "fingerprint": fingerprint}
    if record is not None:
        header["record"] = str(record)
    if response is not None:
        header["status"] = response.status
        header["headers"] = [list(pair) for pair in response.headers]
    body = response.body if response is not None else b""
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + body


def claim_or_read(
    client: Any, key: str, fingerprint: str, lifetime: timedelta
) -> Mine | Claim | None:
    """Set an in-flight value of our own under ``key`` unless one is there
    (``SET NX``): return ours, or what is in the way, or ``None`` if that is
    not a record this package wrote (another program writing under its
    prefix). Raises one of :func:`errors` if Redis cannot be reached."""
    mine = Mine(key, secrets.token_hex(16), fingerprint)
    found = client.eval(CLAIM, 1, key, mine.value, milliseconds(lifetime))
    if found is None:
        return mine
    try:
        return Entry.decode(found).claim()
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Mine:
    """An in-flight value this request set, which only it may replace or
    remove (the owner token makes it unique)."""

    key: str
    owner: str
    fingerprint: str

    @property
    def value(self) -> bytes:
        return encode(IN_FLIGHT, self.owner, self.fingerprint)


@dataclass(frozen=True)
class Entry:
    state: str
    fingerprint: str
    response: StoredResponse | None

    @classmethod
    def decode(cls, value: bytes) -> Entry:
        """Raise ``ValueError`` (or ``KeyError``, ``TypeError``) if ``value``
        is not a record this module wrote."""
        head, _, body = value.partition(b"\n")
        header = json.loads(head)
        state = header["state"]
        if state not in (IN_FLIGHT, COMPLETED):
            raise ValueError(f"unknown state {state!r}")
        response = None
        if state == COMPLETED:
            response = StoredResponse(
                status=int(header["status"]),
                headers=[(str(name), str(value)) for name, value in header["headers"]],
                body=body,
            )
        return cls(state=state, fingerprint=str(header["fingerprint"]), response=response)

    def claim(self) -> Claim:
        if self.state == IN_FLIGHT:
            return Claim(Outcome.IN_FLIGHT)
        return Claim(Outcome.COMPLETED, fingerprint=self.fingerprint, response=self.response)


class Completion(enum.Enum):
    """What became of a Redis-store response once the handler returned."""

    STORED = "stored"
    # The lease ran out while the handler ran, but no other request had
    # claimed the key: the response is stored all the same.
    STORED_LATE = "stored late"
    # Another request holds the key now: it may be running the handler again.
    TAKEN_OVER = "taken over"
    # Another request ran the handler again and stored its response.
    REDONE = "redone"


class RedisStore:
    """Records of ``backend="redis"`` views, in Redis only.

    A claim is ``SET NX`` with the lease (``LOCK_TIMEOUT``) as its expiry and
    a random owner token in its value. If the worker dies, the lease runs out
    and a retry may claim the key again (CONTRACT G5). If the worker is only
    slow, the same happens: the lease must outlast the slowest handler.
    Completing or releasing checks the owner token first, so a worker whose
    lease ran out leaves the new owner's record alone.
    """

    NAMESPACE = "redis"

    def __init__(self, alias: str | None) -> None:
        self.redis = connection(alias)

    def claim(self, info: RequestInfo, lock_timeout: timedelta) -> Claim:
        """Raises one of :func:`errors` if Redis cannot be reached."""
        key = record_key(self.NAMESPACE, info.scope, info.key)
        found = claim_or_read(self.redis, key, info.fingerprint, lock_timeout)
        if isinstance(found, Mine):
            return Claim(Outcome.CLAIMED, token=found)
        # A value this package cannot read: never run the handler over it.
        return found or Claim(Outcome.IN_FLIGHT)

    def complete(self, claim: Claim, response: StoredResponse, ttl: timedelta) -> Completion:
        """Store the response if the claim is still ours, or if its lease ran
        out and nobody claimed the key since; otherwise say who has it."""
        mine: Mine = claim.token
        value = encode(COMPLETED, mine.owner, mine.fingerprint, response)
        found = self.redis.eval(COMPLETE, 1, mine.key, mine.value, value, milliseconds(ttl))
        if found == 1:
            return Completion.STORED
        if found == 2:
            return Completion.STORED_LATE
        try:
            taken = Entry.decode(found).state == COMPLETED
        except (ValueError, KeyError, TypeError):
            taken = False  # not a record this package wrote
        return Completion.REDONE if taken else Completion.TAKEN_OVER

    def release(self, claim: Claim) -> bool:
        """Free the key for a corrected retry, if the claim is still ours."""
        return release(self.redis, claim.token)


def release(client: Any, mine: Mine) -> bool:
    """Remove our in-flight value, unless it is no longer ours."""
    return bool(client.eval(RELEASE, 1, mine.key, mine.value))
