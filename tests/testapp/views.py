"""Views of every kind the package must protect, each recording its runs."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, connections, transaction
from django.http import FileResponse, HttpResponse, QueryDict, StreamingHttpResponse
from django.utils import timezone
from rest_framework import generics, serializers, status, viewsets
from rest_framework.authentication import BaseAuthentication
from rest_framework.decorators import (
    action,
    api_view,
    authentication_classes,
    parser_classes,
    permission_classes,
    throttle_classes,
)
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import BaseParser, FileUploadParser, MultiPartParser
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from idempotency.decorators import idempotent
from idempotency.keys import default_scope
from idempotency.mixins import IdempotentMixin
from idempotency.models import IdempotencyKey

from .models import Customer, Execution, Item, ServiceAccount, StaffUser, User


class Gate:
    """Lets a test hold a handler inside its transaction and release it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.backend_id: int | None = None  # the held handler's database session
        # Whether the held handler raises once released (the next one through does not).
        self.fail_once = False


GATES: dict[str, Gate] = {}
# Handlers that must all be inside their transactions at the same moment.
BARRIERS: dict[str, threading.Barrier] = {}


def backend_id(using: str = "default") -> int | None:
    connection = connections[using]
    if connection.vendor == "sqlite":
        return None  # in-process: there is no server session to kill
    query = (
        "SELECT pg_backend_pid()"
        if connection.vendor == "postgresql"
        else "SELECT CONNECTION_ID()"
    )
    with connection.cursor() as cursor:
        cursor.execute(query)
        return cursor.fetchone()[0]


def storable_key(request) -> str:
    """The raw header, as the test counts runs by it, or its hash where no
    database column would take it: an unprotected (safe) method reaches the
    handler with any header, NUL bytes, lone surrogates and all."""
    key = request.headers.get("Idempotency-Key", "")
    if len(key) <= 255 and key.isprintable():
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def record(request, label: str, using: str = "default") -> Execution:
    execution = Execution.objects.using(using).create(label=label, key=storable_key(request))
    if "sleep" in request.query_params:  # across processes, where gates cannot reach
        time.sleep(float(request.query_params["sleep"]))
    barrier = BARRIERS.get(request.query_params.get("barrier", ""))
    if barrier is not None:
        barrier.wait(timeout=10)
    gate = GATES.get(request.query_params.get("gate", ""))
    if gate is not None:
        gate.backend_id = backend_id(using)
        gate.entered.set()
        gate.release.wait(timeout=30)
        if gate.fail_once:
            gate.fail_once = False
            raise RuntimeError("the held handler failed")
    return execution


def behave(request, label: str) -> HttpResponse:
    """Record a run, then answer as the query string asks."""
    return respond(request, label, record(request, label).pk)


def respond(request, label: str, run: int) -> HttpResponse:
    """Answer as the query string asks, naming the handler's run."""
    params = request.query_params
    if params.get("raise") == "validation":
        raise ValidationError({"amount": ["This field is wrong."]})
    if params.get("raise") == "error":
        raise RuntimeError("handler failed")
    if "stream" in params:
        size = int(params["stream"])

        def chunks():
            for start in range(0, size, 1000):
                if params.get("stream_writes"):
                    Execution.objects.create(label="while-streaming")
                yield b"x" * min(1000, size - start)

        async def async_chunks():
            # Server-sent events and streamed exports come this way.
            for start in range(0, size, 1000):
                yield b"x" * min(1000, size - start)

        content = async_chunks() if params.get("async") else chunks()
        response: HttpResponse = StreamingHttpResponse(content, content_type="text/plain")
        response.status_code = int(params.get("status", 200))
        return response
    if "file" in params:
        # A download: its name, age and caching describe the representation.
        response = FileResponse(
            io.BytesIO(b"id,amount\n1,100\n"), as_attachment=True, filename="report.csv"
        )
        response["Last-Modified"] = "Tue, 01 Dec 2026 10:00:00 GMT"
        response["Cache-Control"] = "private, max-age=60"
        response["Content-Location"] = "/reports/1.csv"
        response.status_code = 201
        return response
    if "gzip" in params:
        # A body the handler encoded itself: stored encoded.
        return HttpResponse(
            gzip.compress(b'{"ok": true}', mtime=0),
            content_type="application/json",
            headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
        )
    if "size" in params:
        return HttpResponse(b"y" * int(params["size"]), content_type="application/octet-stream")
    code = int(params.get("status", status.HTTP_201_CREATED))
    data = None if code == 204 else {"execution": run, "label": label, "data": request.data}
    response = Response(
        data,
        status=code,
        headers={"Location": f"/executions/{run}", "ETag": '"v1"', "X-Trace": "t-1"},
    )
    response.set_cookie("sessionish", "secret-of-first-client")
    return response


