"""The system checks on ``settings.IDEMPOTENCY`` and the lazily read settings."""

from __future__ import annotations

import sys
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections
from django.test import override_settings
from django_redis.client import DefaultClient

from idempotency import checks as checks_module
from idempotency.checks import (
    check_database,
    check_redis,
    check_settings,
    check_sqlite_transactions,
    check_view_options,
)
from idempotency.conf import DeferredPath, settings
from idempotency.keys import default_scope
from tests import servers


def custom_callable() -> None:
    """A callable for the settings that accept one."""


NOT_CALLABLE = 42


def ids(value) -> list[str]:
    with override_settings(IDEMPOTENCY=value):
        return [error.id for error in check_settings()]


def only_error(value):
    with override_settings(IDEMPOTENCY=value):
        errors = check_settings()
    assert len(errors) == 1, errors
    return errors[0]


# Absent, empty and valid settings.


@override_settings()
def test_absent_setting_is_valid():
    del django_settings.IDEMPOTENCY
    assert not hasattr(django_settings, "IDEMPOTENCY")
    assert check_settings() == []


def test_empty_setting_is_valid():
    assert ids({}) == []


def test_full_valid_setting():
    assert (
        ids(
            {
                "HEADER": "X-Request-Key",
                "TTL": timedelta(hours=1),
                "LOCK_TIMEOUT": 30,
                "REQUIRED": False,
                "SCOPE": "idempotency.keys.default_scope",
                "FINGERPRINT": custom_callable,
                "REPLAY_HEADERS": ["Content-Type", "ETag"],
                "STORE_SERVER_ERRORS": True,
                "MAX_RESPONSE_BYTES": 1000,
                "DATABASE": "other",
            }
        )
        == []
    )


@pytest.mark.parametrize("value", [0.5, 10, timedelta(seconds=1)])
def test_durations_accept_positive_numbers_and_timedeltas(value):
    assert ids({"TTL": value, "LOCK_TIMEOUT": value}) == []


@pytest.mark.parametrize("value", [(), set(), frozenset({"ETag"}), ("Location",)])
def test_replay_headers_accepts_any_collection_of_names(value):
    assert ids({"REPLAY_HEADERS": value}) == []


# E001, E002: the setting as a whole.


@pytest.mark.parametrize("value", ["TTL", ["TTL"], None])
def test_e001_not_a_dict(value):
    error = only_error(value)
    assert error.id == "idempotency.E001"
    assert error.msg == "settings.IDEMPOTENCY must be a dict."
    assert error.hint == 'For example: IDEMPOTENCY = {"TTL": timedelta(hours=24)}.'


def test_e002_unknown_key():
    error = only_error({"TLL": 60})
    assert error.id == "idempotency.E002"
    assert error.msg == "settings.IDEMPOTENCY has an unknown key 'TLL'."
    assert error.hint == (
        "Valid keys: HEADER, TTL, LOCK_TIMEOUT, WAIT, REQUIRED, SCOPE, FINGERPRINT, "
        "REPLAY_HEADERS, STORE_SERVER_ERRORS, MAX_RESPONSE_BYTES, DATABASE, BACKEND, REDIS, "
        "REDIS_ACCELERATOR, REDIS_KEY_PREFIX, REDIS_FAIL_OPEN, REDIS_REPLICAS."
    )


def test_e002_one_error_per_unknown_key_sorted():
    with override_settings(IDEMPOTENCY={"ttl": 1, "HEADERS": "x", "TTL": 60}):
        errors = check_settings()
    assert [(error.id, error.msg) for error in errors] == [
        ("idempotency.E002", "settings.IDEMPOTENCY has an unknown key 'HEADERS'."),
        ("idempotency.E002", "settings.IDEMPOTENCY has an unknown key 'ttl'."),
    ]


# E003..E013: one value each.


@pytest.mark.parametrize(
    "value", ["Idempotency Key", "", "-Key", "Key:", "Ключ", "Idempotency-Key\n", 5, None]
)
def test_e003_header(value):
    error = only_error({"HEADER": value})
    assert error.id == "idempotency.E003"
    assert error.msg == (
        "IDEMPOTENCY['HEADER'] must be an HTTP header name of letters, digits and hyphens."
    )


