"""System checks for ``settings.IDEMPOTENCY``: mistakes show up in
``manage.py check`` (and every ``runserver``/``migrate``), not at the first
request. Each message has a stable id, listed in docs/settings.rst."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings as django_settings
from django.core import checks
from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.urls import get_resolver
from django.utils.module_loading import import_string

from .backends.database import MARIADB, UnsupportedDatabase, dialect_for, max_allowed_packet
from .backends.redis import client as redis
from .conf import (
    BACKENDS,
    DEFAULTS,
    DEFERRED_PATHS,
    NEVER_REPLAYED,
    as_callable,
    as_timedelta,
    settings,
    user_settings,
)
from .options import LONGEST_LOCK_TIMEOUT, LONGEST_TTL, LONGEST_WAIT, REDIS_BACKEND_VIEWS

HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    value = getattr(django_settings, "IDEMPOTENCY", {})
    if not isinstance(value, dict):
        return [
            checks.Error(
                "settings.IDEMPOTENCY must be a dict.",
                hint='For example: IDEMPOTENCY = {"TTL": timedelta(hours=24)}.',
                id="idempotency.E001",
            )
        ]
    errors: list[checks.CheckMessage] = []
    for name in sorted(set(value) - set(DEFAULTS)):
        errors.append(
            checks.Error(
                f"settings.IDEMPOTENCY has an unknown key {name!r}.",
                hint="Valid keys: " + ", ".join(DEFAULTS) + ".",
                id="idempotency.E002",
            )
        )
    for name, check in VALUE_CHECKS.items():
        if name in value:
            errors.extend(check(value[name]))
    return errors


def _error(name: str, problem: str, hint: str, id: str) -> list[checks.CheckMessage]:
    return [checks.Error(f"IDEMPOTENCY[{name!r}] {problem}", hint=hint, id=id)]


def _header(value: Any) -> list[checks.CheckMessage]:
    if _is_header_name(value):
        return []
    return _error(
        "HEADER",
        "must be an HTTP header name of letters, digits and hyphens.",
        'The default is "Idempotency-Key".',
        "idempotency.E003",
    )


def _is_header_name(value: Any) -> bool:
    return isinstance(value, str) and HEADER_NAME.fullmatch(value) is not None


def _duration(name: str, id: str, longest: timedelta, longest_text: str) -> Any:
    def check(value: Any) -> list[checks.CheckMessage]:
        if isinstance(value, (timedelta, int, float)) and not isinstance(value, bool):
            try:
                if timedelta(0) < as_timedelta(value) <= longest:
                    return []
            except (OverflowError, ValueError):  # inf, nan, or beyond timedelta
                pass
        return _error(
            name,
            f"must be a positive timedelta or number of seconds, at most {longest_text}.",
            f"For example: timedelta(seconds={int(DEFAULTS[name].total_seconds())}).",
            id,
        )

    return check


def _wait(value: Any) -> list[checks.CheckMessage]:
    if isinstance(value, (timedelta, int, float)) and not isinstance(value, bool):
        try:
            if timedelta(0) <= as_timedelta(value) <= LONGEST_WAIT:
                return []
        except (OverflowError, ValueError):  # inf, nan, or beyond timedelta
            pass
    return _error(
        "WAIT",
        "must be a timedelta or number of seconds from 0 to 10 minutes.",
        "For example: timedelta(seconds=5), or 0 to answer a duplicate in flight with 409 "
        "at once.",
        "idempotency.E027",
    )


def _boolean(name: str, id: str) -> Any:
    def check(value: Any) -> list[checks.CheckMessage]:
        if isinstance(value, bool):
            return []
        return _error(name, "must be True or False.", f"The default is {DEFAULTS[name]}.", id)

    return check


def _callable(name: str, id: str) -> Any:
    def check(value: Any) -> list[checks.CheckMessage]:
        if callable(value):
            return []
        if isinstance(value, str):
            try:
                if callable(import_string(value)):
                    return []
            except Exception:  # ImportError, or whatever the module raised
                pass
        return _error(
            name,
            "must be a callable taking the request, or the dotted path of one.",
            f'The default is "{DEFAULTS[name]}".',
            id,
        )

    return check


def _replay_headers(value: Any) -> list[checks.CheckMessage]:
    if (
        isinstance(value, str)
        or not isinstance(value, (list, tuple, set, frozenset))
        or not all(_is_header_name(name) for name in value)
    ):
        return _error(
            "REPLAY_HEADERS",
            "must be a list of header names.",
            'For example: ["Content-Type", "Location", "ETag"].',
            "idempotency.E009",
        )
    session = sorted(name for name in value if name.lower() in NEVER_REPLAYED)
    if session:
        return _error(
            "REPLAY_HEADERS",
            f"names {', '.join(session)}, which belong to one client or one exchange and are "
            "never replayed.",
            "Remove them: replaying them would hand one client's session or credentials to "
            "another (Vary is set again on every response, the replay included).",
            "idempotency.E010",
        )
    return []


def _max_response_bytes(value: Any) -> list[checks.CheckMessage]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return []
    return _error(
        "MAX_RESPONSE_BYTES",
        "must be a positive number of bytes.",
        "The default is 1048576 (1 MiB).",
        "idempotency.E012",
    )


def _database(value: Any) -> list[checks.CheckMessage]:
    if not isinstance(value, str) or value not in django_settings.DATABASES:
        return _error(
            "DATABASE",
            f"names {value!r}, which is not in settings.DATABASES.",
            "Name the alias of the database that holds the protected views' data.",
            "idempotency.E013",
        )
    return []


def check_database(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[checks.CheckMessage]:
    """The key table's database must be one the claim works on. Telling
    MariaDB from MySQL takes a connection, so this is a database check: it
    runs with ``migrate`` and ``check --database``."""
    alias = settings.DATABASE
    if not databases or alias not in databases or alias not in django_settings.DATABASES:
        return []
    connection = connections[alias]
    try:
        return _database_server(alias, connection)
    except DatabaseError:
        # Unreachable now: requests answer 503 until it is back, and the
        # checks have nothing to say of a server they cannot ask.
        return []


def _database_server(alias: str, connection: BaseDatabaseWrapper) -> list[checks.CheckMessage]:
    """What the server itself tells: its kind, whether it is a replica, its
    statement size limit."""
    try:
        dialect = dialect_for(connection)
    except UnsupportedDatabase as exc:
        return [
            checks.Error(
                f"IDEMPOTENCY['DATABASE'] names the {alias!r} database: {exc}",
                hint="Put the key table on a PostgreSQL, MariaDB or SQLite database.",
                id="idempotency.E014",
            )
        ]
    if dialect.standby(connection):
        return [
            checks.Error(
                f"IDEMPOTENCY['DATABASE'] names the {alias!r} database, a replica that takes "
                "no writes: no request could claim a key there.",
                hint="Name the primary. The key table must be read and written on the primary: "
                "a replica may lag behind it, and miss a record just claimed or stored.",
                id="idempotency.E028",
            )
        ]
    if dialect is MARIADB:
        return _packet_fits(alias, max_allowed_packet(connection, fresh=True))
    return []


# What a statement storing a response needs besides its body.
STATEMENT_OVERHEAD = 64 * 1024


def _packet_fits(alias: str, packet: int) -> list[checks.CheckMessage]:
    """MariaDB refuses a statement larger than ``max_allowed_packet``; the
    body is sent escaped, which may take up to twice its size."""
    largest = settings.MAX_RESPONSE_BYTES
    if 2 * largest + STATEMENT_OVERHEAD <= packet:
        return []
    message = (
        f"IDEMPOTENCY['MAX_RESPONSE_BYTES'] is {largest}, but the {alias!r} database accepts "
        f"statements of at most {packet} bytes (max_allowed_packet)"
    )
    hint = (
        f"Lower MAX_RESPONSE_BYTES to at most {(packet - STATEMENT_OVERHEAD) // 2}, or raise "
        f"max_allowed_packet on the server to at least {2 * largest + STATEMENT_OVERHEAD}."
    )
    if largest + STATEMENT_OVERHEAD > packet:
        return [
            checks.Error(
                f"{message}: a response that large could never be stored.",
                hint=hint,
                id="idempotency.E026",
            )
        ]
    return [
        checks.Warning(
            f"{message}, and a body may take up to twice its size once escaped: some responses "
            "under that limit could not be stored, and would fail like one over it.",
            hint=hint,
            id="idempotency.W003",
        )
    ]


def check_sqlite_transactions(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """SQLite with ATOMIC_REQUESTS needs transactions that take the write lock
    as they begin: otherwise each request's transaction starts by reading
    (authentication), and SQLite refuses at once to let it write while
    another request writes, whatever its busy timeout."""
    alias = settings.DATABASE
    return _sqlite_transactions(alias, django_settings.DATABASES.get(alias, {}))


def _sqlite_transactions(alias: str, database: dict[str, Any]) -> list[checks.CheckMessage]:
    if (
        database.get("ENGINE") != "django.db.backends.sqlite3"
        or not database.get("ATOMIC_REQUESTS")
        or str(database.get("OPTIONS", {}).get("transaction_mode", "")).upper()
        in ("IMMEDIATE", "EXCLUSIVE")
    ):
        return []
    return [
        checks.Warning(
            f"The {alias!r} database is SQLite with ATOMIC_REQUESTS, and its transactions begin "
            "without the write lock: concurrent protected requests would get 409 instead of "
            "waiting their turn, even with different keys.",
            hint='Add "OPTIONS": {"transaction_mode": "IMMEDIATE"} to that database: each '
            "request's transaction then waits for the write lock (up to the connection's "
            "timeout) as it begins.",
            id="idempotency.W004",
        )
    ]


def check_openapi(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """With drf-spectacular, the key header and the problem responses are in
    the schema only if its schema class documents them."""
    if not apps.is_installed("drf_spectacular"):
        return []
    from drf_spectacular.openapi import AutoSchema
    from rest_framework.settings import api_settings

    from .openapi import IdempotencySchemaMixin

    schema_class = api_settings.DEFAULT_SCHEMA_CLASS
    if not isinstance(schema_class, type) or not issubclass(schema_class, AutoSchema):
        return []  # another generator, which drf-spectacular reports itself
    if issubclass(schema_class, IdempotencySchemaMixin):
        return []
    return [
        checks.Warning(
            "drf-spectacular's schema does not document protected operations: their "
            f"{settings.HEADER} header, the replay header and the problem responses "
            "(400, 409, 413, 422, 503) are missing from it.",
            hint='Set REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = '
            '"idempotency.openapi.AutoSchema", or put '
            "idempotency.openapi.IdempotencySchemaMixin first among the bases of your own "
            "schema class.",
            id="idempotency.W005",
        )
    ]


def _redis(value: Any) -> list[checks.CheckMessage]:
    if value is None:
        return []
    return _redis_cache("REDIS", value)


def _accelerator(value: Any) -> list[checks.CheckMessage]:
    if isinstance(value, bool):
        return []
    if isinstance(value, str):
        return _redis_cache("REDIS_ACCELERATOR", value)
    return _error(
        "REDIS_ACCELERATOR",
        "must be True, False or the alias of a django-redis cache.",
        'The default is True: the accelerator uses IDEMPOTENCY["REDIS"].',
        "idempotency.E020",
    )


def _redis_cache(name: str, value: Any) -> list[checks.CheckMessage]:
    """``value`` must name a django-redis cache this package can use."""
    caches = getattr(django_settings, "CACHES", {})
    if not isinstance(value, str) or value not in caches:
        return _error(
            name,
            f"names {value!r}, which is not in settings.CACHES.",
            "Name the alias of a django-redis cache, for example: CACHES = {'idempotency': "
            "{'BACKEND': 'django_redis.cache.RedisCache', 'LOCATION': 'redis://127.0.0.1:6379/1'}}.",
            "idempotency.E016",
        )
    backend = str(caches[value].get("BACKEND", ""))
    if backend in LOCAL_CACHES:
        return _error(
            name,
            f"names the {value!r} cache, a {backend.rsplit('.', 2)[-2]} cache, which each "
            "process keeps for itself (or not at all): duplicates reaching two processes "
            "would both run.",
            "Use a django-redis cache (BACKEND 'django_redis.cache.RedisCache') that every "
            "server process shares.",
            "idempotency.E017",
        )
    try:
        from django_redis.cache import RedisCache
        from django_redis.client import ShardClient
    except ImportError:
        return _error(
            name,
            "needs django-redis, which is not installed.",
            "pip install 'django-idempotency[redis]'",
            "idempotency.E018",
        )
    try:
        cache_class = import_string(backend)
        client_class = import_string(
            caches[value]
            .get("OPTIONS", {})
            .get("CLIENT_CLASS", "django_redis.client.DefaultClient")
        )
    except ImportError:
        cache_class = client_class = None
    if not (isinstance(cache_class, type) and issubclass(cache_class, RedisCache)):
        return _error(
            name,
            f"names the {value!r} cache, whose BACKEND {backend!r} is not django-redis's.",
            "Use BACKEND 'django_redis.cache.RedisCache'; Django's own "
            "django.core.cache.backends.redis.RedisCache has no raw connection to share.",
            "idempotency.E019",
        )
    if isinstance(client_class, type) and issubclass(client_class, ShardClient):
        return _error(
            name,
            f"names the {value!r} cache, whose ShardClient gives no single connection.",
            "Use the DefaultClient (one primary, optional replicas) or the SentinelClient.",
            "idempotency.E019",
        )
    try:
        # Builds the client from the cache's OPTIONS; connects to nothing.
        redis.connection(value)
    except redis.Unusable as exc:
        return _error(
            name,
            f"cannot be used: {exc}.",
            "Fix the cache's LOCATION and OPTIONS (records are bytes: leave decode_responses "
            "off). A Redis Cluster's client asks a node for the slot map as it is built: "
            "check that one answers.",
            "idempotency.E024",
        )
    options = caches[value].get("OPTIONS", {})
    if options.get("SOCKET_TIMEOUT") is None or options.get("SOCKET_CONNECT_TIMEOUT") is None:
        return [
            checks.Warning(
                f"IDEMPOTENCY[{name!r}] names the {value!r} cache, which sets no "
                "SOCKET_TIMEOUT or no SOCKET_CONNECT_TIMEOUT: a Redis that hangs would hold "
                "requests for as long as it hangs, instead of failing over at once.",
                hint="Set both in the cache's OPTIONS, for example to 0.5 seconds.",
                id="idempotency.W002",
            )
        ]
    return []


MOST_REPLICAS = 100


def _replicas(value: Any) -> list[checks.CheckMessage]:
    # Redis refuses a WAIT for more replicas than a 64-bit count; no
    # deployment has more than a handful anyway.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MOST_REPLICAS:
        return []
    return _error(
        "REDIS_REPLICAS",
        f"must be a whole number of replicas, from 0 to {MOST_REPLICAS}.",
        "The default is 0 (no waiting for replicas); 1 makes each claim of a "
        'backend="redis" view wait until a replica has it.',
        "idempotency.E029",
    )


def _backend(value: Any) -> list[checks.CheckMessage]:
    if value in BACKENDS:
        return []
    return _error(
        "BACKEND",
        'must be "database" or "redis".',
        'The default is "database": records commit with the handler\'s database effects.',
        "idempotency.E015",
    )


def _key_prefix(value: Any) -> list[checks.CheckMessage]:
    if isinstance(value, str) and value and value.isprintable() and " " not in value:
        return []
    return _error(
        "REDIS_KEY_PREFIX",
        "must be a non-empty string without spaces.",
        'The default is "idempotency".',
        "idempotency.E022",
    )


def check_redis(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Views that keep their records in Redis need ``IDEMPOTENCY["REDIS"]``."""
    value = user_settings()
    if value.get("REDIS") is not None:
        replicas = value.get("REDIS_REPLICAS")
        # With REDIS_REPLICAS, a replica that falls behind is an outage too.
        lagging = (
            " or fewer than REDIS_REPLICAS replicas keep up with it"
            if type(replicas) is int and replicas > 0
            else ""
        )
        return (
            [
                checks.Warning(
                    f"IDEMPOTENCY['REDIS_FAIL_OPEN'] is on: while Redis is unreachable{lagging}, "
                    'views with backend="redis" run every request, duplicates included.',
                    hint="Turn it off unless running a duplicate is better than a 503 for "
                    "those views.",
                    id="idempotency.W001",
                )
            ]
            if value.get("REDIS_FAIL_OPEN") is True
            else []
        ) + _replicas_need_one_master(value)
    users = []
    if value.get("BACKEND") == "redis":
        users.append('IDEMPOTENCY["BACKEND"]')
    _import_views()
    users.extend(sorted(REDIS_BACKEND_VIEWS))
    if not users:
        return []
    return [
        checks.Error(
            'backend="redis" is chosen by '
            + ", ".join(users)
            + ', but IDEMPOTENCY["REDIS"] names no django-redis cache.',
            hint='Set IDEMPOTENCY["REDIS"] to the alias of a django-redis cache in '
            "settings.CACHES.",
            id="idempotency.E021",
        )
    ]


