"""A handler that rolls its own work back gets its own answer through, and
leaves nothing behind: no effect, no record, the key free."""

from __future__ import annotations

import json

import pytest

from idempotency.models import IdempotencyKey
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/rolls-back/"
# How the handler undoes its work; the raw cursor leaves no mark that
# Django sees, and only PostgreSQL aborts a transaction on an error.
WAYS = [
    "set_rollback",
    "orm",
    pytest.param("cursor", marks=pytest.mark.vendor("postgresql")),
]


def charge(client, body: dict, key: str = "k"):
    return client.post(URL, body, format="json", headers={"Idempotency-Key": key})


@pytest.mark.parametrize("how", WAYS)
def test_the_client_gets_the_handlers_own_answer_and_nothing_is_kept(client, how, requests_mode):
    response = charge(client, {"rollback": how})
    assert response.status_code == 400
    assert json.loads(response.content) == {"detail": f"refused ({how})"}
    assert "Idempotent-Replayed" not in response
    assert not Execution.objects.exclude(label="before-the-handler").exists()
    assert not IdempotencyKey.objects.exists()


@pytest.mark.parametrize("how", WAYS)
def test_what_the_request_wrote_before_the_handler_goes_as_it_would_undecorated(
    client, how, requests_mode
):
    # Under ATOMIC_REQUESTS the handler's rollback undoes the request's
    # transaction, as it does without the package; otherwise the earlier
    # write had committed on its own.
    charge(client, {"rollback": how})
    before = Execution.objects.filter(label="before-the-handler").count()
    assert before == (0 if requests_mode else 1)


@pytest.mark.parametrize("how", WAYS)
def test_the_key_is_free_for_a_corrected_retry(client, how, requests_mode):
    charge(client, {"rollback": how})
    corrected = charge(client, {"rollback": ""})
    assert corrected.status_code == 201
    assert Execution.objects.exclude(label="before-the-handler").get().label == "rolls-back"
    assert charge(client, {"rollback": ""})["Idempotent-Replayed"] == "true"