BAD_DURATIONS = [
    0,
    -1,
    timedelta(0),
    timedelta(seconds=-5),
    True,
    "60",
    None,
    float("inf"),
    float("nan"),
    1e15,
    timedelta(days=36501),
]


@pytest.mark.parametrize("value", BAD_DURATIONS)
def test_e004_ttl(value):
    error = only_error({"TTL": value})
    assert error.id == "idempotency.E004"
    assert error.msg == (
        "IDEMPOTENCY['TTL'] must be a positive timedelta or number of seconds, at most 100 years."
    )
    assert error.hint == "For example: timedelta(seconds=86400)."


@pytest.mark.parametrize("value", [*BAD_DURATIONS, timedelta(days=25), 30 * 24 * 3600])
def test_e005_lock_timeout(value):
    # PostgreSQL takes it as an int4 of milliseconds: at most about 24.8 days.
    error = only_error({"LOCK_TIMEOUT": value})
    assert error.id == "idempotency.E005"
    assert error.msg == (
        "IDEMPOTENCY['LOCK_TIMEOUT'] must be a positive timedelta or number of seconds, "
        "at most 24 days."
    )
    assert error.hint == "For example: timedelta(seconds=60)."


@pytest.mark.parametrize(
    "value", [-1, timedelta(seconds=-1), 601, timedelta(minutes=11), "5", True, None, float("nan")]
)
def test_e027_wait(value):
    error = only_error({"WAIT": value})
    assert error.id == "idempotency.E027"
    assert error.msg == (
        "IDEMPOTENCY['WAIT'] must be a timedelta or number of seconds from 0 to 10 minutes."
    )


@pytest.mark.parametrize("value", [0, 5, 2.5, timedelta(minutes=10)])
def test_a_wait_from_nothing_to_ten_minutes_is_fine(value):
    with override_settings(IDEMPOTENCY={"WAIT": value}):
        assert check_settings() == []


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_e006_required(value):
    error = only_error({"REQUIRED": value})
    assert error.id == "idempotency.E006"
    assert error.msg == "IDEMPOTENCY['REQUIRED'] must be True or False."
    assert error.hint == "The default is True."


BAD_CALLABLES = [
    "idempotency.keys.no_such_function",
    "no_such_module.scope",
    "not a path",
    "idempotency.conf.DEFAULTS",
    "tests.testapp.broken.scope",  # a module that raises as it is imported
    NOT_CALLABLE,
    None,
]


@pytest.mark.parametrize("value", BAD_CALLABLES)
def test_e007_scope(value):
    error = only_error({"SCOPE": value})
    assert error.id == "idempotency.E007"
    assert error.msg == (
        "IDEMPOTENCY['SCOPE'] must be a callable taking the request, or the dotted path of one."
    )
    assert error.hint == 'The default is "idempotency.keys.default_scope".'


@pytest.mark.parametrize("value", BAD_CALLABLES)
def test_e008_fingerprint(value):
    error = only_error({"FINGERPRINT": value})
    assert error.id == "idempotency.E008"
    assert error.hint == 'The default is "idempotency.fingerprint.default_fingerprint".'


def test_e025_a_views_deferred_path_that_does_not_resolve(monkeypatch):
    deferred = [
        DeferredPath("The scope of @idempotent on app.views.charge", "app.views.below"),
        DeferredPath("The scope of app.views.Charges", "tests.testapp.views.GATES"),
        DeferredPath("The scope of app.views.Fine", "tests.testapp.views.scope_by_tenant"),
    ]
    monkeypatch.setattr(checks_module, "DEFERRED_PATHS", deferred)
    errors = check_view_options()
    assert [error.id for error in errors] == ["idempotency.E025"] * 2
    assert errors[0].msg.startswith(
        "The scope of @idempotent on app.views.charge 'app.views.below' cannot be imported: "
    )
    assert errors[1].msg == (
        "The scope of app.views.Charges 'tests.testapp.views.GATES' is not a callable."
    )
    assert errors[1].hint == (
        "Give the dotted path of a callable taking the request, or the callable itself."
    )


def test_e025_the_projects_deferred_paths_resolve():
    assert check_view_options() == []


@pytest.mark.parametrize(
    "value", ["ETag", [1], ["ETag", None], {"ETag": 1}, None, ["Bad Header"], [""]]
)
def test_e009_replay_headers_not_a_list(value):
    error = only_error({"REPLAY_HEADERS": value})
    assert error.id == "idempotency.E009"
    assert error.msg == "IDEMPOTENCY['REPLAY_HEADERS'] must be a list of header names."


