"""Signal receivers that keep the accelerator's copies in Redis from
outliving their records in the database (``apps.ready`` connects them)."""

from __future__ import annotations

from typing import Any

from .accelerator import CopyNotForgotten, for_database


def forget_deleted(sender: type, instance: Any, using: str, **kwargs: Any) -> None:
    """``pre_delete`` of a record (a shell, your own code; the purge deletes
    only expired records, whose copies have expired too, and the admin only
    in-flight ones, which have none): a key freed by hand must not go on
    being replayed from Redis.

    Before the deletion, and whatever the accelerator's rest after an error:
    a tombstone, unlike a dropped copy, also keeps a request that reads the
    record until the deletion commits from copying it back; and if Redis
    cannot take it, the deletion is refused (``CopyNotForgotten``) rather
    than leave a copy behind. If the deletion then rolls back, the record is
    only replayed by the database until it expires."""
    try:
        accelerator = for_database(using, even_resting=True)
    except Exception as exc:  # a cache that cannot be used at all
        raise CopyNotForgotten(f"The accelerator's cache cannot be used: {exc}") from exc
    if accelerator is not None:
        accelerator.forget(instance.scope, instance.key, instance.pk, instance.expires_at)


def forget_database(sender: Any, using: str, **kwargs: Any) -> None:
    """``post_migrate``: after ``migrate``, ``flush`` or a test database's
    creation or flush, the database may hold other records than Redis has
    copies of (a restored backup, a recreated test database under the same
    name). Its copies go."""
    accelerator = for_database(using)
    if accelerator is not None:
        accelerator.forget_all()
