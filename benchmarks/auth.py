"""Benchmark-only authentication: ``X-Bench-User: <username>``.

Never use this outside ``benchmarks/``: it trusts a header. It stands in for
a token or JWT scheme whose check costs no database query, so that the
figures measure the view and this package rather than password hashing.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

_users: dict[str, Any] = {}


class UserHeaderAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        name = request.headers.get("X-Bench-User")
        if not name:
            return None
        if name not in _users:
            _users[name] = get_user_model().objects.get(username=name)
        return _users[name], None
