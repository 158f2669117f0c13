"""Async handlers and plain Django views, attacked as a hostile user would:
clients that hang up, tasks the handler leaves behind, bodies cut short,
decorators in the wrong order however they are applied.

Requests go through Django's ``ASGIHandler`` itself (as uvicorn drives it),
on an event loop of their own, so that a client's ``http.disconnect`` reaches
Django as it does in production; each test commits for real
(``transaction=True``) and counts what committed.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import threading
import time

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler

from idempotency.decorators import idempotent
from tests.helpers import executions, new_key
from tests.testapp import hostile_views
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


class Answer:
    def __init__(self, messages: list[dict]) -> None:
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        self.status = start["status"] if start else None
        self.headers = {
            k.decode().lower(): v.decode() for k, v in (start["headers"] if start else [])
        }
        self.body = b"".join(
            m.get("body", b"") for m in messages if m["type"] == "http.response.body"
        )

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.body[:200]!r}>"


async def asgi_post(
    path: str,
    key: str | None,
    body: bytes = b'{"amount": 1}',
    *,
    disconnect_after: float | None = None,
    content_type: str = "application/json",
    extra_headers: list[tuple[bytes, bytes]] = (),
) -> Answer:
    """POST through Django's ASGI handler. With ``disconnect_after``, the
    client hangs up that many seconds after sending its body, as a client
    whose timeout fired does (uvicorn then hands Django ``http.disconnect``)."""
    path, _, query = path.partition("?")
    sent: list[dict] = []
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        if disconnect_after is None:
            await asyncio.Event().wait()  # never: Django cancels this
        await asyncio.sleep(disconnect_after)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [
        (b"host", b"testserver"),
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    if key is not None:
        headers.append((b"idempotency-key", key.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await ASGIHandler()(scope, receive, send)
    return Answer(sent)


def post(path: str, key: str | None, **kwargs) -> Answer:
    return asyncio.run(asgi_post(path, key, **kwargs))


@pytest.fixture(autouse=True)
def clean_state():
    hostile_views.EFFECTS.clear()
    hostile_views.PIDS.clear()
    hostile_views.TASKS.clear()
    hostile_views.BG_ERRORS.clear()


# --------------------------------------------------------------------------
# Client disconnect under ASGI: Django 5 cancels an async view.


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_client_that_hangs_up_gets_the_replay_when_it_retries_redis(kind):
    """A client whose timeout fires hangs up and retries with the same key:
    the case the package exists for. Django cancels an async view when its
    client hangs up, but a protected handler runs to its end all the same,
    as a sync one does in its thread: its response is stored, and the retry
    is its replay. Cancelled midway, its effects (outside the database, with
    backend="redis") would stand while its key was freed, and the retry would
    run it again."""
    key = new_key()
    first = post(f"/hostile/{kind}_redis_slow/?sleep=0.5", key, disconnect_after=0.1)
    assert first.status is None  # nothing sent: the client was gone
    retry = post(f"/hostile/{kind}_redis_slow/?sleep=0.5", key)
    assert retry.status == 201
    assert retry.headers.get("idempotent-replayed") == "true"
    assert hostile_views.EFFECTS.count(key) == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_client_that_hangs_up_gets_the_replay_when_it_retries_database(kind):
    """The database store: the handler runs to its end, its effects commit
    with its stored response, and whatever it did outside the database (a
    provider's charge) happened once."""
    key = new_key()
    first = post(f"/hostile/{kind}_db_slow/?sleep=0.5", key, disconnect_after=0.1)
    assert first.status is None
    # The handler goes on after its client left; Django's handler need not
    # wait for it to return (a sync view's thread cannot be cancelled).
    deadline = time.monotonic() + 10
    while executions(key) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert executions(key) == 1
    retry = post(f"/hostile/{kind}_db_slow/?sleep=0.5", key)
    assert retry.headers.get("idempotent-replayed") == "true"
    assert (executions(key), hostile_views.EFFECTS.count(key)) == (1, 1)


def test_a_handler_that_fails_after_its_client_hung_up_is_logged(caplog):
    """Its error is logged as any view's, its work rolls back, and the key
    is free again."""
    key = new_key()
    post("/hostile/async_db_slow/?sleep=0.3&raise=1", key, disconnect_after=0.1)
    assert "RuntimeError: the provider refused" in caplog.text
    assert executions(key) == 0
    assert post("/hostile/async_db_slow/", key).status == 201


# --------------------------------------------------------------------------
# Tasks the handler starts.


def test_a_task_left_running_cannot_reach_the_database_after_the_handler_returns():
    """A fire-and-forget task (an audit row) that writes after the handler
    returned: without @idempotent the write lands; with it, the task
    inherited the thread that held the claim's transaction, which is gone
    once the handler has returned: its write fails, as the README says. A
    task's database work must be awaited by the handler."""

    async def scenario(path: str, key: str) -> None:
        answer = await asgi_post(path, key)
        assert answer.status == 201, answer
        await asyncio.gather(*hostile_views.TASKS, return_exceptions=True)

    key = new_key()
    asyncio.run(scenario("/hostile/async_background_unprotected/", key))
    assert executions(key, "attack-background") == 1
    assert hostile_views.BG_ERRORS == []

    key = new_key()
    hostile_views.TASKS.clear()
    asyncio.run(scenario("/hostile/async_background/", key))
    assert executions(key, "attack-main") == 1
    assert hostile_views.BG_ERRORS == ["RuntimeError"]
    assert executions(key, "attack-background") == 0


def test_gather_of_orm_calls_joins_the_transaction_and_rolls_back():
    key = new_key()
    ok = post("/hostile/async_gather/", key)
    assert ok.status == 201, ok
    assert json.loads(ok.body)["in_transaction"] == [True, True, True]
    assert executions(key) == 5
    key = new_key()
    failed = post("/hostile/async_gather/?raise=1", key)
    assert failed.status == 500
    assert executions(key) == 0


# Not on SQLite, where the other thread's write waits for the claim's lock.
@pytest.mark.server_db
def test_thread_insensitive_write_escapes_the_transaction_as_documented():
    key = new_key()
    assert post("/hostile/async_unsafe_thread/", key).status == 500
    assert executions(key) == 1  # README: outside the transaction


# --------------------------------------------------------------------------
# Async streaming responses.


def test_async_stream_is_drained_inside_the_transaction():
    key = new_key()
    ok = post("/hostile/async_stream/", key)
    assert ok.status == 201
    assert ok.body == b"chunk-0-True;chunk-1-True;chunk-2-True;"
    replay = post("/hostile/async_stream/", key)
    assert (replay.status, replay.body) == (201, ok.body)
    assert replay.headers["idempotent-replayed"] == "true"
    assert executions(key) == 3
    key = new_key()
    failed = post("/hostile/async_stream/?raise=1", key)
    assert failed.status == 500
    assert executions(key) == 0


# --------------------------------------------------------------------------
# The claim's session killed mid-handler.


def _kill_when_ready(key: str, vendor_kill) -> threading.Thread:
    def kill() -> None:
        deadline = time.monotonic() + 10
        while key not in hostile_views.PIDS and time.monotonic() < deadline:
            time.sleep(0.01)
        vendor_kill(hostile_views.PIDS[key])

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def _pg_kill(pid: int) -> None:
    import psycopg
    from django.db import connections

    s = connections["default"].settings_dict
    with psycopg.connect(
        host=s["HOST"], port=s["PORT"], user=s["USER"], dbname=s["NAME"], autocommit=True
    ) as other:
        # With a timeout, PostgreSQL waits for the backend to exit (and release its locks).
        other.execute("SELECT pg_terminate_backend(%s, 10000)", [pid])


@pytest.mark.vendor("postgresql")
@pytest.mark.parametrize("again", [True, False], ids=["writes-after", "returns-after"])
def test_async_handler_session_terminated_answers_503_and_commits_nothing(again):
    key = new_key()
    killer = _kill_when_ready(key, _pg_kill)
    answer = post(f"/hostile/async_killed/?sleep=0.5{'&again=1' if again else ''}", key)
    killer.join()
    assert answer.status == 503, answer
    assert answer.headers["content-type"] == "application/problem+json"
    assert executions(key) == 0
    retry = post("/hostile/async_killed/", key)
    assert retry.status == 201
    assert executions(key) == 1


# --------------------------------------------------------------------------
# Plain Django views.


def _wsgi_post(path: str, key: str, body: bytes, stream, headers: dict[str, str]):
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "wsgi.input": stream,
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_IDEMPOTENCY_KEY": key,
        **headers,
    }
    statuses = []

    def start_response(status, response_headers, exc_info=None):
        statuses.append(int(status.split()[0]))

    chunks = WSGIHandler()(environ, start_response)
    content = b"".join(chunks)
    return statuses[0], content