def test_e010_session_headers():
    error = only_error({"REPLAY_HEADERS": ["Vary", "ETag", "Set-Cookie"]})
    assert error.id == "idempotency.E010"
    assert error.msg == (
        "IDEMPOTENCY['REPLAY_HEADERS'] names Set-Cookie, Vary, which belong to one client or "
        "one exchange and are never replayed."
    )
    assert error.hint == (
        "Remove them: replaying them would hand one client's session or credentials to "
        "another (Vary is set again on every response, the replay included)."
    )


@pytest.mark.parametrize(
    "name",
    ["set-cookie", "WWW-Authenticate", "X-CSRFToken", "Clear-Site-Data", "Proxy-Authenticate"],
)
def test_e010_any_spelling(name):
    assert ids({"REPLAY_HEADERS": ["ETag", name]}) == ["idempotency.E010"]


@pytest.mark.parametrize("value", [1, "True", None])
def test_e011_store_server_errors(value):
    error = only_error({"STORE_SERVER_ERRORS": value})
    assert error.id == "idempotency.E011"
    assert error.msg == "IDEMPOTENCY['STORE_SERVER_ERRORS'] must be True or False."
    assert error.hint == "The default is False."


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "1024", None])
def test_e012_max_response_bytes(value):
    error = only_error({"MAX_RESPONSE_BYTES": value})
    assert error.id == "idempotency.E012"
    assert error.msg == "IDEMPOTENCY['MAX_RESPONSE_BYTES'] must be a positive number of bytes."


def test_e013_unknown_alias():
    error = only_error({"DATABASE": "replica"})
    assert error.id == "idempotency.E013"
    assert error.msg == (
        "IDEMPOTENCY['DATABASE'] names 'replica', which is not in settings.DATABASES."
    )


@pytest.mark.parametrize("value", [None, 0, ["default"]])
def test_e013_not_a_string(value):
    assert ids({"DATABASE": value}) == ["idempotency.E013"]


# E014 is a database check: telling MariaDB from MySQL takes a connection.


@pytest.mark.django_db  # a database check: on MariaDB it reads max_allowed_packet
def test_e014_unsupported_vendor(monkeypatch):
    monkeypatch.setattr(connections["other"], "vendor", "oracle")
    with override_settings(IDEMPOTENCY={"DATABASE": "other"}):
        errors = check_database(databases=["default", "other"])
        assert [(error.id, error.msg) for error in errors] == [
            (
                "idempotency.E014",
                "IDEMPOTENCY['DATABASE'] names the 'other' database: django-idempotency "
                "supports PostgreSQL, MariaDB and SQLite, not oracle.",
            )
        ]
        # Only when that database is being checked.
        assert check_database(databases=["default"]) == []
        assert check_database(databases=None) == []
    # The default alias is still supported: only the key table's alias is checked.
    assert check_database(databases=["default", "other"]) == []


@pytest.mark.django_db(databases=["default", "other"])
def test_e014_runs_with_migrate_style_checks(monkeypatch):
    monkeypatch.setattr(connections["default"], "vendor", "microsoft")
    with pytest.raises(SystemCheckError, match=r"idempotency\.E014"):
        call_command("check", databases=["default"])


