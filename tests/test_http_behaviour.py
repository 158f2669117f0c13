"""Every row of docs/http.rst, through real requests to a protected view."""

from __future__ import annotations

import functools
import gzip
import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from idempotency.backends.database import MAX_ALLOWED_PACKETS
from idempotency.models import IdempotencyKey
from tests import helpers
from tests.helpers import URL, client_for, in_flight_record, new_key
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db

# helpers.post with this file's body when the test gives none: {"amount": 100}.
post = functools.partial(helpers.post, amount=100)


def problem(slug: str, status: int, title: str, detail: str) -> dict:
    return {
        "type": f"tag:django-idempotency,2026:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }


MISSING = problem(
    "key-missing",
    400,
    "Idempotency key missing",
    "This request must carry an Idempotency-Key header. Send a new unique value, such as a "
    "UUID, and send the same value again when you retry the request.",
)


def malformed(reason: str) -> dict:
    return problem(
        "key-malformed",
        400,
        "Idempotency key malformed",
        "The Idempotency-Key header must be one key of 1 to 255 visible ASCII characters, "
        f"optionally in double quotes. {reason}",
    )


EMPTY = "The header is empty."
LIST = (
    "It holds a list, not one key: the header was sent more than once (servers join repeated "
    "header lines with commas) or with several values. Send it once, with one key."
)
PARAMETERS = "Parameters after the key (;name=value) are not supported. Send the key alone."
QUOTING = (
    "Its double quotes do not form one structured-field string (RFC 8941): a quoted key "
    'may escape only " and \\ with a backslash.'
)
TOO_LONG = "It is longer than 255 characters."
CHARACTERS = (
    "It may hold only visible ASCII characters: no spaces, control characters or non-ASCII "
    "letters."
)
IN_FLIGHT = problem(
    "in-flight",
    409,
    "Request in progress",
    "A request with this Idempotency-Key is still being processed. Retry after it has "
    "finished to receive its response.",
)
REUSED = problem(
    "key-reused",
    422,
    "Idempotency key reused",
    "This Idempotency-Key was already used for a different request (another method, path "
    "or body). Use a new key for a new request.",
)
TOO_LARGE = problem(
    "response-too-large",
    500,
    "Response too large to store",
    "The response to this request was too large to store for replay, so the request was "
    "rolled back and had no effect. Please report this to the service operator.",
)


def assert_problem(response, expected: dict) -> None:
    assert response.status_code == expected["status"]
    assert response["Content-Type"] == "application/problem+json"
    assert json.loads(response.content) == expected


class TestFirstRequest:
    def test_runs_the_handler_and_stores_its_response_with_its_effects(self, client):
        key = new_key()
        response = post(client, key)
        assert response.status_code == 201
        assert Execution.objects.filter(key=key).count() == 1
        record = IdempotencyKey.objects.get(key=key)
        assert record.state == IdempotencyKey.State.COMPLETED
        assert record.status == 201
        assert bytes(record.body) == response.content
        assert record.method == "POST"
        assert record.path == URL
        assert record.completed_at is not None
        assert record.expires_at == record.completed_at + timedelta(hours=24)
        assert "Idempotent-Replayed" not in response

    def test_first_response_keeps_all_of_its_headers(self, client):
        response = post(client, new_key())
        assert response["X-Trace"] == "t-1"
        assert "sessionish" in response.cookies


class TestRetry:
    def test_replays_status_body_and_replayable_headers_without_running(self, client):
        key = new_key()
        first = post(client, key)
        retry = post(client, key)
        assert Execution.objects.filter(key=key).count() == 1
        assert retry.status_code == first.status_code == 201
        assert retry.content == first.content
        for name in ("Content-Type", "Location", "ETag"):
            assert retry[name] == first[name]
        assert retry["Idempotent-Replayed"] == "true"

    def test_never_replays_cookies_or_headers_outside_the_allow_list(self, client):
        key = new_key()
        post(client, key)
        retry = post(client, key)
        assert "sessionish" not in retry.cookies
        assert "Set-Cookie" not in retry
        assert "X-Trace" not in retry
        stored = {name.lower() for name, _ in IdempotencyKey.objects.get(key=key).headers}
        assert stored == {"content-type", "location", "etag"}

    def test_a_download_keeps_its_name_and_representation_headers(self, client):
        key = new_key()
        first = post(client, key, url=f"{URL}?file=1")
        assert first.status_code == 201
        body = b"".join(first.streaming_content)
        retry = post(client, key, url=f"{URL}?file=1")
        assert retry["Idempotent-Replayed"] == "true"
        assert retry.content == body == b"id,amount\n1,100\n"
        for name in (
            "Content-Disposition",
            "Content-Type",
            "Last-Modified",
            "Cache-Control",
            "Content-Location",
        ):
            assert retry[name] == first[name], name
        assert retry["Content-Disposition"] == 'attachment; filename="report.csv"'

    @override_settings(IDEMPOTENCY={"REPLAY_HEADERS": []})
    def test_a_body_stored_encoded_is_replayed_with_its_encoding(self, client):
        key = new_key()
        first = post(client, key, url=f"{URL}?gzip=1")
        retry = post(client, key, url=f"{URL}?gzip=1")
        assert retry.content == first.content
        assert retry["Content-Encoding"] == "gzip"
        assert gzip.decompress(retry.content) == b'{"ok": true}'

    def test_vary_is_not_stored_but_set_again_on_the_replay(self, client):
        key = new_key()
        post(client, key, url=f"{URL}?gzip=1")
        stored = {name.lower() for name, _ in IdempotencyKey.objects.get(key=key).headers}
        assert "vary" not in stored
        # DRF sets Vary: Accept on every response it finalizes, replays too.
        assert "Accept" in post(client, key, url=f"{URL}?gzip=1")["Vary"]

    @override_settings(IDEMPOTENCY={"REPLAY_HEADERS": ["X-Trace"]})
    def test_replay_headers_setting_extends_the_allow_list(self, client):
        key = new_key()
        post(client, key)
        retry = post(client, key)
        assert retry["X-Trace"] == "t-1"
        assert retry["Location"].startswith("/executions/")
        assert "ETag" not in retry

    def test_reserialised_json_is_the_same_request(self, client):
        key = new_key()
        headers = {"Idempotency-Key": key}
        first = client.post(
            URL, '{"b": 2, "a": 1}', content_type="application/json", headers=headers
        )
        retry = client.post(
            URL, '{ "a" : 1,\n "b" : 2 }', content_type="application/json", headers=headers
        )
        assert retry.status_code == 201
        assert retry["Idempotent-Replayed"] == "true"
        assert retry.content == first.content

    def test_a_204_replays_without_a_content_type(self, client):
        key = new_key()
        first = post(client, key, url=URL + "?status=204")
        retry = post(client, key, url=URL + "?status=204")
        assert first.status_code == retry.status_code == 204
        assert "Content-Type" not in first
        assert "Content-Type" not in retry
        assert retry.content == b""


class TestInFlight:
    def test_a_committed_in_flight_record_answers_409_with_retry_after(self, client, user):
        # The concurrent case is in test_concurrency.py; here the record is left
        # in flight as a commit outside the package (e.g. MariaDB DDL) would.
        key = new_key()
        in_flight_record(user, key, timedelta(seconds=60))
        response = post(client, key)
        assert_problem(response, IN_FLIGHT)
        assert response["Retry-After"] == "1"
        assert not Execution.objects.exists()

    def test_an_in_flight_record_past_lock_timeout_is_taken_over(self, client, user):
        key = new_key()
        in_flight_record(user, key, -timedelta(seconds=1))
        response = post(client, key)
        assert response.status_code == 201
        assert Execution.objects.filter(key=key).count() == 1
        assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.COMPLETED


class TestFingerprintMismatch:
    def test_other_body(self, client):
        key = new_key()
        post(client, key, {"amount": 100})
        assert_problem(post(client, key, {"amount": 999}), REUSED)
        assert Execution.objects.count() == 1

    def test_other_method(self, client):
        key = new_key()
        post(client, key)
        assert_problem(post(client, key, method="put"), REUSED)

    def test_other_endpoint(self, client):
        key = new_key()
        post(client, key)
        assert_problem(post(client, key, url="/charge/"), REUSED)
        assert Execution.objects.count() == 1

    def test_other_query_string(self, client):
        key = new_key()
        post(client, key, url=URL + "?page=1")
        assert_problem(post(client, key, url=URL + "?page=2"), REUSED)


class TestMissingKey:
    def test_required_by_default(self, client):
        assert_problem(post(client), MISSING)
        assert not Execution.objects.exists()

    @override_settings(IDEMPOTENCY={"HEADER": "X-Request-Id"})
    def test_the_detail_names_the_configured_header(self, client):
        response = post(client)
        assert json.loads(response.content)["detail"].startswith(
            "This request must carry an X-Request-Id header."
        )

    @override_settings(IDEMPOTENCY={"HEADER": "X-Request-Id"})
    def test_the_header_setting_is_read_per_request(self, client):
        key = new_key()
        headers = {"X-Request-Id": key}
        client.post(URL, {"amount": 1}, format="json", headers=headers)
        retry = client.post(URL, {"amount": 1}, format="json", headers=headers)
        assert retry["Idempotent-Replayed"] == "true"

    def test_optional_key_runs_without_protection(self, client):
        post(client, url="/optional/")
        post(client, url="/optional/")
        assert Execution.objects.filter(label="optional").count() == 2
        assert not IdempotencyKey.objects.exists()

    def test_optional_key_still_protects_when_sent(self, client):
        key = new_key()
        post(client, key, url="/optional/")
        assert post(client, key, url="/optional/")["Idempotent-Replayed"] == "true"
        assert Execution.objects.filter(label="optional").count() == 1

    @override_settings(IDEMPOTENCY={"REQUIRED": False})
    def test_required_setting(self, client):
        assert post(client).status_code == 201


class TestMalformedKey:
    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ("", EMPTY),
            ("   ", EMPTY),
            ('""', EMPTY),
            ("k" * 256, TOO_LONG),
            ('"' + "k" * 256 + '"', TOO_LONG),
            ("with space", CHARACTERS),
            ('"with space"', CHARACTERS),
            ("tab\there", CHARACTERS),
            ("caf\u00e9", CHARACTERS),
            ("\x7f", CHARACTERS),
            ('"unterminated\\"', QUOTING),
            ('"bad \\n escape"', QUOTING),
            ('"a"b"', QUOTING),
            ('"a" b', QUOTING),
            # A header sent twice, as servers join it, or a list of keys.
            ("8e03978e,8e03978e", LIST),
            ("8e03978e, 8e03978e", LIST),
            ("aaa,bbb", LIST),
            ("aaa,", LIST),
            (",aaa", LIST),
            ('"aaa","aaa"', LIST),
            ('"aaa", "aaa"', LIST),
            ('"a,b", "a,b"', LIST),
            ('"aaa",bbb', LIST),
            ('aaa,"aaa"', LIST),
            # Structured-field parameters, quoted or bare.
            ('"aaa";a=1', PARAMETERS),
            ("aaa;a=1", PARAMETERS),
            ('"aaa" ;a="1"', PARAMETERS),
        ],
    )
    def test_is_refused_and_says_why(self, client, value, reason):
        assert_problem(post(client, value), malformed(reason))
        assert not Execution.objects.exists()
        assert not IdempotencyKey.objects.exists()

    def test_a_header_sent_twice_never_runs_the_handler_again(self, client):
        first = post(client, "8e03978e")
        assert first.status_code == 201
        # The same line twice, joined by the server: refused, not a new key.
        assert post(client, "8e03978e,8e03978e").status_code == 400
        assert post(client, "8e03978e")["Idempotent-Replayed"] == "true"
        assert Execution.objects.count() == 1

    def test_a_comma_inside_a_quoted_key_is_part_of_the_key(self, client):
        first = post(client, '"a,b"')
        assert first.status_code == 201
        assert IdempotencyKey.objects.get().key == "a,b"
        retry = post(client, '  "a,b"\t')
        assert retry["Idempotent-Replayed"] == "true"
        assert retry.content == first.content
        assert Execution.objects.count() == 1

    def test_255_visible_characters_are_accepted(self, client):
        key = "!" + "k" * 253 + "~"
        assert post(client, key).status_code == 201
        assert IdempotencyKey.objects.get().key == key

    def test_quoted_form_equals_bare_form(self, client):
        post(client, '"8e03978e-40d5"')
        retry = post(client, "8e03978e-40d5")
        assert retry["Idempotent-Replayed"] == "true"
        assert IdempotencyKey.objects.get().key == "8e03978e-40d5"
        assert Execution.objects.count() == 1

    def test_keys_differing_only_in_case_are_different_keys(self, client):
        # MySQL/MariaDB compare case-insensitively unless told otherwise.
        post(client, "key-abc", {"amount": 1})
        other = post(client, "KEY-ABC", {"amount": 2})
        assert other.status_code == 201
        assert "Idempotent-Replayed" not in other
        assert Execution.objects.count() == 2

    def test_quoted_form_unescapes(self, client):
        post(client, '"a\\"b\\\\c"')
        assert IdempotencyKey.objects.get().key == 'a"b\\c'


