"""Settings of the example project: a points wallet whose "charge" endpoint a
double click must not run twice.

SQLite by default (``example_project/db.sqlite3``); set ``DATABASE_URL`` to
run it on PostgreSQL or MariaDB, for example
``DATABASE_URL=postgres://postgres@127.0.0.1:5432/test``.
"""

import os
from pathlib import Path

import dj_database_url
from corsheaders.defaults import default_headers

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("SECRET_KEY", "example-project-not-for-production")
DEBUG = os.environ.get("DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "corsheaders",
    "drf_spectacular",
    "idempotency",
    "example_project.wallet",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # Before CommonMiddleware, as django-cors-headers asks: it answers
    # preflight requests itself.
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

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

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=60,
        # A persistent connection is checked before each request reuses it, so
        # that a database restart costs no request on an idle worker.
        conn_health_checks=True,
    )
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.BasicAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # drf-spectacular's AutoSchema, which also documents the key header, the
    # replay header and the problem responses of protected operations.
    "DEFAULT_SCHEMA_CLASS": "idempotency.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Points wallet",
    "DESCRIPTION": "The example project of django-idempotency: charges and orders that a "
    "retry or a double click never runs twice.",
    "VERSION": "1.0.0",
}

# Cross-origin calls (README.rst, "CORS"): pages on these origins may call
# the API; the browser must be allowed to send the key and to read whether
# an answer is a replay, and when to retry a 409.
CORS_ALLOWED_ORIGINS = os.environ.get(
    "EXAMPLE_CORS_ORIGINS", "http://localhost:8000,http://localhost:8001,http://127.0.0.1:8001"
).split(",")
CORS_ALLOW_HEADERS = (*default_headers, "idempotency-key")
# The page at /remote/?api=<origin> calls the API of one of these origins.
EXAMPLE_API_ORIGINS = os.environ.get("EXAMPLE_API_ORIGINS", "http://127.0.0.1:8000").split(",")
CORS_EXPOSE_HEADERS = ["Idempotent-Replayed", "Retry-After"]

# Seconds a charge holds its transaction open, to watch a duplicate's 409 by hand.
EXAMPLE_CHARGE_DELAY = float(os.environ.get("EXAMPLE_CHARGE_DELAY", "0"))

# A file whose presence holds charges described "hold" inside their
# transaction; benchmarks/stress.py uses it to kill workers mid-handler.
EXAMPLE_CHARGE_HOLD_FILE = os.environ.get("EXAMPLE_CHARGE_HOLD_FILE", "")

# Every key is optional: these two are the defaults, written out.
IDEMPOTENCY = {
    "TTL": 24 * 60 * 60,
    "LOCK_TIMEOUT": 60,
}
