"""The floors the benchmarks print beside the package's figures: the same
work done by hand, in its simplest form, measured in the same run.

* ``charge``: the example's charge handler plus a plain ``INSERT … ON
  CONFLICT DO NOTHING`` (``INSERT IGNORE`` on MariaDB) of a row into the key
  table before its work, and a plain ``UPDATE`` of that row's response after
  it, all in the handler's own transaction: what a claim and a stored
  response cannot cost less than.
* ``replay``: an authenticated DRF view that reads one of those rows with
  one indexed ``SELECT`` and answers its stored bytes: what a replay cannot
  cost less than.

Neither checks anything: no fingerprint, no 409, no expiry. The key table is
the package's own, so both work on the same table, indexes and row shape;
their rows have a scope of their own (``floor``).
"""

from __future__ import annotations

import json
from datetime import timedelta
from functools import cache

from django.db import connection, transaction
from django.http import HttpResponse
from django.utils import timezone
from rest_framework.decorators import api_view

from example_project.wallet.serializers import ChargeSerializer
from example_project.wallet.views import charge_in_transaction
from idempotency.models import IdempotencyKey

SCOPE = "floor"
COLUMNS = ("scope", "key", "fingerprint", "state", "method", "path", "created_at", "expires_at")


def _sql() -> dict[str, str]:
    return _statements(connection.vendor)


@cache
def _statements(vendor: str) -> dict[str, str]:
    quote = connection.ops.quote_name
    table = quote(IdempotencyKey._meta.db_table)
    names = ", ".join(quote(name) for name in COLUMNS)
    values = ", ".join(["%s"] * len(COLUMNS))
    if vendor == "mysql":
        insert = f"INSERT IGNORE INTO {table} ({names}) VALUES ({values})"
    else:
        insert = (
            f"INSERT INTO {table} ({names}) VALUES ({values})"
            f" ON CONFLICT ({quote('scope')}, {quote('key')}) DO NOTHING"
        )
    if vendor == "postgresql":
        insert += f" RETURNING {quote('id')}"
    return {
        "insert": insert,
        "update": (
            f"UPDATE {table} SET {quote('state')} = 'completed', {quote('status')} = %s,"
            f" {quote('headers')} = %s, {quote('body')} = %s, {quote('completed_at')} = %s,"
            f" {quote('expires_at')} = %s WHERE {quote('id')} = %s"
        ),
        "select": (
            f"SELECT {quote('status')}, {quote('headers')}, {quote('body')} FROM {table}"
            f" WHERE {quote('scope')} = %s AND {quote('key')} = %s"
        ),
    }


@api_view(["POST"])
def charge(request):
    serializer = ChargeSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    sql = _sql()
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        key = request.headers["Idempotency-Key"]
        values = [SCOPE, key, "", "in_flight", "POST", request.path, now, now + timedelta(days=1)]
        cursor.execute(sql["insert"], values)
        pk = cursor.fetchone()[0] if connection.vendor == "postgresql" else cursor.lastrowid
        response = charge_in_transaction(request, serializer)
        # Rendered as the package renders a DRF response to store its bytes.
        view = request.parser_context["view"]
        response = view.finalize_response(request, response)
        response.render()
        headers = json.dumps([[name, value] for name, value in response.items()])
        cursor.execute(
            sql["update"], [response.status_code, headers, response.content, now, now, pk]
        )
    return response


@api_view(["POST"])
def replay(request):
    with connection.cursor() as cursor:
        cursor.execute(_sql()["select"], [SCOPE, request.headers["Idempotency-Key"]])
        status, headers, body = cursor.fetchone()
    if isinstance(headers, str):
        headers = json.loads(headers)
    return HttpResponse(bytes(body), status=status, headers=dict(headers))