def _replicas_need_one_master(value: dict[str, Any]) -> list[checks.CheckMessage]:
    """``REDIS_REPLICAS`` sends WAIT after a claim on the connection that
    made it, to the one master: a client of a master and its replicas (the
    DefaultClient, the SentinelClient) has such connections, a client that
    spreads keys over several masters (a Redis Cluster's) has none."""
    replicas = value.get("REDIS_REPLICAS")
    if type(replicas) is not int or replicas <= 0:
        return []
    try:
        from redis import Redis

        client = redis.connection(value["REDIS"])
    except Exception:  # what the checks of REDIS report (E016-E019, E024)
        return []
    if isinstance(client, Redis):
        return []
    return [
        checks.Error(
            f"IDEMPOTENCY['REDIS_REPLICAS'] is {replicas}, but the {value['REDIS']!r} cache's "
            f"client ({type(client).__name__}) is not a client of one Redis master: the WAIT "
            "that must follow each claim on its own connection cannot be sent.",
            hint="Use django-redis's DefaultClient or SentinelClient, or set REDIS_REPLICAS to 0.",
            id="idempotency.E030",
        )
    ]


def _import_views() -> None:
    """The decorators and the mixin register their views as the URLconf is
    imported; import it here, since the order of system checks is not fixed.
    Its own errors are Django's URL checks' to report."""
    with contextlib.suppress(Exception):
        get_resolver().url_patterns  # noqa: B018


