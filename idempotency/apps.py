from django.apps import AppConfig
from django.core import checks
from django.utils.translation import gettext_lazy as _


class IdempotencyConfig(AppConfig):
    name = "idempotency"
    verbose_name = _("Idempotency")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .checks import check_database, check_redis, check_settings

        checks.register(check_settings)
        checks.register(check_redis, checks.Tags.caches)
        checks.register(check_database, checks.Tags.database)
