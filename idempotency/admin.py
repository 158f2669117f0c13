"""A read-only view of the stored records, for operators tracing a retry,
and one action: releasing in-flight keys whose request died."""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_permission_codename
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from .models import IdempotencyKey, IdempotencyKeyQuerySet

logger = logging.getLogger("idempotency")


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
    # The stored headers and body are shown readably, never as the raw
    # field (the body would be a Python bytes repr).
    fields = readonly_fields = (
        "scope",
        "key",
        "fingerprint",
        "state",
        "method",
        "path",
        "status",
        "response_headers",
        "response_body",
        "created_at",
        "completed_at",
        "expires_at",
    )
    actions = ["release_in_flight"]
    # A stored body longer than this is shown cut, as text.
    body_display_limit = 64 * 1024
    release_confirmation_template = (
        "admin/idempotency/idempotencykey/release_in_flight_confirmation.html"
    )

    # Records are written only by the protocol; editing one by hand could
    # make a retry replay something the handler never returned, and deleting
    # a completed one would let a retry run the handler again.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[IdempotencyKey]:
        # A page of the list would otherwise load every stored response (up
        # to MAX_RESPONSE_BYTES each); the change page loads its one.
        return super().get_queryset(request).defer("headers", "body")

    def has_release_permission(self, request: HttpRequest) -> bool:
        opts = self.opts
        codename = get_permission_codename("release", opts)
        return request.user.has_perm(f"{opts.app_label}.{codename}")

    @admin.display(description=_("response headers"))
    def response_headers(self, obj: IdempotencyKey) -> SafeString:
        if not obj.headers:
            return self.get_empty_value_display()
        lines = "\n".join(f"{name}: {value}" for name, value in obj.headers)
        return format_html("<pre>{}</pre>", lines)

    @admin.display(description=_("response body"))
    def response_body(self, obj: IdempotencyKey) -> SafeString:
        if obj.body is None:
            return self.get_empty_value_display()
        return _display_body(bytes(obj.body), self.body_display_limit)

    @admin.action(permissions=["release"], description=_("Release selected in-flight keys"))
    def release_in_flight(
        self, request: HttpRequest, queryset: QuerySet[IdempotencyKey]
    ) -> TemplateResponse | None:
        in_flight = queryset.filter(state=IdempotencyKey.State.IN_FLIGHT)
        completed = queryset.filter(state=IdempotencyKey.State.COMPLETED)
        if request.POST.get("post") or not in_flight.exists():
            skipped = completed.count()
            released, busy = cast(IdempotencyKeyQuerySet, queryset).release_in_flight()
            self.report_release(request, released, skipped, busy)
            return None
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": _("Release in-flight keys"),
            "subtitle": None,
            "opts": self.opts,
            "media": self.media,
            "selected_pks": queryset.values_list("pk", flat=True),
            "in_flight": in_flight,
            "completed_count": completed.count(),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, self.release_confirmation_template, context)

    def report_release(
        self, request: HttpRequest, released: list[IdempotencyKey], skipped: int, busy: int
    ) -> None:
        # Deletions: the records are gone, as if deleted, and Django's history
        # shows them so (a change entry would link to a missing record).
        # log_deletions, since log_deletion is deprecated and gone in Django 6;
        # it takes any iterable of records, though the stubs say QuerySet.
        if released:
            self.log_deletions(request, cast("QuerySet[IdempotencyKey]", released))
            logger.warning(
                "The admin user %r released %d in-flight idempotency key(s): a retry with "
                "one of them runs its handler again.",
                request.user.get_username(),
                len(released),
            )
            self.message_user(
                request,
                ngettext(
                    "Released %(count)d in-flight idempotency key.",
                    "Released %(count)d in-flight idempotency keys.",
                    len(released),
                )
                % {"count": len(released)},
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request, gettext("No in-flight idempotency key was released."), messages.WARNING
            )
        if skipped:
            self.message_user(
                request,
                ngettext(
                    "Skipped %(count)d completed key: deleting a completed record would let "
                    "a retry run the handler again.",
                    "Skipped %(count)d completed keys: deleting a completed record would let "
                    "a retry run the handler again.",
                    skipped,
                )
                % {"count": skipped},
                messages.WARNING,
            )
        if busy:
            self.message_user(
                request,
                ngettext(
                    "Skipped %(count)d in-flight key that a request is taking over right "
                    "now. Look at it again in a moment.",
                    "Skipped %(count)d in-flight keys that requests are taking over right "
                    "now. Look at them again in a moment.",
                    busy,
                )
                % {"count": busy},
                messages.WARNING,
            )


def _display_body(body: bytes, limit: int) -> SafeString:
    """The stored body as an operator can read it, escaped: it is untrusted."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return format_html(
            "{}",
            ngettext("Binary, %(size)d byte", "Binary, %(size)d bytes", len(body))
            % {"size": len(body)},
        )
    if not text:
        return format_html("{}", gettext("Empty"))
    if len(body) > limit:
        # Whole characters only; the body as a whole is valid UTF-8.
        shown = body[:limit].decode("utf-8", "ignore")
        return format_html(
            "<pre>{}</pre><p>{}</p>",
            shown,
            gettext("Cut: the first %(limit)d bytes of %(size)d are shown.")
            % {"limit": limit, "size": len(body)},
        )
    return format_html("<pre>{}</pre>", _pretty_json(text) or text)


def _pretty_json(text: str) -> str | None:
    """``text`` indented, if it is a JSON object or array."""
    try:
        value = json.loads(text)
        if not isinstance(value, (dict, list)):
            return None
        pretty = json.dumps(value, indent=2, ensure_ascii=False)
        # "\ud800" is valid JSON, but a lone surrogate cannot be sent as UTF-8.
        pretty.encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None
    return pretty