class ChargeView(APIView):
    @idempotent
    def post(self, request):
        return behave(request, "apiview")

    @idempotent
    def put(self, request):
        return behave(request, "apiview-put")

    def get(self, request):
        return Response({"executions": Execution.objects.count()})


@api_view(["POST", "PUT", "PATCH", "DELETE", "GET", "HEAD"])
@idempotent
def charge_function(request):
    return behave(request, "function")


class WaitingView(IdempotentMixin, APIView):
    """A duplicate waits for the request in flight (the view's own option)."""

    idempotency_wait = 10

    def post(self, request):
        return behave(request, "waiting")


@api_view(["POST"])
@idempotent(required=False)
def optional_key(request):
    return behave(request, "optional")


@api_view(["POST"])
@idempotent(ttl=timedelta(seconds=30))
def short_ttl(request):
    return behave(request, "short-ttl")


def scope_by_tenant(request) -> str:
    return "tenant:" + request.headers.get("X-Tenant", "none")


def body_ignored(request) -> str:
    return request.method + request.path


@api_view(["POST"])
@idempotent(scope=scope_by_tenant, fingerprint="tests.testapp.views.body_ignored")
def custom_scope(request):
    return behave(request, "custom-scope")


@api_view(["POST"])
@permission_classes([AllowAny])
@idempotent
def anonymous(request):
    return behave(request, "anonymous")


class TwoPerMinute(UserRateThrottle):
    rate = "2/min"


@api_view(["POST"])
@throttle_classes([TwoPerMinute])
@idempotent
def throttled(request):
    return behave(request, "throttled")


# A session whose transactions take no writes, as on a replica or a primary
# being failed over.
READ_ONLY_SESSION = {
    "postgresql": "SET SESSION default_transaction_read_only = on",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
}


@api_view(["POST"])
@idempotent
def read_only_elsewhere(request):
    """A handler whose own write, on another alias than the key table's,
    is refused: that database takes no writes."""
    other = connections["other"]
    with other.cursor() as cursor:
        cursor.execute(READ_ONLY_SESSION[other.vendor])
    try:
        record(request, "read-only", using="other")
    finally:
        other.close()
    return Response(status=201)


@api_view(["POST"])
@idempotent
def other_database(request):
    # The handler's data lives on the "other" alias, and so does the key
    # table under IDEMPOTENCY["DATABASE"] = "other" (the key table may live on any alias).
    execution = record(request, "other-db", using="other")
    if request.query_params.get("raise"):
        raise RuntimeError("handler failed")
    return Response({"execution": execution.pk}, status=201)


@api_view(["POST"])
@idempotent
def nested_atomic(request):
    # A handler with its own atomic block, as most write handlers have.
    with transaction.atomic():
        return behave(request, "nested-atomic")


