"""Views for tests/test_hostile_async.py: async handlers and plain Django
views, attacked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from idempotency.decorators import idempotent

from .models import Execution
from .views import storable_key

# Side effects outside any database (an HTTP call to a provider, an email),
# by key: what a second run of a handler would repeat.
EFFECTS: list[str] = []
# Backend pids of the claim's session, by key, for pg_terminate_backend.
PIDS: dict[str, int] = {}
# Background tasks started by handlers, and what became of them.
TASKS: list[asyncio.Task] = []
BG_ERRORS: list[str] = []


def one_scope(request) -> str:
    return "attack"


def _sleep(request) -> float:
    return float(request.GET.get("sleep", "0"))


# --- client disconnect (Django 5 cancels an async view on http.disconnect)


@csrf_exempt
@idempotent(scope=one_scope, backend="redis")
async def async_redis_slow(request):
    """A backend="redis" handler: its effects are outside the database."""
    EFFECTS.append(storable_key(request))
    await asyncio.sleep(_sleep(request))
    return JsonResponse({"charged": True}, status=201)


@csrf_exempt
@idempotent(scope=one_scope, backend="redis")
def sync_redis_slow(request):
    EFFECTS.append(storable_key(request))
    time.sleep(_sleep(request))
    return JsonResponse({"charged": True}, status=201)


@csrf_exempt
@idempotent(scope=one_scope)
async def async_db_slow(request):
    await Execution.objects.acreate(label="attack-async", key=storable_key(request))
    EFFECTS.append(storable_key(request))
    await asyncio.sleep(_sleep(request))
    if request.GET.get("raise"):
        raise RuntimeError("the provider refused")
    return JsonResponse({"charged": True}, status=201)


@csrf_exempt
@idempotent(scope=one_scope)
def sync_db_slow(request):
    Execution.objects.create(label="attack-sync", key=storable_key(request))
    EFFECTS.append(storable_key(request))
    time.sleep(_sleep(request))
    return JsonResponse({"charged": True}, status=201)


# --- background tasks and gather


async def _background_body(request):
    key = storable_key(request)

    async def later() -> None:
        await asyncio.sleep(0.05)
        try:
            await Execution.objects.acreate(label="attack-background", key=key)
        except Exception as exc:
            BG_ERRORS.append(type(exc).__name__)
            raise
        finally:
            with contextlib.suppress(Exception):
                await sync_to_async(connection.close)()

    TASKS.append(asyncio.create_task(later()))
    await Execution.objects.acreate(label="attack-main", key=key)
    return JsonResponse({"ok": True}, status=201)


@csrf_exempt
@idempotent(scope=one_scope)
async def async_background(request):
    return await _background_body(request)


@csrf_exempt
async def async_background_unprotected(request):
    return await _background_body(request)


@csrf_exempt
@idempotent(scope=one_scope)
async def async_gather(request):
    key = storable_key(request)
    await asyncio.gather(
        *(Execution.objects.acreate(label=f"attack-gather-{n}", key=key) for n in range(5))
    )
    flags = await asyncio.gather(
        *(sync_to_async(lambda: connection.in_atomic_block)() for _ in range(3))
    )
    if request.GET.get("raise"):
        raise RuntimeError("after gather")
    return JsonResponse({"in_transaction": flags}, status=201)


@csrf_exempt
@idempotent(scope=one_scope)
async def async_unsafe_thread(request):
    """Database work in a thread of its own, outside the claim's transaction
    (documented)."""
    key = storable_key(request)
    await sync_to_async(
        lambda: Execution.objects.create(label="attack-unsafe", key=key), thread_sensitive=False
    )()
    await sync_to_async(connection.close, thread_sensitive=False)()
    raise RuntimeError("after an unsafe write")


# --- async streaming


@csrf_exempt
@idempotent(scope=one_scope)
async def async_stream(request):
    key = storable_key(request)
    fail = request.GET.get("raise")

    async def chunks():
        for number in range(3):
            await Execution.objects.acreate(label=f"attack-stream-{number}", key=key)
            inside = await sync_to_async(lambda: connection.in_atomic_block)()
            yield f"chunk-{number}-{inside};".encode()
            if fail and number == 1:
                raise RuntimeError("stream failed")

    return StreamingHttpResponse(chunks(), status=201, content_type="text/plain")


# --- database outage


@csrf_exempt
@idempotent(scope=one_scope)
async def async_killed(request):
    key = storable_key(request)
    await Execution.objects.acreate(label="attack-killed", key=key)
    PIDS[key] = await sync_to_async(lambda: connection.connection.info.backend_pid)()
    await asyncio.sleep(_sleep(request))
    if request.GET.get("again"):
        await Execution.objects.acreate(label="attack-killed-2", key=key)
    return JsonResponse({"ok": True}, status=201)


# --- plain Django views


@idempotent(scope=one_scope)
def csrf_checked(request):
    """No csrf_exempt: CsrfViewMiddleware reads request.POST first."""
    Execution.objects.create(label="attack-csrf", key=storable_key(request))
    return JsonResponse({"fields": dict(request.POST)}, status=201)


@csrf_exempt
@idempotent(scope=one_scope)
def plain_multipart(request):
    Execution.objects.create(label="attack-multipart", key=storable_key(request))
    return JsonResponse({"fields": dict(request.POST)}, status=201)


def _partial_target(request, label):
    Execution.objects.create(label=label, key=storable_key(request))
    return HttpResponse(label, status=201)


@csrf_exempt
@idempotent(scope=one_scope)
@idempotent(scope=one_scope)
def twice(request):
    Execution.objects.create(label="attack-twice", key=storable_key(request))
    return JsonResponse({"body": json.loads(request.body or b"null")}, status=201)