class TestHandlerFailure:
    def test_validation_error_rolls_back_and_frees_the_key(self, client):
        key = new_key()
        response = post(client, key, url=URL + "?raise=validation")
        assert response.status_code == 400
        assert response.json() == {"amount": ["This field is wrong."]}
        assert not Execution.objects.exists()
        assert not IdempotencyKey.objects.exists()
        corrected = post(client, key, url=URL + "?raise=validation")
        assert corrected.status_code == 400  # ran again: nothing was stored
        assert post(client, key).status_code == 201  # a corrected request (other path) runs

    def test_any_exception_rolls_back_and_frees_the_key(self, user):
        client = client_for(user)
        key = new_key()
        assert post(client, key, url=URL + "?raise=error").status_code == 500
        assert not Execution.objects.exists()
        assert not IdempotencyKey.objects.exists()
        retry = post(client, key)
        assert retry.status_code == 201
        assert Execution.objects.count() == 1

    @pytest.mark.parametrize("status", [500, 502, 503, 429])
    def test_server_errors_and_429_roll_back_and_are_not_stored(self, client, status):
        key = new_key()
        assert post(client, key, url=f"{URL}?status={status}").status_code == status
        assert not Execution.objects.exists()
        assert not IdempotencyKey.objects.exists()
        assert post(client, key, url=f"{URL}?status={status}").status_code == status

    @override_settings(IDEMPOTENCY={"STORE_SERVER_ERRORS": True})
    def test_store_server_errors_stores_5xx(self, client):
        key = new_key()
        post(client, key, url=URL + "?status=503")
        retry = post(client, key, url=URL + "?status=503")
        assert retry.status_code == 503
        assert retry["Idempotent-Replayed"] == "true"
        assert Execution.objects.count() == 1

    @override_settings(IDEMPOTENCY={"STORE_SERVER_ERRORS": True})
    def test_429_is_never_stored(self, client):
        key = new_key()
        post(client, key, url=URL + "?status=429")
        assert not IdempotencyKey.objects.exists()

    @pytest.mark.parametrize("status", [400, 402, 404, 409])
    def test_other_4xx_responses_are_stored_and_replayed(self, client, status):
        key = new_key()
        first = post(client, key, url=f"{URL}?status={status}")
        retry = post(client, key, url=f"{URL}?status={status}")
        assert first.status_code == retry.status_code == status
        assert retry["Idempotent-Replayed"] == "true"
        assert retry.content == first.content
        assert Execution.objects.count() == 1