class HangsUp(io.RawIOBase):
    """A request body whose client hangs up half-way (UnreadablePostError)."""

    def __init__(self, data: bytes) -> None:
        self.data = data[: len(data) // 2]
        self.done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.done:
            raise OSError("client hung up")
        self.done = True
        n = len(self.data)
        buffer[:n] = self.data
        return n


CSRF = "a" * 32


MULTIPART_BODY = (
    b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
    b'--b\r\nContent-Disposition: form-data; name="amount"\r\n\r\n10\r\n--b--\r\n'
)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"note=hello&amount=10"),
        ("multipart/form-data; boundary=b", MULTIPART_BODY),
    ],
    ids=["urlencoded", "multipart"],
)
def test_a_plain_view_body_cut_off_after_the_csrf_check_read_it_is_400(content_type, body):
    """A plain view that does not exempt CSRF: CsrfViewMiddleware reads
    request.POST first. A client that hangs up mid-body makes that read fail
    (the check swallows the error and takes the header token); the body is
    then gone, and the client gets the 400 of a body cut short, never a run
    on an empty form that its full retry would then meet as a 422."""
    key = new_key()
    status, content = _wsgi_post(
        "/hostile/csrf_checked/",
        key,
        body,
        io.BufferedReader(HangsUp(body)),
        {
            "CONTENT_TYPE": content_type,
            "HTTP_COOKIE": f"csrftoken={CSRF}",
            "HTTP_X_CSRFTOKEN": CSRF,
        },
    )
    assert status == 400, (status, content[:300])
    assert b"body-malformed" in content
    assert executions(key) == 0


