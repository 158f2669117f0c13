"""``idempotency.testing`` and the pytest plugin, as a project's tests use
them: a client that sends keys and retries, assertions, fixtures, and keys
made optional for an existing suite."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from django.http import HttpResponseRedirect
from django.urls import path
from rest_framework.test import APIClient

import tests.urls
from idempotency.testing import (
    IdempotentAPIClient,
    assert_problem,
    assert_replay,
    keys_optional,
    keys_required,
)
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db

URL = "/function/"


@pytest.fixture
def kit_client(idempotent_client, user) -> IdempotentAPIClient:
    idempotent_client.force_authenticate(user)
    return idempotent_client


def test_the_plugin_is_registered_for_pytest():
    plugins = {entry.name: entry.value for entry in entry_points(group="pytest11")}
    assert plugins["idempotency"] == "idempotency.pytest_plugin"


def test_the_client_sends_a_new_key_and_retries_with_it(kit_client):
    first = kit_client.post(URL, {"amount": 1}, format="json")
    assert first.status_code == 201
    key = kit_client.last_key
    assert key is not None
    second = kit_client.retry()
    assert kit_client.last_key == key
    assert_replay(first, second)
    # DRF's tests read the replay's document as they read the first's.
    assert second.data == first.data
    other = kit_client.post(URL, {"amount": 1}, format="json")
    assert kit_client.last_key != key
    assert other.status_code == 201
    assert Execution.objects.count() == 2


def test_a_key_the_test_gives_is_kept(kit_client):
    kit_client.post(URL, {"amount": 1}, format="json", headers={"Idempotency-Key": "mine"})
    assert kit_client.last_key == "mine"
    kit_client.post(URL, {"amount": 1}, format="json", HTTP_IDEMPOTENCY_KEY="mine")
    assert kit_client.last_key == "mine"
    assert Execution.objects.filter(key="mine").count() == 1


def test_safe_methods_get_no_key(kit_client):
    kit_client.get(URL)
    assert kit_client.last_key is None


def test_retry_needs_a_request(idempotent_client):
    with pytest.raises(RuntimeError, match="needs an unsafe request"):
        idempotent_client.retry()


def test_retry_sends_the_last_unsafe_request_not_a_later_get(kit_client):
    first = kit_client.post(URL, {"amount": 1}, format="json")
    kit_client.get(URL)
    assert_replay(first, kit_client.retry())


def test_a_key_set_with_credentials_is_the_one_sent(kit_client):
    kit_client.credentials(HTTP_IDEMPOTENCY_KEY="from-credentials")
    first = kit_client.post(URL, {"amount": 1}, format="json")
    assert kit_client.last_key == "from-credentials"
    assert Execution.objects.filter(key="from-credentials").count() == 1
    assert_replay(first, kit_client.retry())


def redirect(request, code):
    response = HttpResponseRedirect(URL)
    response.status_code = code
    return response


urlpatterns = [path("redirect/<int:code>/", redirect), *tests.urls.urlpatterns]


@pytest.mark.urls(__name__)
def test_a_followed_redirect_is_a_hop_of_the_request_retry_sends(kit_client):
    kit_client.post("/redirect/302/", {"amount": 1}, format="json", follow=True)
    arguments, _ = kit_client.last_request
    assert arguments[:2] == ("POST", "/redirect/302/")


@pytest.mark.urls(__name__)
def test_a_307_repeats_the_request_with_its_key(kit_client):
    """As HTTP clients do: the redirected POST carries the same key."""
    response = kit_client.post("/redirect/307/", {"amount": 1}, format="json", follow=True)
    assert response.status_code == 201
    key = kit_client.last_key
    assert Execution.objects.filter(key=key).count() == 1
    again = kit_client.post(URL, {"amount": 1}, format="json", headers={"Idempotency-Key": key})
    assert_replay(response, again)


def test_problems_read_as_drf_tests_expect(client):
    response = client.post(URL, {"amount": 1}, format="json")
    assert_problem(response, "key-missing", status=400)
    assert response.data["type"].endswith(":key-missing")
    assert response.data["status"] == 400
    with pytest.raises(AssertionError):
        assert_problem(response, "key-reused")
    with pytest.raises(AssertionError):
        assert_problem(response, "key-missing", status=422)


def test_assert_replay_refuses_what_is_no_replay(kit_client):
    first = kit_client.post(URL, {"amount": 1}, format="json")
    another = kit_client.post(URL, {"amount": 1}, format="json")
    with pytest.raises(AssertionError, match="not a replay"):
        assert_replay(first, another)
    with pytest.raises(AssertionError, match="itself a replay"):
        assert_replay(kit_client.retry(), first)


def test_an_existing_suite_runs_with_keys_optional(idempotency_keys_optional, user):
    """The fixture, made autouse in a project's conftest.py, keeps tests
    that post without a key green."""
    existing = APIClient()
    existing.force_authenticate(user)
    assert existing.post(URL, {"amount": 1}, format="json").status_code == 201


def test_one_test_of_such_a_suite_requires_keys_again(idempotency_keys_optional, user):
    """The README's test of the 400, in a suite whose conftest.py makes keys
    optional."""
    existing = APIClient()
    existing.force_authenticate(user)
    with keys_required():
        response = existing.post(URL, {"amount": 1}, format="json")
    assert_problem(response, "key-missing", status=400)
    assert existing.post(URL, {"amount": 1}, format="json").status_code == 201


def test_keys_optional_is_a_block_too(client):
    with keys_optional():
        assert client.post(URL, {"amount": 1}, format="json").status_code == 201
    assert client.post(URL, {"amount": 1}, format="json").status_code == 400


def test_no_key_before_the_first_request(idempotent_client):
    assert idempotent_client.last_key is None


def test_a_streamed_first_answer_and_its_replay(kit_client):
    first = kit_client.post(f"{URL}?stream=2500", {"amount": 1}, format="json")
    assert first.streaming
    assert_replay(first, kit_client.retry())


def test_a_replay_that_is_not_json_has_no_data(user):
    from django.test import Client

    dclient = Client()
    dclient.force_login(user)
    headers = {"Idempotency-Key": "text"}
    first = dclient.post("/django/view/", b"{}", content_type="application/json", headers=headers)
    again = dclient.post("/django/view/", b"{}", content_type="application/json", headers=headers)
    assert_replay(first, again)
    assert again.data is None
    assert_problem(
        dclient.post("/django/view/", b"{}", content_type="application/json"), "key-missing"
    )
