"""The stored record: one row per (scope, key), under a database unique constraint."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

from django.db import connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

# The module, not its names: the database package reads this module's model
# (when called, never when imported), so either may be imported first.
from .backends.database import dialects
from .conf import settings


class ExactCharField(models.CharField):  # type: ignore[type-arg]
    """A ``CharField`` compared byte for byte on every supported database:
    under the collation its database's dialect names (MariaDB's default ones would
    make ``abc`` and ``ABC`` one key, and one client's new request would be
    answered with another's replay). PostgreSQL and SQLite compare exactly
    already.
    """

    def db_parameters(self, connection: Any) -> dict[str, Any]:
        parameters = super().db_parameters(connection)
        try:
            collation = dialects.dialect_for(connection).KEY_COLLATION
        except dialects.UnsupportedDatabase:
            # The checks refuse such a database (before ``migrate`` creates
            # the table): its columns keep their defaults.
            return parameters
        if collation is not None:
            parameters["collation"] = collation
        return parameters


class IdempotencyKeyQuerySet(models.QuerySet["IdempotencyKey"]):
    def expired(self, now: datetime | None = None) -> IdempotencyKeyQuerySet:
        """Records past their expiry: completed ones past their TTL, and
        in-flight ones whose claim outlived ``LOCK_TIMEOUT``."""
        return cast(IdempotencyKeyQuerySet, self.filter(expires_at__lt=now or timezone.now()))

    def purge_batches(self, batch_size: int = 1000, now: datetime | None = None) -> Iterator[int]:
        """Delete expired records in short batches, yielding each batch's count.

        Each batch is one ``DELETE`` in its own short transaction, so the
        purge can run while traffic flows and its memory does not grow with
        the table. A batch skips the rows another transaction has locked (an
        expired key being taken over right now): waiting for them would hold
        the batch's other deletions uncommitted, and stall new claims on
        those keys, for as long as that request runs. The ``DELETE`` repeats
        the expiry test on the rows it deletes, so a record renewed after the
        batch was chosen survives.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be a positive integer.")
        cutoff = now or timezone.now()
        connection = connections[self.db]
        if dialects.dialect_for(connection).PURGE_IN_ORDER:
            yield from self._purge_in_order(batch_size, cutoff)
            return
        chosen = (
            self.expired(cutoff)
            .order_by()
            .select_for_update(skip_locked=connection.features.has_select_for_update_skip_locked)
            .values_list("id", flat=True)[:batch_size]
        )
        delete = _delete_batch_sql(connection)
        while True:
            with transaction.atomic(using=self.db):
                # The ORM writes the batch's SELECT, with this queryset's
                # filters; the DELETE around it is one round trip that sends
                # no ids back and forth.
                select, params = chosen.query.get_compiler(using=self.db).as_sql()
                with connection.cursor() as cursor:
                    cursor.execute(
                        delete.format(select=select),
                        [*params, connection.ops.adapt_datetimefield_value(cutoff)],
                    )
                    deleted = cursor.rowcount
            if deleted:
                yield deleted
            if deleted < batch_size:
                return

    def _purge_in_order(self, batch_size: int, cutoff: datetime) -> Iterator[int]:
        """``purge_batches`` on MariaDB: each batch picks up in the expiry
        index where the one before it ended.

        InnoDB leaves a deleted row's index entries in place, marked deleted,
        until its purge thread removes them, in the background and in its own
        time. A batch chosen from the beginning of the index would step over
        the entries of every batch deleted before it that the purge thread
        has not removed yet: each batch slower than the last, and one stalled
        for as long as the thread lags. A row passed over as locked is left
        for the next run."""
        connection = connections[self.db]
        delete = _delete_batch_sql(connection)
        expired = (
            self.expired(cutoff)
            .order_by("expires_at", "pk")
            .select_for_update(skip_locked=True)
            .values_list("pk", "expires_at")
        )
        batch = expired
        while True:
            with transaction.atomic(using=self.db):
                chosen = list(batch[:batch_size])
                deleted = 0
                if chosen:
                    # Locked by the SELECT: the DELETE waits for nobody, and
                    # repeats the expiry test on what it deletes.
                    with connection.cursor() as cursor:
                        cursor.execute(
                            delete.format(select=", ".join(["%s"] * len(chosen))),
                            [
                                *(pk for pk, _ in chosen),
                                connection.ops.adapt_datetimefield_value(cutoff),
                            ],
                        )
                        deleted = cursor.rowcount
            if deleted:
                yield deleted
            if len(chosen) < batch_size:
                return
            last_pk, last_expiry = chosen[-1]
            batch = expired.filter(
                Q(expires_at__gt=last_expiry) | Q(expires_at=last_expiry, pk__gt=last_pk),
                # The same bound, in the form the optimizer ranges the index on.
                expires_at__gte=last_expiry,
            )

    def purge(self, batch_size: int = 1000, now: datetime | None = None) -> int:
        """Delete every expired record in batches; return how many were deleted.

        For cron jobs and Celery tasks: ``IdempotencyKey.objects.purge()``.
        """
        return sum(self.purge_batches(batch_size=batch_size, now=now))

    def release_in_flight(self) -> tuple[list[IdempotencyKey], int]:
        """Delete the in-flight records among these; return the records
        deleted, and how many were skipped as busy.

        For an operator who knows a request died without its claim expiring
        yet: a retry with the key then runs the handler. Completed records
        are left alone, since deleting one would let a retry run the handler
        again. As in ``purge_batches``, rows that another transaction has
        locked (an expired record being taken over right now) are skipped,
        not waited for, and the ``DELETE`` repeats the in-flight test on the
        rows it deletes.
        """
        in_flight = self.filter(state=IdempotencyKey.State.IN_FLIGHT).order_by()
        connection = connections[self.db]
        with transaction.atomic(using=self.db):
            chosen = list(
                in_flight.select_for_update(
                    skip_locked=connection.features.has_select_for_update_skip_locked
                )
            )
            ids = [record.pk for record in chosen]
            busy = in_flight.exclude(pk__in=ids).count()
            # One DELETE that repeats the in-flight test (delete() could fall
            # back to deleting by primary key alone, since receivers listen to
            # deletions); in-flight records have no copy in Redis to drop.
            in_flight.filter(pk__in=ids)._raw_delete(self.db)
            # Those the DELETE's own test kept are not released.
            kept = set(self.filter(pk__in=ids).values_list("pk", flat=True))
        return [record for record in chosen if record.pk not in kept], busy