# E026 and W003: MariaDB's max_allowed_packet against MAX_RESPONSE_BYTES.
SIXTEEN_MIB = 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("largest", "expected"),
    [
        (SIXTEEN_MIB // 2 - 32 * 1024, []),
        (SIXTEEN_MIB // 2, ["idempotency.W003"]),
        (SIXTEEN_MIB - 64 * 1024, ["idempotency.W003"]),
        (SIXTEEN_MIB, ["idempotency.E026"]),
    ],
)
def test_e026_w003_the_largest_response_against_the_packet(largest, expected):
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": largest}):
        assert [message.id for message in checks_module._packet_fits("default", SIXTEEN_MIB)] == (
            expected
        )


def test_e026_says_what_to_change():
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": 32 * 1024 * 1024}):
        (error,) = checks_module._packet_fits("default", SIXTEEN_MIB)
    assert error.msg == (
        "IDEMPOTENCY['MAX_RESPONSE_BYTES'] is 33554432, but the 'default' database accepts "
        "statements of at most 16777216 bytes (max_allowed_packet): a response that large "
        "could never be stored."
    )
    assert error.hint == (
        "Lower MAX_RESPONSE_BYTES to at most 8355840, or raise max_allowed_packet on the "
        "server to at least 67174400."
    )


@pytest.mark.vendor("mysql")
@pytest.mark.django_db
def test_e026_reads_the_servers_packet():
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT @@max_allowed_packet")
        packet = cursor.fetchone()[0]
    with override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": packet}):
        assert [error.id for error in check_database(databases=["default"])] == [
            "idempotency.E026"
        ]
    assert check_database(databases=["default"]) == []


# W004: SQLite under ATOMIC_REQUESTS without IMMEDIATE transactions.


def sqlite(**settings_dict):
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": "x", **settings_dict}


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        (sqlite(), []),
        (sqlite(ATOMIC_REQUESTS=True), ["idempotency.W004"]),
        (
            sqlite(ATOMIC_REQUESTS=True, OPTIONS={"transaction_mode": "DEFERRED"}),
            ["idempotency.W004"],
        ),
        (sqlite(ATOMIC_REQUESTS=True, OPTIONS={"transaction_mode": "IMMEDIATE"}), []),
        (sqlite(ATOMIC_REQUESTS=True, OPTIONS={"transaction_mode": "exclusive"}), []),
        ({"ENGINE": "django.db.backends.postgresql", "ATOMIC_REQUESTS": True}, []),
    ],
)
def test_w004_sqlite_under_atomic_requests(database, expected):
    messages = checks_module._sqlite_transactions("default", database)
    assert [message.id for message in messages] == expected


def test_w004_says_what_to_change():
    (warning,) = checks_module._sqlite_transactions("default", sqlite(ATOMIC_REQUESTS=True))
    assert warning.msg == (
        "The 'default' database is SQLite with ATOMIC_REQUESTS, and its transactions begin "
        "without the write lock: concurrent protected requests would get 409 instead of "
        "waiting their turn, even with different keys."
    )
    assert warning.hint == (
        'Add "OPTIONS": {"transaction_mode": "IMMEDIATE"} to that database: each request\'s '
        "transaction then waits for the write lock (up to the connection's timeout) as it "
        "begins."
    )


def test_w004_reads_the_key_tables_database(atomic_requests):
    expected = ["idempotency.W004"] if connections["default"].vendor == "sqlite" else []
    assert [message.id for message in check_sqlite_transactions()] == expected


def test_every_bad_value_is_reported():
    assert ids(
        {
            "HEADER": "",
            "TTL": 0,
            "LOCK_TIMEOUT": 0,
            "REQUIRED": None,
            "SCOPE": None,
            "FINGERPRINT": None,
            "REPLAY_HEADERS": "ETag",
            "STORE_SERVER_ERRORS": None,
            "MAX_RESPONSE_BYTES": 0,
            "DATABASE": "replica",
            "EXTRA": 1,
        }
    ) == [f"idempotency.E{number:03}" for number in [2, *range(3, 10), 11, 12, 13]]


# E015-E023, W001: Redis.

REDIS_CACHE = {
    "BACKEND": "django_redis.cache.RedisCache",
    "LOCATION": "redis://127.0.0.1:1/0",
    "OPTIONS": {"SOCKET_TIMEOUT": 0.5, "SOCKET_CONNECT_TIMEOUT": 0.5},
}


class ClientWithoutConnectionKwargs(DefaultClient):
    """A client class whose client is not a redis-py one."""

    def get_client(self, write: bool = True, **kwargs) -> object:
        return object()


def redis_errors(cache: dict | None, **idempotency) -> list:
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    if cache is not None:
        caches["store"] = cache
    with override_settings(CACHES=caches, IDEMPOTENCY={"REDIS": "store", **idempotency}):
        return [(error.id, error.msg, error.hint) for error in check_settings() + check_redis()]


