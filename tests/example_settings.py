"""The example project's settings, with a fast password hasher: the
schemathesis run (tests/test_openapi.py) authenticates hundreds of requests
with HTTP Basic, and PBKDF2 would spend most of its time hashing. The demo
user's password is hashed with it too, when the migration creates it."""

from example_project.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