def test_plain_view_body_cut_off_without_csrf_read_is_400():
    body = b"note=hello&amount=10"
    status, content = _wsgi_post(
        "/hostile/plain_multipart/",
        new_key(),
        body,
        io.BufferedReader(HangsUp(body)),
        {"CONTENT_TYPE": "application/x-www-form-urlencoded"},
    )
    assert status == 400
    assert b"body" in content


def test_a_plain_view_malformed_multipart_is_a_problem_document():
    """A multipart POST without a boundary is a problem+json 400 on a plain
    view, as on a DRF view."""
    answer = post(
        "/hostile/plain_multipart/",
        new_key(),
        body=b"--x\r\n",
        content_type="multipart/form-data",
    )
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/problem+json", answer


def test_plain_view_multipart_put_is_fingerprinted_by_its_bytes():
    key = new_key()
    body = b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b--\r\n'
    first = post(
        "/hostile/plain_multipart/", key, body=body, content_type="multipart/form-data; boundary=b"
    )
    assert first.status == 201, first
    other = body.replace(b"\r\n1\r\n", b"\r\n2\r\n")
    reused = post(
        "/hostile/plain_multipart/",
        key,
        body=other,
        content_type="multipart/form-data; boundary=b",
    )
    assert reused.status == 422
    assert executions(key) == 1


def test_idempotent_applied_twice_runs_once():
    key = new_key()
    assert post("/hostile/twice/", key).status == 201
    replay = post("/hostile/twice/", key)
    assert replay.headers["idempotent-replayed"] == "true"
    assert executions(key) == 1


def test_a_view_made_of_a_partial_is_protected(user):
    """``idempotent(functools.partial(view, ...))``, as URLconfs make views."""
    from django.http import HttpResponse
    from django.test import RequestFactory

    def view(request, label):
        Execution.objects.create(label=label, key=request.headers["Idempotency-Key"])
        return HttpResponse(label, status=201)

    protected = idempotent(functools.partial(view, label="partial"))
    key = new_key()
    for _ in range(2):
        request = RequestFactory().post(
            "/", b"{}", content_type="application/json", headers={"Idempotency-Key": key}
        )
        request.user = user
        response = protected(request)
    assert (response.status_code, response.content) == (201, b"partial")
    assert response["Idempotent-Replayed"] == "true"
    assert executions(key) == 1


def test_adrf_wrong_orders_are_refused_at_import():
    from adrf.decorators import api_view
    from adrf.views import APIView

    from idempotency.mixins import IdempotentMixin

    async def charge(request): ...

    with pytest.raises(TypeError, match="above @api_view"):
        idempotent(api_view(["POST"])(charge))
    with pytest.raises(TypeError, match="after a DRF view class"):

        class Wrong(APIView, IdempotentMixin):
            async def post(self, request): ...


def test_head_and_get_pass_through_plain_views():
    from django.test import Client

    client = Client()
    key = new_key()
    assert client.get("/hostile/twice/", headers={"Idempotency-Key": key}).status_code == 201
    assert client.get("/hostile/twice/", headers={"Idempotency-Key": key}).status_code == 201
    assert executions(key) == 2


# --------------------------------------------------------------------------
# More plain Django and outage attacks.


