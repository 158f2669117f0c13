import os
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import F
from django.http import HttpResponseBadRequest
from django.shortcuts import render
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import api_view
from rest_framework.response import Response

from idempotency.decorators import idempotent
from idempotency.mixins import IdempotentMixin

from .models import Order, Wallet
from .serializers import (
    ChargedSerializer,
    ChargeSerializer,
    DetailSerializer,
    OrderSerializer,
    WalletSerializer,
)

# What the schema says of answers DRF gives; the key header and the problem
# responses of protected operations come from idempotency.openapi.AutoSchema.
INVALID = OpenApiResponse(
    OpenApiTypes.OBJECT, description="The fields that are not valid, each with what is wrong."
)
NOT_FOUND = OpenApiResponse(DetailSerializer, description="No such order of yours.")


@extend_schema(responses=WalletSerializer)
@api_view(["GET"])
def wallet(request):
    account = Wallet.objects.get_or_create(user=request.user)[0]
    charges = ChargeSerializer(account.charges.order_by("-id")[:10], many=True).data
    return Response({"balance": account.balance, "charges": charges})


CHARGE_SCHEMA = extend_schema(
    request=ChargeSerializer,
    responses={
        201: ChargedSerializer,
        400: INVALID,
        402: OpenApiResponse(DetailSerializer, description="Not enough points."),
    },
)


@CHARGE_SCHEMA
@api_view(["POST"])
@idempotent
def charge(request):
    """Deduct points once per Idempotency-Key, however often the client retries."""
    return _charge(request)


@CHARGE_SCHEMA
@api_view(["POST"])
@idempotent(wait=5)
def charge_waiting(request):
    """The same, where a duplicate of a charge in flight waits for its answer
    (up to 5 seconds) instead of getting a 409."""
    return _charge(request)


def _charge(request):
    serializer = ChargeSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    with transaction.atomic():
        return charge_in_transaction(request, serializer)


def charge_in_transaction(request, serializer):
    """The charge's database work, in the caller's transaction (the
    benchmarks run it in one with statements of their own, as a floor)."""
    amount = serializer.validated_data["amount"]
    account = Wallet.objects.select_for_update().get_or_create(user=request.user)[0]
    if account.balance < amount:
        # A deterministic outcome of this request: stored and replayed.
        return Response(
            {"detail": f"Not enough points: the balance is {account.balance}."},
            status=status.HTTP_402_PAYMENT_REQUIRED,
        )
    Wallet.objects.filter(pk=account.pk).update(balance=F("balance") - amount)
    created = serializer.save(wallet=account)
    account.refresh_from_db(fields=["balance"])
    # Lets you watch a duplicate arrive while this charge is in flight
    # (docs/concurrency.rst, "Watch a 409"); zero unless EXAMPLE_CHARGE_DELAY is set.
    delay = getattr(settings, "EXAMPLE_CHARGE_DELAY", 0)
    if delay:
        time.sleep(delay)
    _hold_if_asked(created.description)
    return Response(
        {**ChargeSerializer(created).data, "balance": account.balance},
        status=status.HTTP_201_CREATED,
        headers={"Location": f"/api/charges/{created.pk}/"},
    )


@login_required
def home(request):
    """The page: the balance, the last charges, and a button that charges
    100 points once however it is clicked (the template's script)."""
    account = Wallet.objects.get_or_create(user=request.user)[0]
    charges = account.charges.order_by("-id")[:10]
    return render(
        request, "wallet/home.html", {"balance": account.balance, "charges": charges, "api": ""}
    )


def remote(request):
    """The same page, calling the API of another origin (``?api=``) with
    HTTP Basic, as a page of another site would: the README's CORS settings
    are what let it."""
    api = request.GET.get("api", "")
    if api not in settings.EXAMPLE_API_ORIGINS:
        # Only origins the project names: the page sends the credentials
        # typed into it to this origin, and shows what it answers.
        allowed = ", ".join(settings.EXAMPLE_API_ORIGINS)
        return HttpResponseBadRequest(
            f"?api= must be one of: {allowed}", content_type="text/plain"
        )
    return render(
        request, "wallet/home.html", {"balance": "…", "charges": [], "api": api, "remote": True}
    )


def _hold_if_asked(description: str) -> None:
    """For the load harness (benchmarks/stress.py): a charge described "hold …"
    waits inside its transaction while the file EXAMPLE_CHARGE_HOLD_FILE
    exists (a minute at most), after writing its worker's pid next to it, so
    that the harness can kill the worker, or the database, mid-handler."""
    hold = getattr(settings, "EXAMPLE_CHARGE_HOLD_FILE", "")
    if not hold or not description.startswith("hold "):
        return
    Path(f"{hold}.pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while os.path.exists(hold) and time.monotonic() < deadline:
        time.sleep(0.01)


@extend_schema_view(
    create=extend_schema(responses={201: OrderSerializer, 400: INVALID}),
    retrieve=extend_schema(responses={200: OrderSerializer, 404: NOT_FOUND}),
    update=extend_schema(responses={200: OrderSerializer, 400: INVALID, 404: NOT_FOUND}),
    partial_update=extend_schema(responses={200: OrderSerializer, 400: INVALID, 404: NOT_FOUND}),
    destroy=extend_schema(responses={204: None, 404: NOT_FOUND}),
)
class OrderViewSet(IdempotentMixin, viewsets.ModelViewSet):
    """Orders: creating, changing and cancelling one all take an Idempotency-Key."""

    serializer_class = OrderSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            # drf-spectacular reads the model from here, with no user.
            return Order.objects.none()
        return Order.objects.filter(user=self.request.user).order_by("-id")

    def perform_create(self, serializer):
        serializer.save(user=self.request.user)