def test_redis_settings_valid():
    assert redis_errors(REDIS_CACHE) == []
    # Sentinel, as django-redis documents it (nothing is contacted).
    sentinel = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://mymaster/0",
        "OPTIONS": {
            **REDIS_CACHE["OPTIONS"],
            "CLIENT_CLASS": "django_redis.client.SentinelClient",
            "CONNECTION_POOL_CLASS": "redis.sentinel.SentinelConnectionPool",
            "SENTINELS": [("127.0.0.1", 1)],
        },
    }
    factory = "django_redis.pool.SentinelConnectionFactory"
    with override_settings(DJANGO_REDIS_CONNECTION_FACTORY=factory):
        errors = redis_errors(sentinel, REDIS_ACCELERATOR=False, REDIS_KEY_PREFIX="shop:idem")
    assert errors == []
    assert redis_errors(REDIS_CACHE, BACKEND="redis") == []


def test_redis_unset_is_valid(monkeypatch):
    assert ids({"REDIS": None}) == []
    # Without views that chose backend="redis", nothing needs it.
    monkeypatch.setattr(checks_module, "REDIS_BACKEND_VIEWS", set())
    with override_settings(IDEMPOTENCY={}):
        assert check_redis() == []


def test_e015_backend():
    assert ids({"BACKEND": "memcached"}) == ["idempotency.E015"]
    assert only_error({"BACKEND": None}).msg == (
        'IDEMPOTENCY[\'BACKEND\'] must be "database" or "redis".'
    )


def test_e016_missing_cache_alias():
    ((id, msg, hint),) = redis_errors(None)
    assert id == "idempotency.E016"
    assert msg == "IDEMPOTENCY['REDIS'] names 'store', which is not in settings.CACHES."
    assert "django_redis.cache.RedisCache" in hint
    assert ids({"REDIS": 6379}) == ["idempotency.E016"]


@pytest.mark.parametrize(
    ("backend", "name"),
    [
        ("django.core.cache.backends.locmem.LocMemCache", "locmem"),
        ("django.core.cache.backends.dummy.DummyCache", "dummy"),
    ],
)
def test_e017_process_local_caches(backend, name):
    ((id, msg, hint),) = redis_errors({"BACKEND": backend})
    assert id == "idempotency.E017"
    assert msg == (
        f"IDEMPOTENCY['REDIS'] names the 'store' cache, a {name} cache, which each process "
        "keeps for itself (or not at all): duplicates reaching two processes would both run."
    )
    assert hint == (
        "Use a django-redis cache (BACKEND 'django_redis.cache.RedisCache') that every server "
        "process shares."
    )


def test_e018_django_redis_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "django_redis.cache", None)
    ((id, _msg, hint),) = redis_errors(REDIS_CACHE)
    assert id == "idempotency.E018"
    assert hint == "pip install 'django-idempotency[redis]'"


@pytest.mark.parametrize(
    "cache",
    [
        {"BACKEND": "django.core.cache.backends.redis.RedisCache"},
        {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache"},
        {"BACKEND": "no.such.Cache"},
        {**REDIS_CACHE, "OPTIONS": {"CLIENT_CLASS": "django_redis.client.ShardClient"}},
    ],
)
def test_e019_not_a_django_redis_connection(cache):
    ((id, msg, _hint),) = redis_errors(cache)
    assert id == "idempotency.E019"
    assert msg.startswith("IDEMPOTENCY['REDIS'] names the 'store' cache, whose ")


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"SOCKET_TIMEOUT": "1"}, "Socket timeout should be float or integer"),
        ({"CONNECTION_POOL_KWARGS": {"decode_responses": True}}, "decode_responses=True"),
    ],
)
def test_e024_unusable_connection(options, problem):
    # A URL of its own: django-redis keeps one connection pool per URL.
    cache = {**REDIS_CACHE, "LOCATION": "redis://127.0.0.1:1/13", "OPTIONS": options}
    ((id, msg, hint),) = redis_errors(cache)
    assert id == "idempotency.E024"
    assert msg.startswith("IDEMPOTENCY['REDIS'] cannot be used: the 'store' cache ")
    assert problem in msg
    assert hint.startswith("Fix the cache's LOCATION and OPTIONS (records are bytes: leave ")


def test_e024_a_client_that_is_not_redis_py():
    options = {
        **REDIS_CACHE["OPTIONS"],
        "CLIENT_CLASS": f"{__name__}.ClientWithoutConnectionKwargs",
    }
    cache = {**REDIS_CACHE, "LOCATION": "redis://127.0.0.1:1/11", "OPTIONS": options}
    ((id, msg, _hint),) = redis_errors(cache)
    assert id == "idempotency.E024"
    assert "AttributeError" in msg


