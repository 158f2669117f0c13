"""PostgreSQL at SERIALIZABLE: a request whose transaction loses to a
concurrent one when the package stores its response, or commits, was rolled
back whole: a retryable 409, never a 500, and its retry runs once."""

from __future__ import annotations

import json
import logging
import threading
import uuid

import pytest
from django.db import connections

from idempotency.backends.database import DatabaseStore
from idempotency.models import IdempotencyKey
from tests.concurrency import Threads
from tests.helpers import new_key, send
from tests.testapp import views
from tests.testapp.models import Execution

pytestmark = [pytest.mark.vendor("postgresql"), pytest.mark.django_db(transaction=True)]

URL = "/write-skew/"


@pytest.fixture
def serializable():
    from django.db.backends.postgresql.psycopg_any import IsolationLevel

    options = connections["default"].settings_dict["OPTIONS"]
    connections.close_all()
    options["isolation_level"] = IsolationLevel.SERIALIZABLE
    yield
    connections.close_all()
    del options["isolation_level"]


class Order:
    """Orders the two requests of a pair around the statement that stores
    their responses: ``store``, the second stores its response only once the
    first has committed; ``commit``, both have stored theirs before the first
    commits, and the second commits after it."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.first_done = threading.Event()
        self.second_stored = threading.Event()
        self.complete = DatabaseStore("default").sql.complete_row

    def first(self, execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql == self.complete and self.where == "commit":
            assert self.second_stored.wait(timeout=10)
        return result

    def second(self, execute, sql, params, many, context):
        if sql == self.complete and self.where == "store":
            assert self.first_done.wait(timeout=10)
        result = execute(sql, params, many, context)
        if sql == self.complete and self.where == "commit":
            self.second_stored.set()
            assert self.first_done.wait(timeout=10)
        return result


@pytest.mark.parametrize("where", ["store", "commit"])
def test_the_loser_of_a_write_skew_gets_a_retryable_409(user, serializable, where, caplog):
    name = uuid.uuid4().hex
    views.BARRIERS[name] = threading.Barrier(2)
    url = f"{URL}?barrier={name}"
    order = Order(where)
    first_key, second_key = new_key(), new_key()

    def first():
        try:
            with connections["default"].execute_wrapper(order.first):
                return send(user, first_key, url)
        finally:
            order.first_done.set()

    def second():
        with connections["default"].execute_wrapper(order.second):
            return send(user, second_key, url)

    with caplog.at_level(logging.INFO, logger="idempotency"):
        won, lost = Threads([first, second]).join()
    del views.BARRIERS[name]
    assert won.status_code == 201
    assert lost.status_code == 409, lost.content
    assert lost["Retry-After"] == "1"
    assert json.loads(lost.content)["type"] == "tag:django-idempotency,2026:transaction-conflict"
    # Rolled back whole: no effect, no record; the retry runs, once.
    assert not Execution.objects.filter(key=second_key).exists()
    assert not IdempotencyKey.objects.filter(key=second_key).exists()
    retry = send(user, second_key, url)
    assert retry.status_code == 201
    assert Execution.objects.filter(key=second_key).count() == 1
    assert "conflicted with a concurrent transaction and was rolled back" in caplog.text
