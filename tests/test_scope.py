"""The scope a key lives in: principals never share one, and a scope that
identifies no client is refused instead of becoming one that all share."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework.test import APIClient

from idempotency.models import IdempotencyKey
from tests.helpers import new_key
from tests.testapp.models import Execution, ServiceAccount

pytestmark = pytest.mark.django_db

SCOPE_MISSING = {
    "type": "tag:django-idempotency,2026:scope-missing",
    "title": "Client not identified",
    "status": 400,
    "detail": "This request could not be tied to a client: neither credentials nor a session "
    "identify it, so its Idempotency-Key cannot be kept apart from other clients' keys. Sign "
    "in or start a session, then send the request again.",
}


def as_principal(principal: str, key: str, data: dict | None = None):
    return APIClient().post(
        "/principal/",
        data or {"amount": 1},
        format="json",
        headers={"Idempotency-Key": key, "X-Principal": principal},
    )


def assert_scope_missing(response) -> None:
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert json.loads(response.content) == SCOPE_MISSING


class TestDefaultScope:
    def test_names_the_principals_model_and_primary_key(self, user):
        as_principal(f"user:{user.username}", "k")
        assert IdempotencyKey.objects.get().scope == f"testapp.user:{user.pk}"

    def test_a_service_account_never_shares_a_users_scope(self, user):
        # A custom authentication class returns a service account whose
        # primary key equals the user's: two principals, two executions.
        ServiceAccount.objects.create(id=user.pk, name="billing")
        key = new_key()
        mine = as_principal(f"user:{user.username}", key)
        theirs = as_principal("account:billing", key)
        assert mine.status_code == theirs.status_code == 201
        assert "Idempotent-Replayed" not in theirs
        assert json.loads(theirs.content)["execution"] != json.loads(mine.content)["execution"]
        assert Execution.objects.count() == 2
        assert set(IdempotencyKey.objects.values_list("scope", flat=True)) == {
            f"testapp.user:{user.pk}",
            f"testapp.serviceaccount:{user.pk}",
        }

    def test_a_proxy_models_instance_is_the_same_principal(self, user):
        key = new_key()
        as_principal(f"user:{user.username}", key)
        retry = as_principal(f"staff:{user.username}", key)
        assert retry["Idempotent-Replayed"] == "true"
        assert Execution.objects.count() == 1

    def test_a_principal_that_is_not_a_model_is_named_by_its_class(self, user):
        key = new_key()
        as_principal(f"user:{user.username}", key)
        plain = as_principal(f"plain:{user.pk}", key)
        assert plain.status_code == 201
        assert "Idempotent-Replayed" not in plain
        assert IdempotencyKey.objects.filter(
            scope=f"tests.testapp.views.PlainPrincipal:{user.pk}"
        ).exists()

    def test_a_multi_table_child_is_the_principal_whose_row_it_extends(self, user):
        from tests.testapp.models import Customer

        customer = Customer(user_ptr=user, plan="gold")
        customer.save_base(raw=True)  # the child's row, on the user's
        key = new_key()
        as_principal(f"user:{user.username}", key)
        retry = as_principal(f"customer:{user.username}", key)
        assert retry["Idempotent-Replayed"] == "true"
        assert IdempotencyKey.objects.get().scope == f"testapp.user:{user.pk}"

    @pytest.mark.parametrize("pk", ["", "_"])
    def test_a_principal_with_an_empty_primary_key_is_refused(self, db, pk):
        # Two such principals would otherwise share the scope "<class>:".
        assert_scope_missing(as_principal(f"blank:{pk}", "k"))
        assert not IdempotencyKey.objects.exists()

    def test_a_principal_without_a_primary_key_is_refused(self, db, caplog):
        with caplog.at_level(logging.WARNING, logger="idempotency"):
            assert_scope_missing(as_principal("plain:", "k"))
        assert not Execution.objects.exists()
        assert not IdempotencyKey.objects.exists()
        assert [r.getMessage() for r in caplog.records if r.name == "idempotency"] == [
            "The scope of tests.testapp.views.principal returned None for POST /principal/, "
            "which identifies no client; answered 400. Return a value that tells clients "
            "apart, such as their session key once they have a session."
        ]


class TestMissingScope:
    @pytest.mark.parametrize("kind", ["none", "empty", "blank", "false", "list"])
    def test_is_refused_and_never_runs_the_handler(self, db, kind):
        response = APIClient().post(
            "/missing-scope/", {}, format="json", headers={"Idempotency-Key": "k", "X-Scope": kind}
        )
        assert_scope_missing(response)
        assert not Execution.objects.exists()
        assert not IdempotencyKey.objects.exists()

    @pytest.mark.parametrize(
        ("kind", "stored"),
        [
            ("zero", "0"),  # a primary key may be 0
            ("uuid", "12345678-1234-5678-1234-567812345678"),
            # A scope that looks hashed is hashed, so that it cannot meet a
            # long scope's hash.
            ("hash-like", "sha256:" + hashlib.sha256(b"sha256:" + b"0" * 64).hexdigest()),
        ],
    )
    def test_a_str_int_or_uuid_is_stored_as_text(self, db, kind, stored):
        response = APIClient().post(
            "/missing-scope/", {}, format="json", headers={"Idempotency-Key": "k", "X-Scope": kind}
        )
        assert response.status_code == 201
        assert IdempotencyKey.objects.get().scope == stored

    @pytest.mark.parametrize(
        ("kind", "name"), [("object", "object"), ("dict", "dict"), ("true", "bool")]
    )
    def test_a_value_whose_text_may_change_is_a_configuration_error(self, db, kind, name):
        # An object's default text holds its address: a retry would land in
        # another scope and run the handler again.
        with pytest.raises(ImproperlyConfigured) as excinfo:
            APIClient().post(
                "/missing-scope/",
                {},
                format="json",
                headers={"Idempotency-Key": "k", "X-Scope": kind},
            )
        assert str(excinfo.value) == (
            "The scope of tests.testapp.views.missing_scope is wrong: a scope must be a str, an "
            f"int or a UUID, not {name}: the same client must get the same scope on every "
            "request."
        )
        assert not Execution.objects.exists()

    def test_two_browsers_without_a_session_never_share_a_response(self, db):
        # The defect: both scopes were the string "None", and the second
        # browser received the first one's response.
        key = new_key()
        for _browser in range(2):
            response = APIClient().post(
                "/by-session-key/", {"amount": 1}, format="json", headers={"Idempotency-Key": key}
            )
            assert_scope_missing(response)
        assert not Execution.objects.exists()


class TestSessionScope:
    """The README's scope for anonymous clients: their session."""

    def browser(self) -> APIClient:
        browser = APIClient()
        assert browser.get("/start-session/").status_code == 200
        return browser

    def charge(self, browser: APIClient, key: str):
        return browser.post(
            "/by-session/", {"amount": 1}, format="json", headers={"Idempotency-Key": key}
        )

    def test_a_browser_that_retries_gets_its_replay(self, db):
        browser = self.browser()
        key = new_key()
        first = self.charge(browser, key)
        retry = self.charge(browser, key)
        assert first.status_code == 201
        assert retry["Idempotent-Replayed"] == "true"
        assert retry.content == first.content
        assert Execution.objects.count() == 1

    def test_two_browsers_with_one_key_run_twice_and_never_see_each_other(self, db):
        key = new_key()
        first = self.charge(self.browser(), key)
        second = self.charge(self.browser(), key)
        assert second.status_code == 201
        assert "Idempotent-Replayed" not in second
        assert second.content != first.content
        assert Execution.objects.count() == 2

    def test_a_browser_without_a_session_is_refused(self, db):
        assert_scope_missing(self.charge(APIClient(), "k"))

    def test_a_signed_in_user_keeps_the_default_scope(self, user):
        browser = APIClient()
        browser.force_authenticate(user)
        assert self.charge(browser, "k").status_code == 201
        assert IdempotencyKey.objects.get().scope == f"testapp.user:{user.pk}"


def test_a_request_outside_a_view_is_named_by_its_path():
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from idempotency.core import view_name

    assert view_name(Request(APIRequestFactory().post("/somewhere/"))) == "/somewhere/"
