"""What the tests share to make and count requests: fresh keys, JSON
requests with an Idempotency-Key, a client of a thread's own, the handler
runs a key led to, and an in-flight record left in the key table.

Fixtures are in tests/conftest.py (the Redis ones too), requests in threads
of their own in tests/concurrency.py, real servers in tests/servers.py.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.utils import timezone
from model_bakery import baker
from rest_framework.test import APIClient

from idempotency.models import IdempotencyKey
from tests.testapp.models import Execution, User

# The DRF ``@api_view`` handler (tests.testapp.views.charge_function).
URL = "/function/"


def new_key() -> str:
    """A key no request has used yet."""
    return str(uuid.uuid4())


def keyed_request(
    client: Any,
    method: str,
    url: str,
    key: str | None = None,
    data: object = None,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
):
    """``client.<method>(url, data)`` with ``data`` sent as JSON as given
    (``None``: no body), ``key`` as its Idempotency-Key (``None``: no such
    header) and any other ``headers``."""
    keyed = {} if key is None else {"Idempotency-Key": key}
    return getattr(client, method)(
        url, data, format="json", headers={**keyed, **(headers or {})}, **extra
    )


def post(
    client: Any,
    key: str | None = None,
    data: object = None,
    *,
    url: str = URL,
    method: str = "post",
    amount: int = 1,
    **extra: Any,
):
    """A POST (or ``method``) of ``data`` as JSON to ``url`` with ``key``
    (``None``: no Idempotency-Key header); without ``data``, the body is
    ``{"amount": amount}``."""
    body = {"amount": amount} if data is None else data
    return keyed_request(client, method, url, key, body, **extra)


def client_for(user: User) -> APIClient:
    """An API client authenticated as ``user`` that hands back a 500 as a
    response rather than raising the handler's exception."""
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(user)
    return client


def send(user: User, key: str, url: str = URL, data: object = None, **extra: Any):
    """POST as ``user`` with ``key`` from a client of its own (threads each
    need one); a 500 comes back as a response, not an exception."""
    return post(client_for(user), key, data, url=url, **extra)


def executions(key: str, label: str | None = None) -> int:
    """How many times a test handler ran with ``key`` (and ``label``), as
    its committed ``Execution`` rows tell."""
    rows = Execution.objects.filter(key=key)
    if label is not None:
        rows = rows.filter(label=label)
    return rows.count()


def in_flight_record(user: User, key: str, expires_in: timedelta) -> IdempotencyKey:
    """``user``'s ``key`` in flight, as a request still running (or one
    that died) leaves it, its lock timing out ``expires_in`` from now
    (negative: already past)."""
    return baker.make(
        IdempotencyKey,
        scope=f"testapp.user:{user.pk}",
        key=key,
        state=IdempotencyKey.State.IN_FLIGHT,
        expires_at=timezone.now() + expires_in,
    )
