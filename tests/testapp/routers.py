"""The router of a project that scales its reads: every read from the
replica, every write to the primary (tests/test_replica.py)."""

from __future__ import annotations

from typing import Any


class ReadsFromReplica:
    def db_for_read(self, model: type, **hints: Any) -> str:
        return "replica"

    def db_for_write(self, model: type, **hints: Any) -> str:
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == "default"


class EverythingToDefault:
    """A router that sends every read and write to ``default``, whatever
    the model."""

    def db_for_read(self, model: type, **hints: Any) -> str:
        return "default"

    def db_for_write(self, model: type, **hints: Any) -> str:
        return "default"