def check_view_options(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Dotted paths that a view could not resolve where it was defined, its
    module being still imported then, must resolve now that it is."""
    _import_views()
    errors: list[checks.CheckMessage] = []
    for deferred in DEFERRED_PATHS:
        try:
            as_callable(deferred.path, deferred.label)
        except Exception as exc:  # whatever importing the module raised
            errors.append(
                checks.Error(
                    str(exc),
                    hint="Give the dotted path of a callable taking the request, or the "
                    "callable itself.",
                    id="idempotency.E025",
                )
            )
    return errors


VALUE_CHECKS = {
    "HEADER": _header,
    "TTL": _duration("TTL", "idempotency.E004", LONGEST_TTL, "100 years"),
    "LOCK_TIMEOUT": _duration("LOCK_TIMEOUT", "idempotency.E005", LONGEST_LOCK_TIMEOUT, "24 days"),
    "WAIT": _wait,
    "REQUIRED": _boolean("REQUIRED", "idempotency.E006"),
    "SCOPE": _callable("SCOPE", "idempotency.E007"),
    "FINGERPRINT": _callable("FINGERPRINT", "idempotency.E008"),
    "REPLAY_HEADERS": _replay_headers,
    "STORE_SERVER_ERRORS": _boolean("STORE_SERVER_ERRORS", "idempotency.E011"),
    "MAX_RESPONSE_BYTES": _max_response_bytes,
    "DATABASE": _database,
    "BACKEND": _backend,
    "REDIS": _redis,
    "REDIS_ACCELERATOR": _accelerator,
    "REDIS_KEY_PREFIX": _key_prefix,
    "REDIS_FAIL_OPEN": _boolean("REDIS_FAIL_OPEN", "idempotency.E023"),
    "REDIS_REPLICAS": _replicas,
}

# Caches that live in one process, or nowhere.
LOCAL_CACHES = frozenset(
    {
        "django.core.cache.backends.locmem.LocMemCache",
        "django.core.cache.backends.dummy.DummyCache",
    }
)
