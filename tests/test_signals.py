"""Signals and log lines for each answer, the README's metrics recipe run as
written, and the key a handler sees on its request."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection

from idempotency import signals
from idempotency.events import hash_key
from tests.helpers import executions, in_flight_record, new_key, post
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db

EVENTS = ("claimed", "completed", "replayed", "conflict", "key_reused", "key_refused")


@pytest.fixture
def heard():
    """Every signal sent, as (event, kwargs), while the test runs."""
    sent: list[tuple[str, dict]] = []
    receivers = {}
    for event in EVENTS:

        def receiver(sender, event=event, **kwargs):
            kwargs.pop("signal")
            assert sender == kwargs["view"]
            sent.append((event, kwargs))

        receivers[event] = receiver
        getattr(signals, event).connect(receiver)
    yield sent
    for event, receiver in receivers.items():
        getattr(signals, event).disconnect(receiver)


def test_each_answer_sends_its_signal(client, user, heard):
    key = new_key()
    view = "tests.testapp.views.charge_function"
    scope = f"testapp.user:{user.pk}"
    first = {"view": view, "scope": scope, "key_hash": hash_key(key), "store": "database"}

    post(client, key)
    post(client, key)
    post(client, key, {"amount": 2})
    post(client, None)
    post(client, "a,b")
    assert heard == [
        ("claimed", {**first, "status": None}),
        ("completed", {**first, "status": 201}),
        ("replayed", {**first, "status": 201}),
        ("key_reused", {**first, "status": 422}),
        ("key_refused", {**first, "scope": None, "key_hash": None, "store": None, "status": 400}),
        ("key_refused", {**first, "scope": None, "key_hash": None, "store": None, "status": 400}),
    ]
    # The key itself is in no signal: for anonymous clients it is a secret.
    assert key not in repr(heard)


def test_a_body_that_cannot_be_read_is_refused_too(client, heard):
    key = new_key()
    response = client.post(
        "/function/",
        data="{}",
        content_type="application/json",
        headers={"Idempotency-Key": key},
        CONTENT_LENGTH="two",
    )
    assert response.status_code == 400
    assert [(event, kwargs["status"], kwargs["key_hash"]) for event, kwargs in heard] == [
        ("key_refused", 400, hash_key(key))
    ]


def test_a_duplicate_in_flight_sends_conflict(client, user, heard):
    key = new_key()
    in_flight_record(user, key, timedelta(minutes=1))
    assert post(client, key).status_code == 409
    assert [(event, kwargs["status"]) for event, kwargs in heard] == [("conflict", 409)]


def test_a_transient_answer_is_claimed_but_not_completed(client, heard):
    post(client, new_key(), url="/function/?status=503")
    assert [event for event, _ in heard] == ["claimed"]


def test_a_failing_receiver_is_logged_and_the_request_goes_on(client, caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("the metrics backend is down")

    signals.completed.connect(broken)
    try:
        response = post(client, new_key())
    finally:
        signals.completed.disconnect(broken)
    assert response.status_code == 201
    assert "A receiver of idempotency's completed signal" in caplog.text
    assert "the metrics backend is down" in caplog.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("event", ["claimed", "completed"])
def test_a_receiver_whose_query_fails_changes_nothing(client, event, requests_mode):
    """On PostgreSQL a failed query aborts the transaction it runs in: the
    claim's, or the request's under ATOMIC_REQUESTS. The receiver's failure
    is undone alone, and the request commits and replays as usual."""

    def broken(sender, **kwargs):
        Execution.objects.create(key="written by the receiver")
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_metrics_table")

    getattr(signals, event).connect(broken)
    key = new_key()
    try:
        first = post(client, key)
        second = post(client, key)
    finally:
        getattr(signals, event).disconnect(broken)
    assert first.status_code == 201
    assert second.status_code == 201
    assert second.headers["Idempotent-Replayed"] == "true"
    assert executions(key) == 1
    # Inside a transaction (the claim's; the request's), the receiver's
    # write is undone with it; ``completed`` without ATOMIC_REQUESTS runs
    # after the commit, where each statement commits on its own.
    undone = event == "claimed" or requests_mode
    assert Execution.objects.filter(key="written by the receiver").exists() is not undone


def test_log_lines_tell_the_same_events(client, caplog):
    key = new_key()
    with caplog.at_level(logging.DEBUG, logger="idempotency"):
        post(client, key)
        post(client, key)
    lines = [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.name == "idempotency"
    ]
    assert [(level, message.split(" (")[0]) for level, message in lines] == [
        ("DEBUG", "POST /function/: claimed"),
        ("DEBUG", "POST /function/: completed"),
        ("INFO", "POST /function/: replayed"),
    ]
    assert all(hash_key(key) in message and key not in message for _, message in lines)


def readme_recipe() -> str:
    """The README's metrics recipe, as written there."""
    readme = (Path(__file__).resolve().parent.parent / "README.rst").read_text()
    after = readme.split("Turned into Prometheus counters", 1)[1]
    block = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", after)
    assert block is not None
    return "\n".join(line[4:] for line in block.group(1).splitlines())


def test_the_readmes_metrics_recipe_counts_each_event(client):
    import prometheus_client

    namespace: dict = {}
    exec(readme_recipe(), namespace)
    counter = namespace["IDEMPOTENCY_EVENTS"]
    try:
        key = new_key()
        post(client, key)
        post(client, key)
        post(client, key, {"amount": 2})
        post(client, None)
        view = "tests.testapp.views.charge_function"

        def count(event, status):
            return counter.labels(event, view, status)._value.get()

        assert count("claimed", "None") == 1
        assert count("completed", "201") == 1
        assert count("replayed", "201") == 1
        assert count("key_reused", "422") == 1
        assert count("key_refused", "400") == 1
        exposed = prometheus_client.generate_latest().decode()
        assert 'idempotency_events_total{event="replayed"' in exposed
    finally:
        for event in EVENTS:
            getattr(signals, event).disconnect(dispatch_uid=f"metrics {event}")
        prometheus_client.REGISTRY.unregister(counter)


@pytest.mark.parametrize("url", ["/echo-key/", "/django/echo-key/"])
def test_the_handler_sees_its_key(client, user, url):
    from django.test import Client

    key = new_key()
    if url == "/echo-key/":
        answer = json.loads(post(client, key, url=url).content)
        assert answer == {"key": key, "scope": f"testapp.user:{user.pk}"}
    else:
        plain = Client()
        sent = plain.post(
            url, b"{}", content_type="application/json", headers={"Idempotency-Key": key}
        )
        assert json.loads(sent.content) == {"key": key}
        # Without a key (optional here), there is none to see.
        unkeyed = plain.post(url, b"{}", content_type="application/json")
        assert json.loads(unkeyed.content) == {"key": None}