def streamed(response) -> bytes:
    """A streamed body, read as a server would: asynchronously if the
    handler's iterator is asynchronous."""
    if response.is_async:

        async def read() -> bytes:
            return b"".join([chunk async for chunk in response.streaming_content])

        return async_to_sync(read)()
    return b"".join(response.streaming_content)


# Handlers that stream from a synchronous and from an asynchronous iterator.
STREAMS = ["stream=2500", "stream=2500&async=1"]


@pytest.fixture
def small_packet(transactional_db):
    """MariaDB with max_allowed_packet at 256 KiB, for new connections, and
    the package's reading of it forgotten; restored afterwards."""
    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@global.max_allowed_packet")
        (original,) = cursor.fetchone()
        cursor.execute("SET GLOBAL max_allowed_packet = 262144")
    connection.close()
    MAX_ALLOWED_PACKETS.clear()
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET GLOBAL max_allowed_packet = %s", [original])
        connection.close()
        MAX_ALLOWED_PACKETS.clear()


class TestLargeAndStreamingResponses:
    @pytest.mark.parametrize("query", STREAMS)
    def test_a_stream_is_stored_and_replayed(self, client, query):
        key = new_key()
        first = post(client, key, url=f"{URL}?{query}")
        assert first.status_code == 200
        assert first.streaming  # still streamed to the first client
        assert first.is_async == ("async" in query)  # and as the handler made it
        assert streamed(first) == b"x" * 2500
        retry = post(client, key, url=f"{URL}?{query}")
        assert retry.content == b"x" * 2500
        assert retry["Content-Type"] == "text/plain"
        assert retry["Idempotent-Replayed"] == "true"
        assert Execution.objects.count() == 1

    def test_a_transient_stream_runs_inside_the_transaction_it_rolls_back(self, client):
        response = post(client, new_key(), url=URL + "?stream=2500&stream_writes=1&status=503")
        assert response.status_code == 503
        assert b"".join(response.streaming_content) == b"x" * 2500
        assert not Execution.objects.exists()

    @pytest.mark.parametrize("query", [*STREAMS, "size=2001"])
    @override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": 2000})
    def test_a_response_over_the_limit_fails_and_rolls_back(self, client, query):
        assert_problem(post(client, new_key(), url=f"{URL}?{query}"), TOO_LARGE)
        assert not Execution.objects.exists()
        assert not IdempotencyKey.objects.exists()

    @pytest.mark.vendor("mysql")
    @override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": 64 * 1024 * 1024})
    def test_a_response_the_server_cannot_store_fails_like_one_over_the_limit(self, client):
        # MariaDB's max_allowed_packet (16 MiB by default) is below this
        # response: it answered 503 "retry", and every retry ran the handler.
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT @@max_allowed_packet")
            packet = cursor.fetchone()[0]
        query = f"size={packet + 1}"
        for _attempt in range(2):
            assert_problem(post(client, "k", url=f"{URL}?{query}"), TOO_LARGE)
        assert not Execution.objects.exists()
        assert not IdempotencyKey.objects.exists()

    @pytest.mark.vendor("mysql")
    @override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": 1024 * 1024})
    def test_a_server_whose_packet_is_below_a_mebibyte_is_measured_too(self, client, small_packet):
        # 256 KiB: a response of 300,000 bytes cannot be stored, though it is
        # below MAX_RESPONSE_BYTES; one of 100,000 can.
        assert_problem(post(client, "big", url=f"{URL}?size=300000"), TOO_LARGE)
        assert not Execution.objects.exists()
        first = post(client, "small", url=f"{URL}?size=100000")
        assert first.status_code == 200
        assert post(client, "small", url=f"{URL}?size=100000").content == first.content

    @pytest.mark.vendor("mysql")
    @override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": 64 * 1024 * 1024})
    def test_a_response_the_server_can_store_is_stored_past_a_mebibyte(self, client):
        query = f"size={3 * 1024 * 1024}"
        first = post(client, "k", url=f"{URL}?{query}")
        assert first.status_code == 200
        assert post(client, "k", url=f"{URL}?{query}").content == first.content
        assert Execution.objects.count() == 1

    @pytest.mark.parametrize("query", STREAMS)
    @override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": 2000})
    def test_a_transient_answer_over_the_limit_is_the_handlers_own(self, client, query):
        # It is never stored, so the limit for what is stored does not apply.
        key = new_key()
        response = post(client, key, url=f"{URL}?{query}&status=503")
        assert response.status_code == 503
        assert streamed(response) == b"x" * 2500
        assert not IdempotencyKey.objects.exists()
        assert post(client, key, url=f"{URL}?{query}&status=503").status_code == 503
        assert not Execution.objects.exists()  # a transient answer's effects roll back

    @override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": 2000})
    def test_a_body_at_the_limit_is_stored(self, client):
        key = new_key()
        post(client, key, url=URL + "?size=2000")
        assert post(client, key, url=URL + "?size=2000").content == b"y" * 2000


