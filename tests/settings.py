"""Settings for the test suite.

The database comes from ``DATABASE_URL`` (in-memory SQLite when unset), for
example ``postgres://postgres@127.0.0.1:5432/test`` or
``mysql://root@127.0.0.1:3306/test``. A second alias, ``other``, on the same
server proves that the key table can live on any alias.
"""

import os
from typing import Any

import dj_database_url

DATABASE_URL = os.environ.get("DATABASE_URL") or "sqlite://:memory:"
# The test databases' name on a server; give concurrent runs on one server
# names of their own.
TEST_DATABASE_NAME = os.environ.get("TEST_DATABASE_NAME") or "test_idempotency"


def _database(url: str, suffix: str = "") -> dict[str, Any]:
    config: dict[str, Any] = dict(dj_database_url.parse(url))
    if config["ENGINE"] == "django.db.backends.sqlite3":
        return config
    config["NAME"] = config["NAME"] + suffix
    config["TEST"] = {"NAME": f"{TEST_DATABASE_NAME}{suffix}"}
    if config["ENGINE"] == "django.db.backends.mysql":
        config["OPTIONS"] = {"charset": "utf8mb4"}
        config["TEST"].update({"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"})
    return config


DATABASES = {"default": _database(DATABASE_URL), "other": _database(DATABASE_URL, "_other")}

# Redis, for the tests marked "redis" (skipped unless REDIS_URL is set; they
# flush the Redis database it names).
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
REDIS_OPTIONS = {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1}
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "idempotency": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": REDIS_OPTIONS,
    },
}
# The test views with backend="redis" need the alias; the accelerator is
# turned on by the tests that test it.
IDEMPOTENCY = {"REDIS": "idempotency", "REDIS_ACCELERATOR": False}

SECRET_KEY = "not-secret-tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "testapp.User"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework",
    "rest_framework.authtoken",
    "idempotency",
    "tests.testapp",
    "example_project.wallet",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # tests/test_openapi.py: @extend_schema builds on the class set here when
    # it decorates a view, as it does in a project.
    "DEFAULT_SCHEMA_CLASS": "idempotency.openapi.AutoSchema",
}
