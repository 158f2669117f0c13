"""The stored record, its unique constraint and its migrations."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.test import override_settings
from django.utils import timezone
from model_bakery import baker

from idempotency.models import IdempotencyKey


@pytest.mark.django_db
def test_migrations_are_complete():
    stdout = io.StringIO()
    call_command("makemigrations", "idempotency", "--check", "--dry-run", stdout=stdout)
    assert stdout.getvalue() == "No changes detected in app 'idempotency'\n"


@pytest.mark.django_db
def test_scope_and_key_are_unique_in_the_database():
    baker.make(IdempotencyKey, scope="user:1", key="abc")
    # save() does not validate the constraint: only the database can refuse the row.
    with pytest.raises(IntegrityError), transaction.atomic():
        baker.make(IdempotencyKey, scope="user:1", key="abc")
    assert IdempotencyKey.objects.filter(scope="user:1", key="abc").count() == 1


@pytest.mark.django_db
def test_same_key_in_two_scopes():
    baker.make(IdempotencyKey, scope="user:1", key="abc")
    baker.make(IdempotencyKey, scope="user:2", key="abc")
    assert IdempotencyKey.objects.filter(key="abc").count() == 2


@pytest.mark.django_db
def test_two_keys_in_one_scope():
    baker.make(IdempotencyKey, scope="user:1", key="abc")
    baker.make(IdempotencyKey, scope="user:1", key="abd")
    assert IdempotencyKey.objects.filter(scope="user:1").count() == 2


def test_str_is_the_key():
    record = baker.prepare(IdempotencyKey, scope="user:1", key="8e03978e-40d5")
    assert str(record) == "8e03978e-40d5"


def test_is_expired():
    now = timezone.now()
    record = baker.prepare(IdempotencyKey, expires_at=now)
    assert record.is_expired(now + timedelta(microseconds=1)) is True
    assert record.is_expired(now) is False
    assert record.is_expired(now - timedelta(seconds=1)) is False


@pytest.mark.django_db
def test_long_scope_and_key_are_stored_whole():
    scope, key = "s" * 255, "k" * 255
    baker.make(IdempotencyKey, scope=scope, key=key)
    assert IdempotencyKey.objects.get(scope=scope, key=key).key == key


@pytest.mark.django_db
def test_scopes_and_keys_compare_exactly():
    # MariaDB's default and PAD SPACE collations would make these equal.
    for scope, key in [("user:a", "k"), ("user:a ", "k"), ("user:A", "k"), ("user:a", "K")]:
        baker.make(IdempotencyKey, scope=scope, key=key)
    assert IdempotencyKey.objects.filter(scope="user:a", key="k").count() == 1


@pytest.mark.django_db(databases=["default", "other"])
@override_settings(
    IDEMPOTENCY={"DATABASE": "other"},
    DATABASE_ROUTERS=["tests.testapp.routers.EverythingToDefault"],
)
def test_records_stay_on_the_key_tables_database_whatever_the_routers_say():
    expires_at = timezone.now() + timedelta(hours=1)
    created = IdempotencyKey(scope="s", key="new", expires_at=expires_at, created_at=expires_at)
    created.save()
    record = IdempotencyKey.objects.create(
        scope="s", key="k", expires_at=expires_at, created_at=expires_at
    )
    assert IdempotencyKey.objects.using("other").count() == 2
    fetched = IdempotencyKey.objects.get(pk=record.pk)
    fetched.state = IdempotencyKey.State.COMPLETED
    fetched.save()
    assert IdempotencyKey.objects.using("other").get(pk=record.pk).state == "completed"
    fetched.delete()
    created.delete()
    assert IdempotencyKey.objects.using("other").count() == 0
    # Nothing ever reached the database the router names.
    assert IdempotencyKey.objects.using("default").count() == 0