class TestExpiry:
    def test_an_expired_record_is_a_new_key(self, client):
        key = new_key()
        post(client, key, {"amount": 1})
        IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
        # Even another payload is accepted: the old record is gone for good.
        response = post(client, key, {"amount": 2})
        assert response.status_code == 201
        assert "Idempotent-Replayed" not in response
        assert Execution.objects.count() == 2
        record = IdempotencyKey.objects.get()
        assert json.loads(bytes(record.body))["data"] == {"amount": 2}

    def test_per_view_ttl(self, client):
        key = new_key()
        before = timezone.now()
        post(client, key, url="/short-ttl/")
        record = IdempotencyKey.objects.get()
        assert before + timedelta(seconds=30) <= record.expires_at
        assert record.expires_at <= timezone.now() + timedelta(seconds=30)

    @override_settings(IDEMPOTENCY={"TTL": 5})
    def test_ttl_setting_in_seconds(self, client):
        post(client, new_key())
        record = IdempotencyKey.objects.get()
        assert record.expires_at == record.completed_at + timedelta(seconds=5)


class TestSafeMethods:
    @pytest.mark.parametrize("method", ["get", "head", "options"])
    def test_pass_through_untouched(self, client, method):
        response = getattr(client, method)(URL, headers={"Idempotency-Key": new_key()})
        assert response.status_code in (200, 201)
        assert "Idempotent-Replayed" not in response
        assert not IdempotencyKey.objects.exists()

    def test_safe_methods_need_no_key(self, client):
        assert client.get(URL).status_code == 201  # the view answers GET with a fresh run
        assert not IdempotencyKey.objects.exists()
