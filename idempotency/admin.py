"""A read-only view of the stored records, for operators tracing a retry."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .models import IdempotencyKey


class ExpiredFilter(admin.SimpleListFilter):
    title = _("expiry")
    parameter_name = "expired"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("expired")), ("no", _("not expired"))]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[IdempotencyKey]
    ) -> QuerySet[IdempotencyKey]:
        if self.value() == "yes":
            return queryset.filter(expires_at__lt=timezone.now())
        if self.value() == "no":
            return queryset.filter(expires_at__gte=timezone.now())
        return queryset


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "key",
        "scope",
        "method",
        "path",
        "state",
        "status",
        "created_at",
        "expires_at",
    ]
    list_filter = ["state", ExpiredFilter, "expires_at"]
    search_fields = ["key"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    readonly_fields = [field.name for field in IdempotencyKey._meta.fields]

    # Records are written only by the protocol; editing one by hand could
    # make a retry replay something the handler never returned.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
