"""The read-only admin of the stored records."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from model_bakery import baker

from idempotency.models import IdempotencyKey
from tests.testapp.models import User

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
