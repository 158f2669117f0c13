"""The guarantees (docs/concurrency.rst) that need no concurrency to prove
(the concurrent ones are in test_concurrency.py), and section 7's statement
budget."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from django.core.cache import cache
from django.db import connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from idempotency.models import IdempotencyKey
from tests.helpers import URL, client_for, new_key, post
from tests.testapp.models import Execution


@pytest.mark.django_db(transaction=True)
class TestG2Atomic:
    """Real commits: effects and the stored response commit together or not at all."""

    def test_success_commits_effects_and_record_together(self, client):
        key = new_key()
        post(client, key)
        assert Execution.objects.filter(key=key).count() == 1
        assert IdempotencyKey.objects.get(key=key).state == IdempotencyKey.State.COMPLETED

    def test_a_failure_after_the_effects_commits_neither(self, user):
        client = client_for(user)
        key = new_key()
        assert post(client, key, url=URL + "?raise=error").status_code == 500
        assert not Execution.objects.exists()
        assert not IdempotencyKey.objects.exists()

    @override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": 10})
    def test_a_response_that_cannot_be_stored_commits_neither(self, client):
        assert post(client, new_key()).status_code == 500
        assert not Execution.objects.exists()
        assert not IdempotencyKey.objects.exists()

    def test_a_handler_with_its_own_atomic_block(self, client):
        key = new_key()
        post(client, key, url="/nested-atomic/")
        assert post(client, key, url="/nested-atomic/")["Idempotent-Replayed"] == "true"
        assert Execution.objects.count() == 1
        client_error = post(client, new_key(), url="/nested-atomic/?status=503")
        assert client_error.status_code == 503
        assert Execution.objects.count() == 1


@pytest.mark.django_db
class TestG3FaithfulReplay:
    def test_bytes_are_replayed_not_re_rendered(self, client):
        key = new_key()
        first = post(client, key)
        # A client asking for another format on retry still gets the stored bytes.
        retry = client.post(
            URL,
            {"amount": 1},
            format="json",
            headers={"Idempotency-Key": key, "Accept": "text/html"},
        )
        assert retry.content == first.content
        assert retry["Content-Type"] == "application/json"

    @override_settings(IDEMPOTENCY={"REPLAY_HEADERS": ["Content-Type"]})
    def test_location_is_always_replayed(self, client):
        key = new_key()
        first = post(client, key)
        assert post(client, key)["Location"] == first["Location"]


@pytest.mark.django_db
class TestG4Scope:
    def test_two_users_with_one_key_both_run_and_see_only_their_own(self, client, other_user):
        key = new_key()
        alice = post(client, key, {"amount": 1})
        bob_client = APIClient()
        bob_client.force_authenticate(other_user)
        bob = post(bob_client, key, {"amount": 1})
        assert "Idempotent-Replayed" not in bob
        assert alice.json()["execution"] != bob.json()["execution"]
        assert Execution.objects.filter(key=key).count() == 2
        assert post(bob_client, key, {"amount": 1}).content == bob.content

    def test_scope_is_the_user_primary_key(self, client, user):
        post(client, new_key())
        assert IdempotencyKey.objects.get().scope == f"testapp.user:{user.pk}"

    def test_same_key_on_another_endpoint_is_a_mismatch(self, client):
        key = new_key()
        post(client, key)
        assert post(client, key, url="/charge/").status_code == 422

    def test_a_custom_fingerprint_still_tells_endpoints_apart(self, client):
        key = new_key()
        post(client, key, url="/constant-a/")
        assert post(client, key, {"other": "body"}, url="/constant-a/").status_code == 201
        assert post(client, key, url="/constant-b/").status_code == 422
        assert Execution.objects.count() == 1

    def test_custom_scope_callable(self, client, other_user):
        key = new_key()
        headers = {"Idempotency-Key": key, "X-Tenant": "acme"}
        client.post("/custom-scope/", {"a": 1}, format="json", headers=headers)
        bob_client = APIClient()
        bob_client.force_authenticate(other_user)
        # Same tenant, another user, another body: the custom fingerprint ignores
        # the body, and the tenant scope makes it the same record.
        retry = bob_client.post("/custom-scope/", {"b": 2}, format="json", headers=headers)
        assert retry["Idempotent-Replayed"] == "true"
        assert IdempotencyKey.objects.get().scope == "tenant:acme"
        assert Execution.objects.count() == 1

    @override_settings(IDEMPOTENCY={"SCOPE": "tests.testapp.views.scope_by_tenant"})
    def test_scope_setting(self, client):
        post(client, new_key())
        assert IdempotencyKey.objects.get().scope == "tenant:none"

    def test_a_very_long_scope_is_hashed_into_the_column(self, client):
        long_tenant = "t" * 400
        client.post(
            "/custom-scope/",
            {},
            format="json",
            headers={"Idempotency-Key": "k", "X-Tenant": long_tenant},
        )
        scope = IdempotencyKey.objects.get().scope
        assert scope.startswith("sha256:")
        assert len(scope) == len("sha256:") + 64

    @pytest.mark.parametrize("tenant", ["a\x00b", "a\tb", "\x7f"])
    def test_a_scope_a_database_could_refuse_is_hashed_into_the_column(self, client, tenant):
        # PostgreSQL text cannot hold NUL: stored as it came, this was a 500.
        headers = {"Idempotency-Key": "k", "X-Tenant": tenant}
        assert client.post("/custom-scope/", {}, format="json", headers=headers).status_code == 201
        retry = client.post("/custom-scope/", {}, format="json", headers=headers)
        assert retry["Idempotent-Replayed"] == "true"
        expected = hashlib.sha256(f"tenant:{tenant}".encode()).hexdigest()
        assert IdempotencyKey.objects.get().scope == f"sha256:{expected}"
        assert Execution.objects.count() == 1

    def test_anonymous_requests_share_the_anonymous_scope(self, db):
        key = new_key()
        first = post(APIClient(), key, url="/anonymous/")
        retry = post(APIClient(), key, url="/anonymous/")
        assert retry["Idempotent-Replayed"] == "true"
        assert retry.content == first.content
        assert IdempotencyKey.objects.get().scope == "anonymous"

    def test_an_anonymous_key_is_bound_to_its_exact_request(self, user):
        # The policy for anonymous clients: the key is a bearer secret, and
        # what it can fetch is only the response to the very same request.
        key = new_key()
        post(APIClient(), key, {"order": 1}, url="/anonymous/")
        other_body = post(APIClient(), key, {"order": 2}, url="/anonymous/")
        assert other_body.status_code == 422
        signed_in = APIClient()
        signed_in.force_authenticate(user)
        own = post(signed_in, key, {"order": 1}, url="/anonymous/")
        assert own.status_code == 201  # a user's scope is never the anonymous one
        assert "Idempotent-Replayed" not in own
        assert Execution.objects.count() == 2


@pytest.mark.django_db
class TestAuthenticationComesFirst:
    def test_an_unauthenticated_retry_is_refused_not_replayed(self, client):
        key = new_key()
        post(client, key)
        response = post(APIClient(), key)
        assert response.status_code == 403
        assert "Idempotent-Replayed" not in response
        assert b"execution" not in response.content

    def test_throttling_applies_to_replays(self, client):
        cache.clear()
        key = new_key()
        assert post(client, key, url="/throttled/").status_code == 201
        assert post(client, key, url="/throttled/")["Idempotent-Replayed"] == "true"
        assert post(client, key, url="/throttled/").status_code == 429
        cache.clear()

    def test_token_authentication(self, user):
        token = Token.objects.create(user=user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        key = new_key()
        post(client, key)
        assert post(client, key)["Idempotent-Replayed"] == "true"
        assert IdempotencyKey.objects.get().scope == f"testapp.user:{user.pk}"

    def test_basic_authentication(self, user):
        client = APIClient()
        credentials = base64.b64encode(b"alice:pw").decode()
        client.credentials(HTTP_AUTHORIZATION=f"Basic {credentials}")
        key = new_key()
        post(client, key)
        assert post(client, key)["Idempotent-Replayed"] == "true"

    def test_session_authentication_with_csrf(self, user):
        client = APIClient(enforce_csrf_checks=True)
        assert client.login(username="alice", password="pw")
        key = new_key()
        # Without the CSRF token the session request is refused before any claim.
        assert post(client, key).status_code == 403
        assert not IdempotencyKey.objects.exists()
        # Django accepts its unmasked 32-character secret in both cookie and header.
        token = "s3cr3t" + "x" * 26
        client.cookies["csrftoken"] = token
        first = post(client, key, HTTP_X_CSRFTOKEN=token)
        assert first.status_code == 201
        retry = post(client, key, HTTP_X_CSRFTOKEN=token)
        assert retry["Idempotent-Replayed"] == "true"
        assert "csrftoken" not in retry.cookies


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("atomic_requests")
class TestG8AtomicRequests:
    def test_runs_once_and_replays(self, client):
        key = new_key()
        first = post(client, key)
        retry = post(client, key)
        assert retry.content == first.content
        assert Execution.objects.count() == 1

    def test_an_exception_rolls_back_and_frees_the_key(self, user):
        client = client_for(user)
        key = new_key()
        assert post(client, key, url=URL + "?raise=error").status_code == 500
        assert post(client, key, url=URL + "?raise=validation").status_code == 400
        assert not Execution.objects.exists()
        assert not IdempotencyKey.objects.exists()
        assert post(client, key).status_code == 201

    def test_a_server_error_response_rolls_back_only_the_handler(self, client):
        key = new_key()
        assert post(client, key, url=URL + "?status=503").status_code == 503
        assert not Execution.objects.exists()
        assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db(databases=["default", "other"], transaction=True)
class TestG8OtherDatabase:
    @pytest.fixture(autouse=True)
    def key_table_on_other(self, settings):
        settings.IDEMPOTENCY = {"DATABASE": "other"}

    def test_the_key_table_lives_on_the_configured_alias(self, client):
        key = new_key()
        post(client, key, url="/other-database/")
        assert post(client, key, url="/other-database/")["Idempotent-Replayed"] == "true"
        assert IdempotencyKey.objects.using("other").filter(key=key).count() == 1
        assert not IdempotencyKey.objects.using("default").exists()
        assert Execution.objects.using("other").count() == 1

    def test_effects_on_that_alias_roll_back_with_the_claim(self, user):
        client = client_for(user)
        key = new_key()
        assert post(client, key, url="/other-database/?raise=1").status_code == 500
        assert not Execution.objects.using("other").exists()
        assert not IdempotencyKey.objects.using("other").exists()


@pytest.mark.django_db
class TestG7BadInput:
    """Bad input gets a 4xx, never a 500, and never leaves a record behind."""

    @pytest.mark.parametrize(
        ("body", "content_type"),
        [
            (b'{"amount": ', "application/json"),
            (b'{"amount": "\xff\xfe"}', "application/json"),
            (b'{"n": 1' + b"0" * 5000 + b"}", "application/json"),
            (b"\x00\x01\x02", "application/octet-stream"),
            (b"amount=1", "text/plain"),
        ],
    )
    def test_hostile_bodies(self, client, body, content_type):
        response = client.post(
            URL, body, content_type=content_type, headers={"Idempotency-Key": new_key()}
        )
        assert 400 <= response.status_code < 500, response.content
        assert not IdempotencyKey.objects.exists()
        assert not Execution.objects.exists()

    @pytest.mark.parametrize(
        ("body", "content_type"),
        [
            (b"", "multipart/form-data"),
            (b"--b\r\nnonsense", "multipart/form-data; boundary=b"),
            (b"", "application/json"),
        ],
    )
    def test_odd_bodies_that_drf_accepts_pass_through(self, client, body, content_type):
        key = new_key()
        response = client.post(
            URL, body, content_type=content_type, headers={"Idempotency-Key": key}
        )
        assert response.status_code == 201
        assert post(client, key, data=None).status_code == 422  # the body still counted

    @override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100)
    @pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
    @pytest.mark.parametrize("url", [URL, "/stream-json/"])
    def test_a_json_body_over_djangos_limit(self, client, method, url):
        # Refused whatever the parser: one that reads the stream past the
        # limit (DRF's own before 3.16, and /stream-json/'s) would hand the
        # handler a body Django refused to hold, and the echoing handler
        # would answer a response too large to store.
        send = getattr(client, method)
        response = send(url, {"text": "x" * 200}, format="json", headers={"Idempotency-Key": "k"})
        assert response.status_code == 413
        assert response["Content-Type"] == "application/problem+json"
        assert json.loads(response.content)["title"] == "Request body too large"
        assert not IdempotencyKey.objects.exists()
        assert not Execution.objects.exists()

    @override_settings(DATA_UPLOAD_MAX_NUMBER_FIELDS=2)
    def test_too_many_fields_is_a_problem_document(self, client):
        response = client.post(
            URL,
            {"a": "1", "b": "2", "c": "3"},
            format="multipart",
            headers={"Idempotency-Key": new_key()},
        )
        assert response.status_code == 400
        assert json.loads(response.content)["detail"] == (
            "The request body could not be read: The number of GET/POST parameters exceeded "
            "settings.DATA_UPLOAD_MAX_NUMBER_FIELDS."
        )
        assert not IdempotencyKey.objects.exists()

    def test_malformed_multipart_is_a_problem_document(self, client):
        response = client.post(
            URL,
            b"garbage",
            content_type="multipart/form-data; boundary=",
            headers={"Idempotency-Key": new_key()},
        )
        assert response.status_code == 400
        assert response["Content-Type"] == "application/problem+json"
        assert json.loads(response.content)["detail"].startswith(
            "The request body could not be read: "
        )

    def test_multipart_with_a_file_is_fingerprinted_by_content(self, client):
        from django.core.files.uploadedfile import SimpleUploadedFile

        key = new_key()

        def upload(content: bytes):
            return client.post(
                URL,
                {"note": "hi", "file": SimpleUploadedFile("a.txt", content)},
                format="multipart",
                headers={"Idempotency-Key": key},
            )

        assert upload(b"one").status_code == 201
        assert upload(b"one")["Idempotent-Replayed"] == "true"
        assert upload(b"two").status_code == 422
        assert Execution.objects.count() == 1

    @pytest.mark.parametrize(
        "value", ["\x00", "a\x1bb", "k" * 10_000, "\u2603", "\udcff", "a\r\nX-Injected: 1"]
    )
    def test_hostile_key_values(self, client, value):
        response = client.post(URL, {}, format="json", HTTP_IDEMPOTENCY_KEY=value)
        assert response.status_code == 400
        assert not IdempotencyKey.objects.exists()


def _statements(queries) -> list[str]:
    control = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT", "BEGIN", "COMMIT")
    return [q["sql"] for q in queries if not q["sql"].upper().startswith(control)]


@pytest.mark.django_db
class TestStatementBudget:
    """docs/performance.rst: a first execution adds the claim and the stored
    response; a replay issues two statements, the claim and the read of the
    record in its way; a rejection issues none."""

    def test_first_execution_adds_two_statements(self, client):
        with CaptureQueriesContext(connections["default"]) as queries:
            post(client, new_key())
        statements = _statements(queries.captured_queries)
        handler = [sql for sql in statements if "testapp_execution" in sql]
        assert len(handler) == 1
        assert len(statements) - len(handler) == 2, statements

    def test_replay_issues_two_statements(self, client):
        key = new_key()
        post(client, key)
        with CaptureQueriesContext(connections["default"]) as queries:
            assert post(client, key)["Idempotent-Replayed"] == "true"
        statements = _statements(queries.captured_queries)
        # The claim's insert meets the record (or fails on it), which is
        # then read: a first execution sends the insert alone.
        assert len(statements) == 2, statements

    def test_a_rejected_request_issues_none(self, client):
        with CaptureQueriesContext(connections["default"]) as queries:
            assert client.post(URL, {}, format="json").status_code == 400
        assert queries.captured_queries == []


@pytest.mark.django_db
class TestBodyReadBeforeTheHandler:
    """A permission class that reads request.data consumes the raw body; the
    fingerprint must still tell payloads apart."""

    def test_json(self, client):
        key = new_key()
        first = post(client, key, {"amount": 1}, url="/peeking/")
        assert post(client, key, {"amount": 1}, url="/peeking/").content == first.content
        assert post(client, key, {"amount": 2}, url="/peeking/").status_code == 422
        assert Execution.objects.count() == 1

    def test_form(self, client):
        key = new_key()
        headers = {"Idempotency-Key": key}
        client.post("/peeking/", {"amount": "1"}, format="multipart", headers=headers)
        replay = client.post("/peeking/", {"amount": "1"}, format="multipart", headers=headers)
        assert replay["Idempotent-Replayed"] == "true"
        form = "application/x-www-form-urlencoded"
        other_key = {"Idempotency-Key": new_key()}
        client.post("/peeking/", "amount=1", content_type=form, headers=other_key)
        again = client.post("/peeking/", "amount=1", content_type=form, headers=other_key)
        assert again["Idempotent-Replayed"] == "true"
        refused = client.post("/peeking/", "amount=3", content_type=form, headers=other_key)
        assert refused.status_code == 422


@pytest.mark.django_db
def test_a_claim_lost_to_another_request_rolls_back(client):
    response = post(client, new_key(), url="/taken-over/")
    assert response.status_code == 409
    assert not Execution.objects.exists()
    assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db
class TestBodiesDjangoDoesNotHold:
    def test_multipart_put_and_patch_are_fingerprinted(self, client):
        # Django parses multipart bodies for POST only; DRF parses the others.
        for method in ("put", "patch"):
            key = new_key()
            send = getattr(client, method)
            headers = {"Idempotency-Key": key}
            first = send(URL, {"name": "first"}, format="multipart", headers=headers)
            assert first.status_code == 201
            replay = send(URL, {"name": "first"}, format="multipart", headers=headers)
            assert replay["Idempotent-Replayed"] == "true"
            other = send(URL, {"name": "second"}, format="multipart", headers=headers)
            assert other.status_code == 422

    @override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
    def test_an_upload_larger_than_django_holds_in_memory(self, client):
        key = new_key()

        def upload(content: bytes):
            return client.put(
                "/upload/a.bin",
                content,
                content_type="application/octet-stream",
                headers={
                    "Idempotency-Key": key,
                    "Content-Disposition": "attachment; filename=a.bin",
                },
            )

        first = upload(b"a" * 5000)
        assert first.status_code == 201
        assert first.json()["size"] == 5000
        assert upload(b"a" * 5000)["Idempotent-Replayed"] == "true"
        assert upload(b"b" * 5000).status_code == 422
        assert Execution.objects.count() == 1