@pytest.mark.redis
def test_async_redis_handler_when_redis_is_down_answers_503_and_does_not_run():
    from django.test import override_settings

    from tests.redis_proxy import caches_with

    key = new_key()
    with override_settings(
        CACHES=caches_with("dead", "redis://127.0.0.1:1/0"), IDEMPOTENCY={"REDIS": "dead"}
    ):
        answer = post("/hostile/async_redis_slow/", key)
    assert answer.status == 503, answer
    assert answer.headers["content-type"] == "application/problem+json"
    assert hostile_views.EFFECTS.count(key) == 0


def _class_view_request(view_class, key: str):
    from django.contrib.auth.models import AnonymousUser
    from django.test import RequestFactory

    request = RequestFactory().post(
        "/x/", b"{}", content_type="application/json", headers={"Idempotency-Key": key}
    )
    request.user = AnonymousUser()
    request._dont_enforce_csrf_checks = True
    return view_class.as_view()(request)


def test_method_decorator_on_dispatch_is_refused_on_the_first_request():
    """``method_decorator`` applies its decorators on each call (at import it
    only tries them on a dummy function), so ``dispatch`` is refused on the
    first request, as the README says, with the fix."""
    from django.http import HttpResponse
    from django.utils.decorators import method_decorator
    from django.views import View

    @method_decorator(idempotent, name="dispatch")  # accepted at import
    class Charge(View):
        def post(self, request):
            return HttpResponse("ok", status=201)

    with pytest.raises(TypeError, match=r"cannot protect dispatch\(\)"):
        _class_view_request(Charge, new_key())


def test_method_decorator_in_the_wrong_order_is_refused_before_any_replay(user):
    """``login_required`` below ``idempotent``, both by method_decorator on
    the same handler: with a scope that is not the user, an anonymous client
    holding the key would get the logged-in user's response replayed instead
    of the login redirect. It is refused on the first request (method_decorator
    applies its decorators only then), before anything is claimed."""
    from django.contrib.auth.decorators import login_required
    from django.contrib.auth.models import AnonymousUser
    from django.http import HttpResponse
    from django.test import RequestFactory
    from django.utils.decorators import method_decorator
    from django.views import View

    @method_decorator(idempotent(scope=lambda request: request.headers["X-Account"]), name="post")
    @method_decorator(login_required, name="post")
    class Statement(View):
        def post(self, request):
            return HttpResponse(f"private statement of {request.user.username}", status=201)

    key = new_key()

    def send(who):
        request = RequestFactory().post(
            "/statement/",
            b"{}",
            content_type="application/json",
            headers={"Idempotency-Key": key, "X-Account": "acme"},
        )
        request.user = who
        request._dont_enforce_csrf_checks = True
        return Statement.as_view()(request)

    for who in (user, AnonymousUser()):
        with pytest.raises(TypeError, match="above @login_required"):
            send(who)
    from idempotency.models import IdempotencyKey

    assert not IdempotencyKey.objects.exists()


def test_idempotent_above_method_decorator_login_required_is_refused_at_import():
    """The README's async class-view pattern with its two lines swapped:
    ``@idempotent`` above ``@method_decorator(login_required)`` (or
    ``permission_required``, or ``csrf_protect``) on the handler."""
    from django.contrib.auth.decorators import login_required, permission_required
    from django.utils.decorators import method_decorator
    from django.views.decorators.cache import never_cache
    from django.views.decorators.csrf import csrf_exempt, csrf_protect

    def post(self, request): ...

    async def apost(self, request): ...

    for handler in (post, apost):
        with pytest.raises(TypeError, match="above @login_required"):
            idempotent(method_decorator(login_required)(handler))
        with pytest.raises(TypeError, match="above @login_required"):
            idempotent(method_decorator(permission_required("wallet.charge"))(handler))
        with pytest.raises(TypeError, match="above @csrf_protect"):
            idempotent(method_decorator(csrf_protect)(handler))
        # The right order is accepted, and so are decorators that check nothing.
        method_decorator(login_required)(idempotent(handler))
        idempotent(method_decorator([never_cache, csrf_exempt])(handler))


def test_only_what_runs_before_the_views_checks_is_refused():
    """``dispatch()`` methods and whole class-based views are refused; a
    function that happens to be called dispatch is not, nor are Django's
    decorators that only set the CSRF cookie."""
    from django.views import View
    from django.views.decorators.csrf import ensure_csrf_cookie, requires_csrf_token

    class Orders(View):
        def post(self, request): ...

    with pytest.raises(TypeError, match="whole class-based view"):
        idempotent(Orders.as_view())

    def dispatch(request): ...  # dispatching an order, say

    idempotent(dispatch)
    for decorator in (ensure_csrf_cookie, requires_csrf_token):
        idempotent(decorator(dispatch))