def test_w002_no_socket_timeouts():
    cache = {**REDIS_CACHE, "LOCATION": "redis://127.0.0.1:1/12", "OPTIONS": {}}
    ((id, msg, hint),) = redis_errors(cache)
    assert id == "idempotency.W002"
    assert msg.startswith("IDEMPOTENCY['REDIS'] names the 'store' cache, which sets no ")
    assert hint == "Set both in the cache's OPTIONS, for example to 0.5 seconds."


def test_the_accelerator_may_name_its_own_cache():
    assert redis_errors(REDIS_CACHE, REDIS_ACCELERATOR="store") == []
    ((id, msg, _hint),) = redis_errors(REDIS_CACHE, REDIS_ACCELERATOR="nowhere")
    assert id == "idempotency.E016"
    assert (
        msg == "IDEMPOTENCY['REDIS_ACCELERATOR'] names 'nowhere', which is not in settings.CACHES."
    )


def test_e020_e022_e023_values():
    assert ids(
        {"REDIS_ACCELERATOR": 1, "REDIS_KEY_PREFIX": "has space", "REDIS_FAIL_OPEN": 1}
    ) == ["idempotency.E020", "idempotency.E022", "idempotency.E023"]
    assert ids({"REDIS_KEY_PREFIX": ""}) == ["idempotency.E022"]


def test_e021_redis_backend_without_redis():
    with override_settings(IDEMPOTENCY={"BACKEND": "redis"}):
        (error,) = check_redis()
    assert error.id == "idempotency.E021"
    # The test URLconf's views that chose backend="redis" are named too (and
    # any other test module's, once imported).
    assert error.msg.startswith('backend="redis" is chosen by IDEMPOTENCY["BACKEND"], ')
    assert error.msg.endswith(', but IDEMPOTENCY["REDIS"] names no django-redis cache.')
    assert (
        "tests.testapp.async_views.AdrfDecorated.post, "
        "tests.testapp.hostile_views.async_redis_slow, "
        "tests.testapp.hostile_views.sync_redis_slow, "
        "tests.testapp.views.RedisChargeView, tests.testapp.views.redis_charge, "
    ) in error.msg
    with override_settings(IDEMPOTENCY={}):
        (error,) = check_redis()
    assert error.msg.startswith('backend="redis" is chosen by tests.')
    assert "IDEMPOTENCY" not in error.msg.split(", but")[0]


@pytest.mark.django_db(databases=["default", "other"])
def test_e021_reported_by_the_check_command():
    with (
        override_settings(IDEMPOTENCY={}),
        pytest.raises(SystemCheckError, match=r"idempotency\.E021"),
    ):
        call_command("check")


def test_w001_fail_open_warns():
    ((id, msg, _hint),) = redis_errors(REDIS_CACHE, REDIS_FAIL_OPEN=True)
    assert id == "idempotency.W001"
    assert "duplicates included" in msg
    assert "REDIS_REPLICAS" not in msg


def test_w001_fail_open_with_replicas_names_their_lag_too():
    ((id, msg, _hint),) = redis_errors(REDIS_CACHE, REDIS_FAIL_OPEN=True, REDIS_REPLICAS=1)
    assert id == "idempotency.W001"
    assert "or fewer than REDIS_REPLICAS replicas keep up with it" in msg


# Registration.


# Django 6.1's model checks ask each database about its JSON support.
@pytest.mark.django_db(databases=["default", "other"])
def test_check_is_registered():
    with (
        override_settings(IDEMPOTENCY={"TTL": -1}),
        pytest.raises(SystemCheckError, match=r"idempotency\.E004"),
    ):
        call_command("check")


@pytest.mark.django_db(databases=["default", "other"])
@override_settings(IDEMPOTENCY={"TTL": 60, "REDIS": "idempotency"})
def test_check_command_passes_with_valid_settings():
    call_command("check")


# The settings object.


def test_settings_are_read_on_each_access():
    assert timedelta(hours=24) == settings.TTL
    with override_settings(IDEMPOTENCY={"TTL": timedelta(minutes=5)}):
        assert timedelta(minutes=5) == settings.TTL
        with override_settings(IDEMPOTENCY={"TTL": timedelta(minutes=7)}):
            assert timedelta(minutes=7) == settings.TTL
        assert timedelta(minutes=5) == settings.TTL
    assert timedelta(hours=24) == settings.TTL


