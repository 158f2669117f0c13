import contextlib

from django.apps import AppConfig
from django.core import checks
from django.utils.translation import gettext_lazy as _


class IdempotencyConfig(AppConfig):
    name = "idempotency"
    verbose_name = _("Idempotency")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate, pre_delete

        from .backends.redis import prepare as prepare_redis
        from .checks import (
            check_database,
            check_openapi,
            check_redis,
            check_settings,
            check_sqlite_transactions,
            check_view_options,
        )
        from .conf import settings
        from .models import IdempotencyKey
        from .receivers import forget_database, forget_deleted

        # Copies in Redis must not outlive their records (receivers.py).
        pre_delete.connect(forget_deleted, sender=IdempotencyKey, dispatch_uid="idempotency")
        post_migrate.connect(forget_database, sender=self, dispatch_uid="idempotency")

        checks.register(check_settings)
        checks.register(check_view_options)
        checks.register(check_sqlite_transactions)
        checks.register(check_openapi)
        checks.register(check_redis, checks.Tags.caches)
        checks.register(check_database, checks.Tags.database)

        # What requests need, imported now, in one thread, rather than by a
        # worker's first requests all at once (see redis.prepare()).
        prepare_redis()
        with contextlib.suppress(Exception):  # the checks report bad paths
            settings.SCOPE  # noqa: B018
            settings.FINGERPRINT  # noqa: B018