class StreamJSONParser(BaseParser):
    """Reads the stream itself, as DRF's own parsers did before 3.16."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        return json.load(stream)


class StreamFormParser(BaseParser):
    media_type = "application/x-www-form-urlencoded"

    def parse(self, stream, media_type=None, parser_context=None):
        return QueryDict(stream.read())


class PeeksAtData(BasePermission):
    """Reads request.data before the handler, consuming the raw body."""

    def has_permission(self, request, view):
        return request.data.get("allowed", True) is not False


@api_view(["POST"])
@parser_classes([StreamJSONParser, StreamFormParser, MultiPartParser])
@permission_classes([IsAuthenticated, PeeksAtData])
@idempotent
def peeking(request):
    return behave(request, "peeking")


@api_view(["POST", "PUT", "PATCH", "DELETE"])
@parser_classes([StreamJSONParser])
@idempotent
def stream_json(request):
    return behave(request, "stream-json")


@api_view(["POST"])
@idempotent
def taken_over(request):
    # As if the claim had been committed early (MariaDB commits implicitly on
    # DDL) and another request had taken the record over meanwhile.
    behave(request, "taken-over")
    IdempotencyKey.objects.filter(key=request.headers["Idempotency-Key"]).update(
        created_at=timezone.now() + timedelta(seconds=1)
    )
    return Response({"ok": True}, status=201)


def same_for_every_request(request) -> str:
    return "same"


@api_view(["POST"])
@idempotent(fingerprint=same_for_every_request)
def constant_a(request):
    return behave(request, "constant-a")


@api_view(["POST"])
@idempotent(fingerprint=same_for_every_request)
def constant_b(request):
    return behave(request, "constant-b")


@api_view(["PUT"])
@parser_classes([FileUploadParser])
@idempotent
def upload(request, filename):
    execution = record(request, "upload")
    return Response({"execution": execution.pk, "size": request.data["file"].size}, status=201)


class ItemSerializer(serializers.ModelSerializer):
    class Meta:
        model = Item
        fields = ["id", "name", "quantity"]

    def create(self, validated_data):
        Execution.objects.create(label="create", key=storable_key(self.context["request"]))
        return super().create(validated_data)

    def update(self, instance, validated_data):
        Execution.objects.create(label="update", key=storable_key(self.context["request"]))
        return super().update(instance, validated_data)


class ItemCreateView(IdempotentMixin, generics.CreateAPIView):
    queryset = Item.objects.all()
    serializer_class = ItemSerializer


class ItemUpdateView(IdempotentMixin, generics.UpdateAPIView):
    queryset = Item.objects.all()
    serializer_class = ItemSerializer


class ItemViewSet(IdempotentMixin, viewsets.ModelViewSet):
    queryset = Item.objects.all()
    serializer_class = ItemSerializer

    def perform_destroy(self, instance):
        Execution.objects.create(label="destroy", key=storable_key(self.request))
        instance.delete()

    @action(detail=True, methods=["post"])
    def restock(self, request, pk=None):
        item = self.get_object()
        item.quantity += int(request.data.get("amount", 1))
        item.save()
        Execution.objects.create(label="restock", key=storable_key(request))
        return Response(ItemSerializer(item).data)


class OptionalItemViewSet(IdempotentMixin, viewsets.ModelViewSet):
    """Mixin options as class attributes."""

    queryset = Item.objects.all()
    serializer_class = ItemSerializer
    idempotency_required = False
    idempotency_methods = ["POST"]
    idempotency_scope = staticmethod(scope_by_tenant)


class DecoratedItemViewSet(viewsets.ModelViewSet):
    """No mixin: @idempotent on one ViewSet action and one extra action."""

    queryset = Item.objects.all()
    serializer_class = ItemSerializer

    @idempotent
    def create(self, request, *args, **kwargs):
        return super().create(request, *args, **kwargs)

    @action(detail=True, methods=["post"])
    @idempotent
    def archive(self, request, pk=None):
        item = self.get_object()
        Execution.objects.create(label="archive", key=storable_key(request))
        return Response({"archived": item.pk})


class MixinWithDecoratedAction(IdempotentMixin, viewsets.ModelViewSet):
    """The decorator's options win over the mixin's on the method it decorates."""

    queryset = Item.objects.all()
    serializer_class = ItemSerializer

    @action(detail=False, methods=["post"])
    @idempotent(required=False)
    def bulk(self, request):
        Execution.objects.create(label="bulk", key=storable_key(request))
        return Response({"ok": True})


# Effects outside the Django database, for views with backend="redis": runs
# per Idempotency-Key, kept in this process.
OUTSIDE_RUNS: Counter[str] = Counter()
_outside_lock = threading.Lock()
_outside_count = itertools.count(1)


def act_outside_database(request, label: str) -> HttpResponse:
    """Like ``behave``, with the run recorded outside the database."""
    with _outside_lock:
        OUTSIDE_RUNS[request.headers.get("Idempotency-Key", "")] += 1
        run = next(_outside_count)
    # Held by a header rather than the query string, so that a held request
    # and its retries are the same request (same fingerprint).
    gate = GATES.get(request.headers.get("X-Gate", ""))
    if gate is not None:
        gate.entered.set()
        gate.release.wait(timeout=30)
        if gate.fail_once:
            gate.fail_once = False
            raise RuntimeError("the held handler failed")
    return respond(request, label, run)


@api_view(["POST", "GET"])
@idempotent(backend="redis")
def redis_charge(request):
    return act_outside_database(request, "redis")


class RedisChargeView(IdempotentMixin, APIView):
    idempotency_backend = "redis"

    def post(self, request):
        return act_outside_database(request, "redis-mixin")


# Principals of every kind, for the default scope.


@dataclass
class PlainPrincipal:
    """A principal that is no model instance, as some token schemes return."""

    pk: str | None
    is_authenticated: bool = True


class PrincipalAuthentication(BaseAuthentication):
    """Authenticates whoever ``X-Principal`` names: ``user:<username>``,
    ``staff:<username>`` (a proxy model), ``account:<name>`` (a service
    account), ``plain:<pk>`` or ``plain:`` (no primary key)."""

    def authenticate(self, request):
        kind, _, name = request.headers.get("X-Principal", "").partition(":")
        if kind == "user":
            return User.objects.get(username=name), None
        if kind == "staff":
            return StaffUser.objects.get(username=name), None
        if kind == "customer":
            return Customer.objects.get(username=name), None
        if kind == "account":
            return ServiceAccount.objects.get(name=name), None
        if kind == "plain":
            return PlainPrincipal(pk=name or None), None
        if kind == "blank":  # a primary key, but an empty one
            return PlainPrincipal(pk=name.replace("_", " ")), None
        return None


@api_view(["POST"])
@authentication_classes([PrincipalAuthentication])
@idempotent
def principal(request):
    return behave(request, "principal")


# Scopes that identify no client.

MISSING_SCOPES = {"none": None, "empty": "", "blank": " ", "false": False, "list": []}
# And scopes of every other kind a callable may return.
OTHER_SCOPES = {
    "zero": 0,
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "hash-like": "sha256:" + "0" * 64,
    "object": object(),
    "dict": {"tenant": 1},
    "true": True,
}


def scope_from_header(request):
    name = request.headers.get("X-Scope", "")
    if name in MISSING_SCOPES:
        return MISSING_SCOPES[name]
    return OTHER_SCOPES.get(name, "given")


@api_view(["POST"])
@permission_classes([AllowAny])
@idempotent(scope=scope_from_header)
def missing_scope(request):
    return behave(request, "missing-scope")


def session_key(request):
    # The advice gone wrong: None for every browser without a session yet.
    return request.session.session_key


@api_view(["POST"])
@permission_classes([AllowAny])
@idempotent(scope=session_key)
def by_session_key(request):
    return behave(request, "by-session-key")


def scope_by_session(request):
    """The README's scope for anonymous clients: their session, which the
    page that sent the form started."""
    if request.user.is_authenticated:
        return default_scope(request)
    key = request.session.session_key
    return f"session:{key}" if key else None


@api_view(["POST"])
@permission_classes([AllowAny])
@idempotent(scope=scope_by_session)
def by_session(request):
    return behave(request, "by-session")


@api_view(["GET"])
@permission_classes([AllowAny])
def start_session(request):
    """The page that hosts the form: it starts the session."""
    request.session["visited"] = True
    return Response({"ok": True})


# Handlers that roll their own work back and answer for themselves.


def refuse(request, how: str) -> Response:
    """Write, then undo the transaction as ``how`` says, and answer 400."""
    execution = record(request, f"rolled-back-{how}")
    if how == "set_rollback":
        transaction.set_rollback(True)
    elif how == "orm":
        # An IntegrityError caught without a savepoint: the ORM marks the
        # transaction for rollback.
        with contextlib.suppress(IntegrityError):
            Execution.objects.create(pk=execution.pk, label="duplicate")
    elif how == "cursor":
        # The same through a raw cursor: Django marks nothing, but
        # PostgreSQL has aborted the transaction.
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute(
                    "INSERT INTO testapp_execution (id, label, key, created_at)"
                    " SELECT id, label, key, created_at FROM testapp_execution WHERE id = %s",
                    [execution.pk],
                )
        except IntegrityError:
            pass
    return Response({"detail": f"refused ({how})"}, status=400)


class WritesBeforeTheHandler(BasePermission):
    """A write of the request's own before the handler runs (an audit row),
    in the request's transaction under ATOMIC_REQUESTS."""

    def has_permission(self, request, view):
        Execution.objects.create(label="before-the-handler", key=storable_key(request))
        return True


@api_view(["POST"])
@permission_classes([IsAuthenticated, WritesBeforeTheHandler])
@idempotent
def rolls_back(request):
    how = request.data.get("rollback")
    if how:
        return refuse(request, how)
    return behave(request, "rolls-back")


@api_view(["POST"])
@idempotent
def write_skew(request):
    """Reads what the other request of a pair writes, and writes what it
    reads: at SERIALIZABLE, one of the pair must lose. Held by
    ``?barrier=<name>`` after its read and after its write."""
    seen = Execution.objects.filter(label="write-skew").count()
    barrier = BARRIERS.get(request.query_params.get("barrier", ""))
    if barrier is not None:
        barrier.wait(timeout=10)
    Execution.objects.create(label="write-skew", key=storable_key(request))
    if barrier is not None:
        barrier.wait(timeout=10)
    return Response({"seen": seen}, status=201)
