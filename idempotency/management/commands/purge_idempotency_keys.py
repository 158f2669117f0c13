"""Delete expired idempotency records in short batches (run it from cron)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from idempotency.conf import settings
from idempotency.models import IdempotencyKey


class Command(BaseCommand):
    help = (
        "Deletes expired idempotency keys (completed ones past their TTL and in-flight "
        "ones past LOCK_TIMEOUT) in batches, each in its own short transaction."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help="Rows deleted per statement and transaction (default: 1000).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count the expired keys without deleting them.",
        )
        parser.add_argument(
            "--database",
            help="Database alias of the key table (default: IDEMPOTENCY['DATABASE']).",
        )

    def handle(
        self, *args: Any, batch_size: int, dry_run: bool, database: str | None, **options: Any
    ) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be a positive integer.")
        verbosity = options["verbosity"]
        keys = IdempotencyKey.objects.using(database or settings.DATABASE)
        now = timezone.now()
        if dry_run:
            count = keys.expired(now).count()
            if verbosity >= 1:
                self.stdout.write(f"Would delete {count} expired idempotency {_keys(count)}.")
            return
        total = 0
        for deleted in keys.purge_batches(batch_size=batch_size, now=now):
            total += deleted
            if verbosity >= 2:
                self.stdout.write(f"Deleted a batch of {deleted} {_keys(deleted)}.")
        if verbosity >= 1:
            self.stdout.write(f"Deleted {total} expired idempotency {_keys(total)}.")


def _keys(count: int) -> str:
    return "key" if count == 1 else "keys"
