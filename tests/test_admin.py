"""The admin: a read-only view of the stored records, and releasing in-flight keys."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.html import escape
from model_bakery import baker
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from idempotency.keys import default_scope
from idempotency.models import IdempotencyKey
from tests.concurrency import Threads, in_another_thread
from tests.helpers import URL, new_key, send
from tests.testapp.models import Execution, User

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/idempotency/idempotencykey/"

# No key contains another, so that a search for one finds only it.
KEYS = {
    "done-live": (IdempotencyKey.State.COMPLETED, timedelta(hours=1)),
    "done-stale": (IdempotencyKey.State.COMPLETED, -timedelta(hours=1)),
    "busy-live": (IdempotencyKey.State.IN_FLIGHT, timedelta(seconds=30)),
    "busy-stale": (IdempotencyKey.State.IN_FLIGHT, -timedelta(seconds=30)),
}


@pytest.fixture
def superuser_client() -> Client:
    superuser = User.objects.create_superuser(username="root", password="pw")
    client = Client()
    client.force_login(superuser)
    return client


@pytest.fixture
def records() -> dict[str, IdempotencyKey]:
    now = timezone.now()
    return {
        key: baker.make(
            IdempotencyKey,
            scope="user:1",
            key=key,
            state=state,
            method="POST",
            path="/charge/",
            created_at=now - timedelta(minutes=5),
            expires_at=now + expires_in,
        )
        for key, (state, expires_in) in KEYS.items()
    }


def listed(response) -> set[str]:
    assert response.status_code == 200
    return {record.key for record in response.context["cl"].result_list}


def assert_lists(response, expected: set[str]) -> None:
    assert listed(response) == expected
    content = response.content.decode()
    for key in KEYS:
        if key in expected:
            assert f">{key}<" in content
        else:
            assert f">{key}<" not in content


def test_changelist_lists_every_record(superuser_client, records):
    response = superuser_client.get(CHANGELIST)
    assert_lists(response, set(KEYS))


def test_changelist_loads_no_stored_response(superuser_client, records):
    with CaptureQueriesContext(connection) as queries:
        listed(superuser_client.get(CHANGELIST))
    selects = [q["sql"] for q in queries if "idempotency_idempotencykey" in q["sql"]]
    assert selects
    for sql in selects:
        assert "body" not in sql
        assert "headers" not in sql


def test_changelist_needs_a_staff_login(records):
    response = Client().get(CHANGELIST)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_search_by_key(superuser_client, records):
    response = superuser_client.get(CHANGELIST, {"q": "done-stale"})
    assert_lists(response, {"done-stale"})


def test_search_by_part_of_a_key(superuser_client, records):
    response = superuser_client.get(CHANGELIST, {"q": "busy"})
    assert_lists(response, {"busy-live", "busy-stale"})


def test_filter_by_state(superuser_client, records):
    response = superuser_client.get(CHANGELIST, {"state__exact": "completed"})
    assert_lists(response, {"done-live", "done-stale"})
    response = superuser_client.get(CHANGELIST, {"state__exact": "in_flight"})
    assert_lists(response, {"busy-live", "busy-stale"})


def test_filter_expired(superuser_client, records):
    response = superuser_client.get(CHANGELIST, {"expired": "yes"})
    assert_lists(response, {"done-stale", "busy-stale"})


def test_filter_not_expired(superuser_client, records):
    response = superuser_client.get(CHANGELIST, {"expired": "no"})
    assert_lists(response, {"done-live", "busy-live"})


def test_filters_combine(superuser_client, records):
    response = superuser_client.get(CHANGELIST, {"expired": "yes", "state__exact": "in_flight"})
    assert_lists(response, {"busy-stale"})


def test_expiry_filter_is_offered(superuser_client, records):
    content = superuser_client.get(CHANGELIST).content.decode()
    assert "?expired=yes" in content
    assert "?expired=no" in content


def test_change_page_is_view_only(superuser_client, records):
    record = records["done-live"]
    response = superuser_client.get(f"{CHANGELIST}{record.pk}/change/")
    assert response.status_code == 200
    assert response.context["has_change_permission"] is False
    content = response.content.decode()
    assert "done-live" in content
    assert 'name="_save"' not in content
    assert 'name="key"' not in content


def test_change_page_refuses_a_post(superuser_client, records):
    record = records["done-live"]
    response = superuser_client.post(f"{CHANGELIST}{record.pk}/change/", {"key": "forged"})
    assert response.status_code == 403
    record.refresh_from_db()
    assert record.key == "done-live"


def test_add_is_forbidden(superuser_client, records):
    assert superuser_client.get(f"{CHANGELIST}add/").status_code == 403
    response = superuser_client.post(f"{CHANGELIST}add/", {"scope": "user:1", "key": "new"})
    assert response.status_code == 403
    assert IdempotencyKey.objects.count() == len(KEYS)


def test_delete_is_forbidden(superuser_client, records):
    record = records["done-live"]
    assert superuser_client.get(f"{CHANGELIST}{record.pk}/delete/").status_code == 403
    response = superuser_client.post(f"{CHANGELIST}{record.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert IdempotencyKey.objects.filter(pk=record.pk).exists()


def test_bulk_delete_action_is_not_offered(superuser_client, records):
    response = superuser_client.get(CHANGELIST)
    assert "delete_selected" not in response.content.decode()
    superuser_client.post(
        CHANGELIST,
        {
            "action": "delete_selected",
            "_selected_action": [record.pk for record in records.values()],
            "post": "yes",
        },
    )
    assert IdempotencyKey.objects.count() == len(KEYS)


# What the change page shows of a stored response.


def shown(client: Client, record: IdempotencyKey, field: str) -> str:
    """The HTML the change page shows for ``field`` of ``record``."""
    response = client.get(f"{CHANGELIST}{record.pk}/change/")
    assert response.status_code == 200
    content = response.content.decode()
    # The raw field, a Python bytes repr, is never shown.
    assert "b&#x27;" not in content
    found = re.search(
        rf'field-{field}">.*?<div class="readonly">(.*?)</div>', content, flags=re.DOTALL
    )
    assert found, f"no {field} on the change page"
    return found.group(1)


def stored(body: bytes | None, headers: list | None = None) -> IdempotencyKey:
    now = timezone.now()
    return baker.make(
        IdempotencyKey,
        scope="user:1",
        key="stored",
        state=IdempotencyKey.State.COMPLETED,
        method="POST",
        path="/charge/",
        status=201,
        headers=headers,
        body=body,
        created_at=now,
        completed_at=now,
        expires_at=now + timedelta(hours=1),
    )


JSON = [["Content-Type", "application/json"]]


def test_json_body_is_pretty_printed(superuser_client):
    record = stored(b'{"payment":2,"items":[1,{"a":null}],"empty":{}}', JSON)
    assert shown(superuser_client, record, "response_body") == (
        "<pre>{\n"
        "  &quot;payment&quot;: 2,\n"
        "  &quot;items&quot;: [\n"
        "    1,\n"
        "    {\n"
        "      &quot;a&quot;: null\n"
        "    }\n"
        "  ],\n"
        "  &quot;empty&quot;: {}\n"
        "}</pre>"
    )


def test_json_body_is_recognised_without_a_json_content_type(superuser_client):
    record = stored(b"[1, 2]", [["Content-Type", "application/octet-stream"]])
    assert shown(superuser_client, record, "response_body") == "<pre>[\n  1,\n  2\n]</pre>"


def test_json_text_is_shown_as_written(superuser_client):
    record = stored('{"name":"Zoë"}'.encode(), JSON)
    assert shown(superuser_client, record, "response_body") == (
        "<pre>{\n  &quot;name&quot;: &quot;Zoë&quot;\n}</pre>"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"1.10",  # a JSON scalar is shown as stored, not as Python re-encodes it
        b'{"name": "\\ud800"}',  # a lone surrogate cannot be sent as UTF-8
        b"[" * 30_000 + b"]" * 30_000,  # nested too deep to parse
        b'{"payment": 2',  # cut short
    ],
    ids=["scalar", "lone-surrogate", "deep", "malformed"],
)
def test_json_that_cannot_be_pretty_printed_is_shown_as_text(superuser_client, body):
    record = stored(body, JSON)
    assert shown(superuser_client, record, "response_body") == (
        f"<pre>{escape(body.decode())}</pre>"
    )


def test_text_body_is_shown_as_text(superuser_client):
    record = stored(b"Charged.\nThank you.", [["Content-Type", "text/plain"]])
    assert shown(superuser_client, record, "response_body") == "<pre>Charged.\nThank you.</pre>"


def test_html_in_a_body_is_escaped(superuser_client):
    record = stored(b"<script>alert(1)</script>", [["Content-Type", "text/html"]])
    html = shown(superuser_client, record, "response_body")
    assert html == "<pre>&lt;script&gt;alert(1)&lt;/script&gt;</pre>"


def test_html_in_a_json_body_is_escaped(superuser_client):
    record = stored(b'{"note":"</pre><script>alert(1)</script>"}', JSON)
    html = shown(superuser_client, record, "response_body")
    assert html == (
        "<pre>{\n  &quot;note&quot;: &quot;&lt;/pre&gt;&lt;script&gt;alert(1)"
        "&lt;/script&gt;&quot;\n}</pre>"
    )


def test_long_body_is_cut(superuser_client):
    body = b"a" * (64 * 1024 + 10)
    record = stored(body, [["Content-Type", "text/plain"]])
    assert shown(superuser_client, record, "response_body") == (
        f"<pre>{'a' * 64 * 1024}</pre><p>Cut: the first 65536 bytes of 65546 are shown.</p>"
    )


def test_long_json_body_is_cut_as_text(superuser_client):
    body = b'{"data":"' + b"a" * 64 * 1024 + b'"}'
    record = stored(body, JSON)
    cut = "{&quot;data&quot;:&quot;" + "a" * (64 * 1024 - 9)
    assert shown(superuser_client, record, "response_body") == (
        f"<pre>{cut}</pre><p>Cut: the first 65536 bytes of 65547 are shown.</p>"
    )


def test_a_body_is_cut_between_characters(superuser_client):
    # "é" is two bytes, the first of them the cap's last byte.
    body = ("a" * (64 * 1024 - 1) + "é" + "b").encode()
    record = stored(body, [["Content-Type", "text/plain"]])
    assert shown(superuser_client, record, "response_body") == (
        f"<pre>{'a' * (64 * 1024 - 1)}</pre><p>Cut: the first 65536 bytes of 65538 are shown.</p>"
    )


def test_binary_body_shows_its_size_only(superuser_client):
    record = stored(
        b"\x89PNG\r\n\x1a\n<script>" + bytes(range(256)), [["Content-Type", "image/png"]]
    )
    assert shown(superuser_client, record, "response_body") == "Binary, 272 bytes"


def test_binary_body_of_one_byte(superuser_client):
    record = stored(b"\xff")
    assert shown(superuser_client, record, "response_body") == "Binary, 1 byte"


def test_empty_body(superuser_client):
    record = stored(b"", [["Content-Length", "0"]])
    assert shown(superuser_client, record, "response_body") == "Empty"


def test_in_flight_record_has_no_response(superuser_client, records):
    record = records["busy-live"]
    assert shown(superuser_client, record, "response_headers") == "-"
    assert shown(superuser_client, record, "response_body") == "-"


def test_headers_are_shown_one_per_line_escaped(superuser_client):
    record = stored(b"", [["Content-Type", "application/json"], ["Link", "<https://a.example/>"]])
    assert shown(superuser_client, record, "response_headers") == (
        "<pre>Content-Type: application/json\nLink: &lt;https://a.example/&gt;</pre>"
    )


# Releasing in-flight keys.

RELEASE = "release_in_flight"
COMPLETED_SKIPPED = (
    "Skipped 2 completed keys: deleting a completed record would let a retry run the handler "
    "again."
)


def staff_client(*codenames: str) -> Client:
    staff = User.objects.create_user(username="staff", password="pw", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(staff)
    return client


def release(client: Client, records, confirm: bool = True):
    data = {"action": RELEASE, "_selected_action": [record.pk for record in records]}
    if confirm:
        data["post"] = "yes"
    else:
        data["index"] = 0
    return client.post(CHANGELIST, data)


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def remaining() -> set[str]:
    return set(IdempotencyKey.objects.values_list("key", flat=True))


def test_release_needs_its_permission(records):
    client = staff_client("view_idempotencykey")
    response = client.get(CHANGELIST)
    assert set(listed(response)) == set(KEYS)
    assert RELEASE not in response.content.decode()
    release(client, records.values())
    assert remaining() == set(KEYS)
    assert not LogEntry.objects.exists()


def test_release_is_offered_with_its_permission(records):
    client = staff_client("view_idempotencykey", "release_idempotencykey")
    content = client.get(CHANGELIST).content.decode()
    assert f'<option value="{RELEASE}">Release selected in-flight keys</option>' in content


def test_release_is_offered_to_superusers(superuser_client, records):
    content = superuser_client.get(CHANGELIST).content.decode()
    assert f'<option value="{RELEASE}">Release selected in-flight keys</option>' in content


def test_release_asks_for_confirmation_first(superuser_client, records):
    response = release(superuser_client, records.values(), confirm=False)
    assert response.status_code == 200
    assert response.templates[0].name == (
        "admin/idempotency/idempotencykey/release_in_flight_confirmation.html"
    )
    content = response.content.decode()
    released = re.findall(r'<td class="release-key">(.*?)</td>', content)
    assert sorted(released) == ["busy-live", "busy-stale"]
    assert "Release these 2 in-flight keys?" in content
    assert (
        "The 2 completed keys among those selected will be left alone: deleting a completed "
        "record would let a retry run the handler again." in content
    )
    for record in records.values():
        assert f'<input type="hidden" name="_selected_action" value="{record.pk}">' in content
    assert '<input type="hidden" name="post" value="yes">' in content
    assert remaining() == set(KEYS)


def test_confirming_releases_only_in_flight_keys(superuser_client, records, caplog):
    caplog.set_level(logging.WARNING, logger="idempotency")
    response = release(superuser_client, records.values())
    assert response.status_code == 302
    assert remaining() == {"done-live", "done-stale"}
    assert messages_of(response) == ["Released 2 in-flight idempotency keys.", COMPLETED_SKIPPED]
    root = User.objects.get(username="root")
    assert set(
        LogEntry.objects.values_list("user", "object_id", "object_repr", "action_flag")
    ) == {(root.pk, str(records[key].pk), key, DELETION) for key in ("busy-live", "busy-stale")}
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            "idempotency",
            logging.WARNING,
            "The admin user 'root' released 2 in-flight idempotency key(s): a retry with one "
            "of them runs its handler again.",
        )
    ]


def test_releasing_one_key(superuser_client, records):
    response = release(superuser_client, [records["busy-live"]])
    assert messages_of(response) == ["Released 1 in-flight idempotency key."]
    assert remaining() == set(KEYS) - {"busy-live"}
    assert LogEntry.objects.get().object_repr == "busy-live"


def test_completed_keys_alone_need_no_confirmation(superuser_client, records, caplog):
    caplog.set_level(logging.WARNING, logger="idempotency")
    response = release(superuser_client, [records["done-live"]], confirm=False)
    assert response.status_code == 302
    assert messages_of(response) == [
        "No in-flight idempotency key was released.",
        "Skipped 1 completed key: deleting a completed record would let a retry run the "
        "handler again.",
    ]
    assert remaining() == set(KEYS)
    assert not LogEntry.objects.exists()
    assert not caplog.records


def test_the_delete_repeats_the_in_flight_test(superuser_client, records):
    """A record that completes after the release chose it, before its DELETE
    ran, is kept and not reported as released."""
    completes = records["busy-live"]
    statements = []

    def complete_before_delete(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("DELETE") and not statements:
            statements.append(sql)
            IdempotencyKey.objects.filter(pk=completes.pk).update(
                state=IdempotencyKey.State.COMPLETED
            )
        return execute(sql, params, many, context)

    with connection.execute_wrapper(complete_before_delete):
        response = release(superuser_client, [completes, records["busy-stale"]])
    assert len(statements) == 1, "the release never ran a DELETE"
    assert remaining() == set(KEYS) - {"busy-stale"}
    assert messages_of(response) == ["Released 1 in-flight idempotency key."]
    assert LogEntry.objects.get().object_repr == "busy-stale"


def test_release_in_flight_queryset_method(records):
    selected = IdempotencyKey.objects.filter(key__in=["busy-live", "done-live"])
    released, busy = selected.release_in_flight()
    assert [record.key for record in released] == ["busy-live"]
    assert busy == 0
    assert remaining() == set(KEYS) - {"busy-live"}


def scope_of(user: User) -> str:
    request = Request(APIRequestFactory().post(URL))
    request.user = user
    return default_scope(request)


def test_a_released_key_runs_the_handler_again(superuser_client, client, user):
    now = timezone.now()
    record = baker.make(
        IdempotencyKey,
        scope=scope_of(user),
        key="died",
        state=IdempotencyKey.State.IN_FLIGHT,
        method="POST",
        path=URL,
        created_at=now,
        expires_at=now + timedelta(seconds=30),
    )
    headers = {"Idempotency-Key": "died"}
    assert client.post(URL, {"amount": 1}, format="json", headers=headers).status_code == 409
    assert not Execution.objects.exists()
    release(superuser_client, [record])
    response = client.post(URL, {"amount": 1}, format="json", headers=headers)
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert Execution.objects.get().key == "died"


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_a_key_being_taken_over_is_skipped_not_waited_for(superuser_client, user, gate):
    name, held = gate
    key = new_key()
    send(user, key)
    # As a request that died holding the key leaves it once LOCK_TIMEOUT passes.
    IdempotencyKey.objects.filter(key=key).update(
        state=IdempotencyKey.State.IN_FLIGHT,
        status=None,
        headers=None,
        body=None,
        expires_at=timezone.now() - timedelta(seconds=1),
    )
    record = IdempotencyKey.objects.get(key=key)
    takeover = Threads([lambda: send(user, key, f"{URL}?gate={name}")])
    assert held.entered.wait(timeout=10)
    responses = []
    in_another_thread(lambda: responses.append(release(superuser_client, [record])))
    assert messages_of(responses[0]) == [
        "No in-flight idempotency key was released.",
        "Skipped 1 in-flight key that a request is taking over right now. Look at it again "
        "in a moment.",
    ]
    held.release.set()
    (response,) = takeover.join()
    assert response.status_code == 201
    assert list(IdempotencyKey.objects.values_list("key", "state")) == [
        (key, IdempotencyKey.State.COMPLETED)
    ]
    assert not LogEntry.objects.exists()
