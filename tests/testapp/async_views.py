"""``async def`` handlers (adrf, and plain Django) and plain Django views,
each recording its runs through the ORM, as the async tests count them."""

from __future__ import annotations

import asyncio
import json
import os

from adrf.decorators import api_view as async_api_view
from adrf.views import APIView as AsyncAPIView
from adrf.viewsets import ViewSet as AsyncViewSet
from asgiref.sync import sync_to_async
from django import forms
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from django.views.generic.edit import FormView
from rest_framework import status
from rest_framework.decorators import api_view
from rest_framework.response import Response

from idempotency.context import idempotency_of
from idempotency.decorators import idempotent
from idempotency.mixins import IdempotentMixin

from .models import Execution
from .views import storable_key

# Events a test sets to let a held async handler finish (``?hold=<name>``),
# on the server's event loop.
HOLDS: dict[str, asyncio.Event] = {}


async def arecord(request: HttpRequest, label: str) -> dict[str, object]:
    """Record a run through the async ORM, then behave as the query string
    asks: ``sleep`` seconds on the event loop, ``raise`` after the write."""
    params = request.GET
    execution = await Execution.objects.acreate(label=label, key=storable_key(request))
    # Database work awaited by the handler comes back to the thread that
    # holds the claim's transaction: the tests read this to prove it.
    in_transaction = await sync_to_async(lambda: connection.in_atomic_block)()
    if "sleep" in params:
        await asyncio.sleep(float(params["sleep"]))
    hold = HOLDS.get(params.get("hold", ""))
    if hold is not None:
        await hold.wait()
    if params.get("raise"):
        raise RuntimeError("async handler failed")
    return {
        "execution": execution.pk,
        "label": label,
        "in_transaction": in_transaction,
        "pid": os.getpid(),
    }


def _body(request: HttpRequest) -> object:
    return json.loads(request.body or b"null")


async def acharge(request, label: str) -> Response:
    """A DRF answer naming the run."""
    data = await arecord(request, label)
    return Response({**data, "data": request.data}, status=status.HTTP_201_CREATED)


@async_api_view(["POST"])
@idempotent
async def adrf_function(request):
    return await acharge(request, "adrf-function")


class AdrfCharge(IdempotentMixin, AsyncAPIView):
    async def get(self, request):
        return Response({"charges": await Execution.objects.filter(label="adrf-mixin").acount()})

    async def post(self, request):
        return await acharge(request, "adrf-mixin")


class AdrfDecorated(AsyncAPIView):
    @idempotent(backend="redis")
    async def post(self, request):
        return await acharge(request, "adrf-redis")


class AdrfCharges(IdempotentMixin, AsyncViewSet):
    # adrf's router routes POST to an async ViewSet's ``acreate``.
    async def acreate(self, request):
        return await acharge(request, "adrf-viewset")


# Plain Django: authenticated by Django's session (AuthenticationMiddleware).


@csrf_exempt
@login_required
@idempotent
def django_function(request):
    execution = Execution.objects.create(label="django-function", key=storable_key(request))
    if request.GET.get("raise"):
        raise RuntimeError("django handler failed")
    return JsonResponse({"execution": execution.pk, "data": _body(request)}, status=201)


@csrf_exempt
@login_required
@idempotent
async def django_async_function(request):
    data = await arecord(request, "django-async-function")
    return JsonResponse({**data, "data": _body(request)}, status=201)


@method_decorator([csrf_exempt, login_required], name="dispatch")
class DjangoCharge(View):
    @idempotent
    def post(self, request):
        execution = Execution.objects.create(label="django-view", key=storable_key(request))
        return HttpResponse(f"charged {execution.pk}", status=201, content_type="text/plain")


@method_decorator(csrf_exempt, name="dispatch")
class DjangoAsyncCharge(View):
    # An async view's sync dispatch() cannot take login_required, which
    # would read the session in the event loop: its handler takes it.
    @method_decorator(login_required)
    @idempotent
    async def post(self, request):
        data = await arecord(request, "django-async-view")
        return JsonResponse(data, status=201)


@csrf_exempt
@idempotent(required=False)
def django_stream(request):
    Execution.objects.create(label="django-stream", key=storable_key(request))
    return StreamingHttpResponse((b"chunk-%d;" % number for number in range(5)), status=201)


class NoteForm(forms.Form):
    note = forms.CharField(max_length=50)


@method_decorator([csrf_exempt, login_required], name="dispatch")
@method_decorator(idempotent, name="post")
class DjangoFormView(FormView):
    """A generic view whose answers are TemplateResponses, rendered late."""

    form_class = NoteForm
    template_name = "testapp/note.html"
    success_url = "/done/"

    def form_valid(self, form):
        Execution.objects.create(label="django-form", key=storable_key(self.request))
        return super().form_valid(form)


@csrf_exempt
@idempotent(scope=lambda request: None)
def django_no_scope(request):
    return HttpResponse(status=201)


@csrf_exempt
@idempotent(required=False)
def django_upload(request):
    """Whatever the method, the body is what the fingerprint reads."""
    Execution.objects.create(label="django-upload", key=storable_key(request))
    return HttpResponse(status=201)


@api_view(["POST"])
@idempotent
def echo_key(request):
    """What a DRF handler sees of its key."""
    seen = idempotency_of(request)
    return Response({"key": seen.key, "scope": seen.scope}, status=201)


@csrf_exempt
@idempotent(required=False)
async def django_echo_key(request):
    """What a plain Django async handler sees of its key (None without one)."""
    seen = idempotency_of(request)
    return JsonResponse({"key": None if seen is None else seen.key}, status=201)


async def ping(request):
    """An async view with no database: it answers while the loop is free."""
    return HttpResponse("pong")
