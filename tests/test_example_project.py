"""The example project's story: a double-clicked charge deducts once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from example_project.wallet.models import Charge, Order, Wallet
from tests.concurrency import Threads
from tests.helpers import client_for, new_key, post
from tests.testapp.models import User

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo(db) -> APIClient:
    client = APIClient()
    assert client.login(username="demo", password="demo")  # made by a data migration
    return client


def charge(client, key: str | None, amount: int):
    return post(client, key, url="/example/charges/", amount=amount)


def test_the_demo_user_starts_with_1000_points(demo):
    assert demo.get("/example/wallet/").json() == {"balance": 1000, "charges": []}


def test_a_double_clicked_charge_deducts_once(demo):
    key = new_key()
    first = charge(demo, key, 100)
    second = charge(demo, key, 100)
    assert first.status_code == 201
    assert first.json()["balance"] == 900
    assert first["Location"] == f"/api/charges/{first.json()['id']}/"
    assert second["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    assert Wallet.objects.get(user__username="demo").balance == 900
    assert Charge.objects.count() == 1


def test_the_same_key_for_another_amount_is_refused(demo):
    key = new_key()
    charge(demo, key, 100)
    assert charge(demo, key, 5).status_code == 422
    assert charge(demo, None, 5).status_code == 400
    assert Wallet.objects.get(user__username="demo").balance == 900


def test_not_enough_points_is_a_stored_outcome(demo):
    key = new_key()
    refused = charge(demo, key, 5000)
    assert refused.status_code == 402
    assert refused.json() == {"detail": "Not enough points: the balance is 1000."}
    assert charge(demo, key, 5000)["Idempotent-Replayed"] == "true"


def test_an_invalid_amount_is_not_stored(demo):
    key = new_key()
    assert charge(demo, key, 0).status_code == 400
    assert charge(demo, key, 100).status_code == 201  # the key was still free


def test_orders_take_a_key_for_every_change(demo):
    key = new_key()
    headers = {"Idempotency-Key": key}
    created = demo.post("/example/orders/", {"product": "pen"}, format="json", headers=headers)
    again = demo.post("/example/orders/", {"product": "pen"}, format="json", headers=headers)
    assert created.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    order = created.json()["id"]
    assert (
        demo.patch(f"/example/orders/{order}/", {"quantity": 2}, format="json").status_code == 400
    )
    cancel = {"Idempotency-Key": new_key()}
    assert demo.delete(f"/example/orders/{order}/", headers=cancel).status_code == 204
    assert demo.delete(f"/example/orders/{order}/", headers=cancel).status_code == 204
    assert not Order.objects.exists()


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_ten_simultaneous_clicks_deduct_once():
    # A transactional test starts from an empty database: no demo user.
    user = User.objects.create_user(username="clicker", password="pw")
    Wallet.objects.create(user=user, balance=1000)
    key = new_key()

    def click():
        return charge(client_for(user), key, 100)

    responses = Threads([click] * 10).join()
    assert sorted({r.status_code for r in responses}) in ([201], [201, 409])
    assert Wallet.objects.get(user=user).balance == 900
    assert Charge.objects.count() == 1


def test_the_example_project_migrates_and_checks_on_sqlite(tmp_path):
    # The quick start's first command, short of serving: a fresh SQLite file.
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
    }
    for command in (["migrate", "-v", "0"], ["check"]):
        result = subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    assert result.stdout == "System check identified no issues (0 silenced).\n"


@pytest.mark.urls("example_project.urls")
@pytest.mark.django_db
def test_the_remote_page_calls_only_the_origins_the_project_names(client, settings):
    settings.EXAMPLE_API_ORIGINS = ["http://127.0.0.1:8000"]
    assert client.get("/remote/?api=http://127.0.0.1:8000").status_code == 200
    refused = client.get("/remote/?api=http://attacker.example")
    assert refused.status_code == 400
    assert b"http://127.0.0.1:8000" in refused.content
