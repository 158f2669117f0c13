"""Purging expired records: the queryset methods and the management command."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from model_bakery import baker
from model_bakery.recipe import seq

from idempotency.models import IdempotencyKey

pytestmark = pytest.mark.django_db

COMMAND = "purge_idempotency_keys"


def make_keys(quantity: int, expires_in: timedelta, using: str = "default", **fields):
    """``quantity`` records expiring ``expires_in`` from now (negative: expired)."""
    fields.setdefault("scope", "user:1")
    records = baker.make(
        IdempotencyKey,
        key=seq(f"{uuid.uuid4()}-"),
        expires_at=timezone.now() + expires_in,
        _quantity=quantity,
        _using=using,
        **fields,
    )
    return {record.pk for record in records}


def expired(quantity: int, using: str = "default", **fields):
    return make_keys(quantity, -timedelta(minutes=1), using=using, **fields)


def unexpired(quantity: int, using: str = "default", **fields):
    return make_keys(quantity, timedelta(hours=1), using=using, **fields)


def remaining(using: str = "default") -> set:
    return set(IdempotencyKey.objects.using(using).values_list("pk", flat=True))


def purge(*args, **options) -> str:
    stdout = io.StringIO()
    stderr = io.StringIO()
    call_command(COMMAND, *args, stdout=stdout, stderr=stderr, **options)
    assert stderr.getvalue() == ""
    return stdout.getvalue()


# The queryset methods.


def test_expired_selects_records_past_their_expiry():
    old = expired(2)
    in_flight = expired(1, state=IdempotencyKey.State.IN_FLIGHT)
    unexpired(2)
    assert set(IdempotencyKey.objects.expired().values_list("pk", flat=True)) == old | in_flight


def test_expired_at_a_given_time():
    now = timezone.now()
    at_now = baker.make(IdempotencyKey, key="at-now", expires_at=now)
    before = baker.make(IdempotencyKey, key="before", expires_at=now - timedelta(microseconds=1))
    after = baker.make(IdempotencyKey, key="after", expires_at=now + timedelta(seconds=1))
    assert list(IdempotencyKey.objects.expired(now)) == [before]
    later = now + timedelta(seconds=2)
    assert set(IdempotencyKey.objects.expired(later)) == {at_now, before, after}
    assert list(IdempotencyKey.objects.expired(now - timedelta(days=1))) == []


def test_purge_deletes_only_expired_records():
    expired(5)
    keep = unexpired(3)
    assert IdempotencyKey.objects.purge() == 5
    assert remaining() == keep


def test_purge_deletes_in_flight_records_past_their_lock_timeout():
    expired(2, state=IdempotencyKey.State.IN_FLIGHT)
    expired(1, state=IdempotencyKey.State.COMPLETED)
    keep = unexpired(1, state=IdempotencyKey.State.IN_FLIGHT)
    keep |= unexpired(1, state=IdempotencyKey.State.COMPLETED)
    assert IdempotencyKey.objects.purge() == 3
    assert remaining() == keep


def test_purge_with_nothing_expired():
    keep = unexpired(2)
    assert IdempotencyKey.objects.purge() == 0
    assert list(IdempotencyKey.objects.purge_batches()) == []
    assert remaining() == keep


def test_purge_uses_the_given_time():
    now = timezone.now()
    long_ago = make_keys(2, -timedelta(hours=3))
    recently = make_keys(1, -timedelta(minutes=30))
    assert IdempotencyKey.objects.purge(now=now - timedelta(hours=1)) == 2
    assert remaining() == recently
    assert not long_ago & remaining()


@pytest.mark.parametrize(
    ("count", "batch_size", "batches"),
    [(5, 2, [2, 2, 1]), (4, 2, [2, 2]), (1, 2, [1]), (3, 1, [1, 1, 1]), (3, 1000, [3])],
)
def test_purge_batches_are_bounded(count, batch_size, batches):
    expired(count)
    keep = unexpired(2)
    assert list(IdempotencyKey.objects.purge_batches(batch_size=batch_size)) == batches
    assert remaining() == keep


def test_purge_in_batches_returns_the_total():
    expired(7)
    assert IdempotencyKey.objects.purge(batch_size=3) == 7
    assert remaining() == set()


def test_purge_is_limited_to_the_queryset():
    other_scope = expired(2, scope="user:2")
    expired(3, scope="user:1")
    assert IdempotencyKey.objects.filter(scope="user:1").purge(batch_size=2) == 3
    assert remaining() == other_scope


@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_size_must_be_positive(batch_size):
    keep = expired(2)
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer\.$"):
        list(IdempotencyKey.objects.purge_batches(batch_size=batch_size))
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer\.$"):
        IdempotencyKey.objects.purge(batch_size=batch_size)
    assert remaining() == keep


def test_record_renewed_between_batches_survives():
    expired(3)
    batches = IdempotencyKey.objects.purge_batches(batch_size=1)
    assert next(batches) == 1
    renewed, deleted_later = sorted(remaining())
    IdempotencyKey.objects.filter(pk=renewed).update(
        expires_at=timezone.now() + timedelta(hours=1)
    )
    assert list(batches) == [1]
    assert remaining() == {renewed}
    assert deleted_later not in remaining()


def test_record_renewed_between_select_and_delete_survives():
    """A request that takes over an expired record after the purge selected its
    id, but before the purge's DELETE ran, keeps its record."""
    pks = expired(2)
    renewed = min(pks)
    statements = []

    def renew_before_delete(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("DELETE") and not statements:
            statements.append(sql)
            IdempotencyKey.objects.filter(pk=renewed).update(
                expires_at=timezone.now() + timedelta(hours=1)
            )
        return execute(sql, params, many, context)

    with connection.execute_wrapper(renew_before_delete):
        batches = list(IdempotencyKey.objects.purge_batches(batch_size=2))
    assert len(statements) == 1, "the purge never ran a DELETE"
    assert batches == [1]
    assert remaining() == {renewed}


# The management command.


def test_command_deletes_expired_keys():
    expired(4)
    expired(1, state=IdempotencyKey.State.IN_FLIGHT)
    keep = unexpired(2)
    assert purge() == "Deleted 5 expired idempotency keys.\n"
    assert remaining() == keep


def test_command_singular():
    expired(1)
    assert purge() == "Deleted 1 expired idempotency key.\n"
    assert remaining() == set()


def test_command_with_nothing_to_delete():
    keep = unexpired(1)
    assert purge() == "Deleted 0 expired idempotency keys.\n"
    assert remaining() == keep


def test_command_verbosity_2_reports_each_batch():
    expired(5)
    assert purge("--batch-size", "2", "--verbosity", "2") == (
        "Deleted a batch of 2 keys.\n"
        "Deleted a batch of 2 keys.\n"
        "Deleted a batch of 1 key.\n"
        "Deleted 5 expired idempotency keys.\n"
    )
    assert remaining() == set()


def test_command_verbosity_0_prints_nothing():
    expired(3)
    keep = unexpired(1)
    assert purge(verbosity=0) == ""
    assert remaining() == keep


def test_command_dry_run_deletes_nothing():
    pks = expired(3)
    pks |= unexpired(2)
    assert purge("--dry-run") == "Would delete 3 expired idempotency keys.\n"
    assert remaining() == pks


def test_command_dry_run_singular():
    pks = expired(1)
    assert purge("--dry-run", "--verbosity", "2") == "Would delete 1 expired idempotency key.\n"
    assert remaining() == pks


def test_command_dry_run_verbosity_0_prints_nothing():
    pks = expired(2)
    assert purge("--dry-run", verbosity=0) == ""
    assert remaining() == pks


@pytest.mark.parametrize("batch_size", ["0", "-5"])
def test_command_batch_size_must_be_positive(batch_size):
    pks = expired(2)
    with pytest.raises(CommandError) as info:
        purge("--batch-size", batch_size)
    assert str(info.value) == "--batch-size must be a positive integer."
    assert remaining() == pks


@pytest.mark.django_db(databases=["default", "other"])
def test_command_database_option():
    on_default = expired(2)
    expired(3, using="other")
    on_other = unexpired(1, using="other")
    assert purge("--database", "other") == "Deleted 3 expired idempotency keys.\n"
    assert remaining("other") == on_other
    assert remaining() == on_default


@pytest.mark.django_db(databases=["default", "other"])
def test_command_defaults_to_the_configured_database():
    on_default = expired(2)
    expired(1, using="other")
    with override_settings(IDEMPOTENCY={"DATABASE": "other"}):
        assert purge() == "Deleted 1 expired idempotency key.\n"
    assert remaining("other") == set()
    assert remaining() == on_default


@pytest.mark.django_db(databases=["default", "other"])
def test_command_database_option_overrides_the_setting():
    expired(2)
    on_other = expired(1, using="other")
    with override_settings(IDEMPOTENCY={"DATABASE": "other"}):
        assert purge("--database", "default") == "Deleted 2 expired idempotency keys.\n"
    assert remaining() == set()
    assert remaining("other") == on_other