def test_defaults():
    with override_settings(IDEMPOTENCY={}):
        assert settings.HEADER == "Idempotency-Key"
        assert timedelta(hours=24) == settings.TTL
        assert timedelta(seconds=60) == settings.LOCK_TIMEOUT
        assert settings.REQUIRED is True
        assert settings.SCOPE is default_scope
        assert settings.STORE_SERVER_ERRORS is False
        assert settings.MAX_RESPONSE_BYTES == 1048576
        assert settings.DATABASE == "default"


def test_non_dict_setting_reads_as_defaults():
    with override_settings(IDEMPOTENCY="TTL"):
        assert timedelta(hours=24) == settings.TTL


@pytest.mark.parametrize(
    ("value", "expected"),
    [(90, timedelta(seconds=90)), (1.5, timedelta(seconds=1.5)), (timedelta(days=2),) * 2],
)
def test_durations_become_timedeltas(value, expected):
    with override_settings(IDEMPOTENCY={"TTL": value, "LOCK_TIMEOUT": value}):
        assert expected == settings.TTL
        assert expected == settings.LOCK_TIMEOUT


def test_default_replay_headers():
    with override_settings(IDEMPOTENCY={}):
        assert (
            frozenset(
                {
                    "cache-control",
                    "content-disposition",
                    "content-encoding",
                    "content-language",
                    "content-location",
                    "content-type",
                    "etag",
                    "last-modified",
                    "link",
                    "location",
                }
            )
            == settings.REPLAY_HEADERS
        )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([], {"content-type", "content-encoding", "location"}),
        (["ETag"], {"content-type", "content-encoding", "location", "etag"}),
        (["CONTENT-TYPE", "X-Total"], {"content-type", "content-encoding", "location", "x-total"}),
        (["Set-Cookie", "Vary", "ETag"], {"content-type", "content-encoding", "location", "etag"}),
        (
            ["Clear-Site-Data", "WWW-Authenticate"],
            {"content-type", "content-encoding", "location"},
        ),
    ],
)
def test_replay_headers_keep_meaning_and_drop_session(value, expected):
    with override_settings(IDEMPOTENCY={"REPLAY_HEADERS": value}):
        assert frozenset(expected) == settings.REPLAY_HEADERS


def test_callable_settings_given_directly():
    with override_settings(IDEMPOTENCY={"SCOPE": custom_callable, "FINGERPRINT": custom_callable}):
        assert settings.SCOPE is custom_callable
        assert settings.FINGERPRINT is custom_callable


def test_dotted_scope_path_is_imported():
    with override_settings(IDEMPOTENCY={"SCOPE": "tests.test_checks.custom_callable"}):
        assert settings.SCOPE is custom_callable


@pytest.mark.parametrize("value", ["idempotency.keys.no_such_function", "no_such_module.scope"])
def test_bad_scope_path(value):
    with (
        override_settings(IDEMPOTENCY={"SCOPE": value}),
        pytest.raises(ImproperlyConfigured) as info,
    ):
        settings.SCOPE  # noqa: B018
    assert str(info.value).startswith(f"IDEMPOTENCY['SCOPE'] {value!r} cannot be imported: ")
    assert isinstance(info.value.__cause__, ImportError)


def test_bad_fingerprint_path():
    with (
        override_settings(IDEMPOTENCY={"FINGERPRINT": "idempotency.fingerprint.nothing"}),
        pytest.raises(ImproperlyConfigured) as info,
    ):
        settings.FINGERPRINT  # noqa: B018
    assert str(info.value).startswith(
        "IDEMPOTENCY['FINGERPRINT'] 'idempotency.fingerprint.nothing' cannot be imported: "
    )


@pytest.mark.server_db
def test_the_database_check_passes_over_a_server_it_cannot_reach(django_db_blocker):
    """Nothing listens on the alias's port: ``check --database`` says
    nothing of it (requests answer 503 until it is back), and does not crash."""
    alias = "unreachable"
    connections.settings[alias] = {
        **connections["default"].settings_dict,
        "PORT": str(servers.free_port()),
    }
    try:
        with django_db_blocker.unblock(), override_settings(IDEMPOTENCY={"DATABASE": alias}):
            assert check_database(databases=[alias]) == []
    finally:
        connections[alias].close()
        del connections[alias]
        del connections.settings[alias]