class IdempotencyKeyManager(models.Manager.from_queryset(IdempotencyKeyQuerySet)):  # type: ignore[misc]
    """Sends every query to the key table's database (``IDEMPOTENCY["DATABASE"]``),
    whatever the database routers say, unless ``using()`` names another.

    The key table must be read where it is written: a router that sends
    reads to a replica would have the admin, the purge and your own queries
    read a lagging copy, where a record just claimed or completed is still
    missing (and a purge there fails, the replica taking no writes). The
    requests themselves never ask the routers.
    """

    def get_queryset(self) -> IdempotencyKeyQuerySet:
        return cast(
            IdempotencyKeyQuerySet, super().get_queryset().using(self._db or settings.DATABASE)
        )


class IdempotencyKey(models.Model):
    """A client's idempotency key and the response its first request produced."""

    class State(models.TextChoices):
        IN_FLIGHT = "in_flight"
        COMPLETED = "completed"

    scope = ExactCharField(
        _("scope"),
        max_length=255,
        help_text=_("The principal the key belongs to, by default the user."),
    )
    key = ExactCharField(_("key"), max_length=255)
    fingerprint = models.CharField(
        _("fingerprint"),
        max_length=64,
        help_text=_("SHA-256 of the method, path, query string and body."),
    )
    state = models.CharField(_("state"), max_length=16, choices=State.choices)
    method = models.CharField(_("method"), max_length=16)
    path = models.TextField(_("path"))
    status = models.PositiveSmallIntegerField(_("response status"), null=True, blank=True)
    headers = models.JSONField(_("response headers"), null=True, blank=True)
    body = models.BinaryField(_("response body"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"))
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    expires_at = models.DateTimeField(
        _("expires at"),
        help_text=_(
            "When the record may be purged or reused: TTL after completion, "
            "or LOCK_TIMEOUT after the claim while in flight."
        ),
    )

    objects = IdempotencyKeyManager()

    class Meta:
        verbose_name = _("idempotency key")
        verbose_name_plural = _("idempotency keys")
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="idempotency_scope_key_uniq"),
        ]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_expires_at_idx")]
        permissions = [("release_idempotencykey", "Can release in-flight idempotency keys")]

    def __str__(self) -> str:
        return self.key

    # Saving and deleting a record ask the routers too (``db_for_write``
    # wins over where the record was read): they stay on the record's
    # database, or the key table's, as the manager's queries do.
    def save(self, *args: Any, using: str | None = None, **kwargs: Any) -> None:
        super().save(*args, using=using or self._state.db or settings.DATABASE, **kwargs)

    def delete(
        self, using: str | None = None, keep_parents: bool = False
    ) -> tuple[int, dict[str, int]]:
        return super().delete(
            using=using or self._state.db or settings.DATABASE, keep_parents=keep_parents
        )

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at < now


def _delete_batch_sql(connection: BaseDatabaseWrapper) -> str:
    """``DELETE`` the rows that ``{select}`` chooses, if still expired: in
    the dialect's words, which differ by what each database's planner does."""
    quote = connection.ops.quote_name
    meta = IdempotencyKey._meta
    return dialects.dialect_for(connection).delete_batch_sql(
        table=quote(meta.db_table),
        pk=quote(cast(str, cast(models.Field, meta.pk).column)),  # type: ignore[type-arg]
        expires_at=quote(cast(str, cast(models.Field, meta.get_field("expires_at")).column)),  # type: ignore[type-arg]
    )
