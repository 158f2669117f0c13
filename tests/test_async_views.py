"""``async def`` handlers (adrf's views, plain Django's) and plain Django
views, in process: the same answers, problems and guarantees as DRF's sync
handlers. Under real servers: tests/test_async_servers.py.

The async ones are driven through Django's ``AsyncClient`` from sync tests,
so that the database work of the request comes back to the test's thread,
inside the test's transaction, as a server's would to the request's thread.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from asgiref.sync import ThreadSensitiveContext, async_to_sync, sync_to_async
from django.contrib.auth.decorators import login_required
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.test import AsyncClient, Client, override_settings
from django.views.decorators.csrf import csrf_protect

from idempotency.decorators import idempotent
from tests.helpers import executions, new_key
from tests.redis_proxy import RedisProxy, caches_with, other_database

pytestmark = pytest.mark.django_db

T = TypeVar("T")

ASYNC_URLS = {
    "adrf @api_view": "/async/function/",
    "adrf APIView + IdempotentMixin": "/async/mixin/",
    "adrf ViewSet + IdempotentMixin": "/async/charges/",
    "Django async function": "/django/async-function/",
    "Django async View": "/django/async-view/",
}
SYNC_DJANGO_URLS = {"Django function": "/django/function/", "Django View": "/django/view/"}


@pytest.fixture
def aclient(user) -> AsyncClient:
    client = AsyncClient(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.fixture
def dclient(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def apost(client: AsyncClient, url: str, key: str | None, data: object = None, **extra):
    headers = {} if key is None else {"Idempotency-Key": key}
    body = json.dumps({"amount": 100} if data is None else data)
    return async_to_sync(client.post)(
        url, body, content_type="application/json", headers=headers, **extra
    )


def dpost(client: Client, url: str, key: str | None, data: object = None, **extra):
    headers = {} if key is None else {"Idempotency-Key": key}
    body = json.dumps({"amount": 100} if data is None else data)
    return client.post(url, body, content_type="application/json", headers=headers, **extra)


def problem_type(response) -> str:
    assert response["Content-Type"] == "application/problem+json"
    return json.loads(response.content)["type"].rsplit(":", 1)[-1]


async def as_served(request: Awaitable[T]) -> T:
    """Await a test client's request (or login) as Django's ASGI handler
    serves one: its sync work in a thread of its own (the test client would
    run every request's in one thread), whose connection is closed after
    it, so that none outlives the test."""
    async with ThreadSensitiveContext():
        try:
            return await request
        finally:
            await sync_to_async(connections.close_all)()


@pytest.mark.parametrize("url", ASYNC_URLS.values(), ids=ASYNC_URLS.keys())
def test_async_handler_runs_once_and_its_retry_is_replayed(aclient, url):
    key = new_key()
    first = apost(aclient, url, key)
    assert first.status_code == 201, first.content
    # The handler's awaited ORM work ran in the claim's transaction.
    assert json.loads(first.content)["in_transaction"] is True
    retry = apost(aclient, url, key)
    assert retry.status_code == 201
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert executions(key) == 1


@pytest.mark.parametrize("url", ASYNC_URLS.values(), ids=ASYNC_URLS.keys())
def test_async_handler_answers_the_problems(aclient, url):
    assert problem_type(apost(aclient, url, None)) == "key-missing"
    assert problem_type(apost(aclient, url, "a,b")) == "key-malformed"
    key = new_key()
    apost(aclient, url, key)
    reused = apost(aclient, url, key, data={"amount": 200})
    assert reused.status_code == 422
    assert problem_type(reused) == "key-reused"
    assert executions(key) == 1


@pytest.mark.parametrize("url", ASYNC_URLS.values(), ids=ASYNC_URLS.keys())
def test_async_handler_that_raises_rolls_back_its_awaited_writes(aclient, url):
    """The handler's write, awaited through the async ORM, rolls back with
    the claim: the key is free, and the corrected retry runs once."""
    key = new_key()
    failed = apost(aclient, f"{url}?raise=1", key)
    assert failed.status_code == 500
    assert executions(key) == 0
    retry = apost(aclient, url, key)
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert executions(key) == 1


def test_safe_methods_of_an_async_view_pass_through(aclient):
    response = async_to_sync(aclient.get)("/async/mixin/")
    assert response.status_code == 200
    assert json.loads(response.content) == {"charges": 0}


# Not on SQLite: its shared in-memory test database locks tables across the
# threads' connections.
@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_the_event_loop_serves_others_while_a_protected_handler_waits(user):
    """A protected async handler that waits holds no event loop: another
    request's coroutine runs meanwhile (the held one is released by it).

    On an event loop of its own, as a server runs it, and with each request's
    sync work in a thread of its own, as Django's ASGI handler gives it
    (Django's test client would run it all in one thread)."""

    async def scenario() -> list[str]:
        from tests.testapp import async_views

        name = uuid.uuid4().hex
        async_views.HOLDS[name] = hold = asyncio.Event()
        client = AsyncClient()
        await as_served(client.aforce_login(user))
        order: list[str] = []

        async def protected() -> None:
            response = await as_served(
                client.post(
                    f"/async/function/?hold={name}",
                    {"amount": 1},
                    content_type="application/json",
                    headers={"Idempotency-Key": new_key()},
                )
            )
            order.append(f"protected {response.status_code}")

        async def other() -> None:
            response = await as_served(client.get("/async/ping/"))
            order.append(f"ping {response.status_code}")
            hold.set()

        try:
            await asyncio.wait_for(asyncio.gather(protected(), other()), timeout=20)
        finally:
            del async_views.HOLDS[name]
        return order

    assert asyncio.run(scenario()) == ["ping 200", "protected 201"]


@pytest.mark.parametrize("url", SYNC_DJANGO_URLS.values(), ids=SYNC_DJANGO_URLS.keys())
def test_plain_django_view_runs_once_and_replays(dclient, url):
    key = new_key()
    first = dpost(dclient, url, key)
    assert first.status_code == 201, first.content
    retry = dpost(dclient, url, key)
    assert (retry.status_code, retry.content) == (201, first.content)
    assert retry["Idempotent-Replayed"] == "true"
    assert retry["Content-Type"] == first["Content-Type"]
    assert executions(key) == 1
    assert dpost(dclient, url, key, data={"amount": 5}).status_code == 422
    assert problem_type(dpost(dclient, url, None)) == "key-missing"


def test_plain_django_view_that_raises_rolls_back_and_frees_the_key(dclient):
    key = new_key()
    assert dpost(dclient, "/django/function/?raise=1", key).status_code == 500
    assert executions(key) == 0
    assert dpost(dclient, "/django/function/", key).status_code == 201
    assert executions(key) == 1


def test_plain_django_views_scope_by_the_session_user(dclient, other_user):
    """Django's own authentication gives the scope: another user's same key
    is a new request, never the first user's replay."""
    key = new_key()
    mine = dpost(dclient, "/django/function/", key)
    theirs_client = Client()
    theirs_client.force_login(other_user)
    theirs = dpost(theirs_client, "/django/function/", key)
    assert theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs
    assert theirs.content != mine.content
    assert executions(key) == 2


def test_login_required_runs_before_protection(db):
    """An anonymous client is redirected to log in by ``login_required``,
    above ``@idempotent``: nothing is claimed or run."""
    key = new_key()
    response = dpost(Client(), "/django/function/", key)
    assert response.status_code == 302
    assert executions(key) == 0


def test_plain_django_stream_and_template_response_are_stored_whole(dclient):
    key = new_key()
    first = dpost(dclient, "/django/stream/", key)
    assert first.status_code == 201
    assert b"".join(first.streaming_content) == b"chunk-0;chunk-1;chunk-2;chunk-3;chunk-4;"
    retry = dpost(dclient, "/django/stream/", key)
    assert retry.content == b"chunk-0;chunk-1;chunk-2;chunk-3;chunk-4;"
    assert executions(key) == 1

    key = new_key()
    invalid = dclient.post("/django/form/", {"note": ""}, headers={"Idempotency-Key": key})
    assert invalid.status_code == 200  # the form again, with its errors
    replayed = dclient.post("/django/form/", {"note": ""}, headers={"Idempotency-Key": key})
    assert replayed.content == invalid.content
    assert replayed["Idempotent-Replayed"] == "true"
    key = new_key()
    done = dclient.post("/django/form/", {"note": "hi"}, headers={"Idempotency-Key": key})
    assert (done.status_code, done["Location"]) == (302, "/done/")
    again = dclient.post("/django/form/", {"note": "hi"}, headers={"Idempotency-Key": key})
    assert (again.status_code, again["Location"]) == (302, "/done/")
    assert executions(key) == 1


@pytest.mark.redis
@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_async_handler_on_the_redis_store_keeps_the_loop_free(user):
    """With ``backend="redis"``, a protected async request whose Redis is
    slow to answer (a relay that holds its replies) leaves the event loop
    free: a ping answers meanwhile."""
    from django.conf import settings as django_settings

    proxy = RedisProxy(django_settings.REDIS_URL)
    proxy.delay = 0.5
    try:
        caches = caches_with("slow", other_database(proxy.url, 7), SOCKET_TIMEOUT=5)
        with override_settings(CACHES=caches, IDEMPOTENCY={"REDIS": "slow"}):

            async def scenario() -> tuple[int, float, float]:
                client = AsyncClient()
                await as_served(client.aforce_login(user))
                started = time.monotonic()

                async def protected() -> tuple[int, float]:
                    response = await as_served(
                        client.post(
                            "/async/redis/",
                            {"amount": 1},
                            content_type="application/json",
                            headers={"Idempotency-Key": new_key()},
                        )
                    )
                    return response.status_code, time.monotonic() - started

                async def ping() -> float:
                    await asyncio.sleep(0.1)
                    await as_served(client.get("/async/ping/"))
                    return time.monotonic() - started

                (status, protected_took), ping_took = await asyncio.gather(protected(), ping())
                return status, protected_took, ping_took

            status, protected_took, ping_took = asyncio.run(scenario())
    finally:
        proxy.cut()
    print(
        f"Redis store from an async handler, Redis replies held 0.5 s: the protected "
        f"request took {protected_took:.2f} s, a ping sent meanwhile {ping_took:.2f} s"
    )
    assert status == 201
    assert protected_took >= 1.0  # the claim and the completion each waited on the relay
    assert ping_took < protected_took - 0.5


def test_wrong_decorator_order_is_refused_at_import():
    def view(request): ...

    with pytest.raises(
        TypeError, match=r"above @login_required.*\n\n    @login_required\n    @idempotent"
    ):
        idempotent(login_required(view))
    with pytest.raises(TypeError, match="above @csrf_protect"):
        idempotent(csrf_protect(view))
    # The right order is accepted.
    login_required(csrf_protect(idempotent(view)))


def test_what_cannot_be_protected_is_refused_at_import():
    def generator(request):
        yield b"x"

    async def async_generator(request):
        yield b"x"

    for target in (generator, async_generator):
        with pytest.raises(TypeError, match="generator"):
            idempotent(target)
    with pytest.raises(TypeError, match="not 'charge'"):
        idempotent("charge")  # type: ignore[call-overload]

    from django.views import View

    with pytest.raises(TypeError, match="method_decorator"):
        idempotent(View)

    class Dispatching(View):
        def dispatch(self, request, *args, **kwargs): ...

    with pytest.raises(TypeError, match="dispatch"):
        idempotent(Dispatching.dispatch)


def test_a_plain_django_view_without_a_scope_names_itself(dclient, caplog):
    response = dpost(dclient, "/django/no-scope/", new_key())
    assert problem_type(response) == "scope-missing"
    assert "The scope of tests.testapp.async_views.django_no_scope returned None" in caplog.text


def test_plain_django_multipart_put_is_fingerprinted_by_its_bytes(dclient):
    """Django parses multipart bodies of POST requests only: a PUT's bytes
    are the fingerprint, so another file under the same key is a 422."""
    from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart

    key = new_key()

    def put(content: bytes):
        body = encode_multipart(BOUNDARY, {"file": SimpleUploadedFile("a.txt", content)})
        return dclient.put(
            "/django/upload/",
            body,
            content_type=MULTIPART_CONTENT,
            headers={"Idempotency-Key": key},
        )

    assert put(b"one").status_code == 201
    assert put(b"one")["Idempotent-Replayed"] == "true"
    assert put(b"two").status_code == 422
    assert executions(key) == 1


def test_a_plain_django_body_already_streamed_away_is_an_error():
    """Middleware that read the raw stream leaves nothing to fingerprint: a
    programming error, raised rather than hashed as empty."""
    from django.http.request import RawPostDataException
    from django.test import RequestFactory

    from idempotency.fingerprint import default_fingerprint

    request = RequestFactory().post("/", b"{}", content_type="application/json")
    request.read()
    with pytest.raises(RawPostDataException):
        default_fingerprint(request)


def test_a_call_without_a_request_is_refused():
    handler = idempotent(lambda amount: amount)
    with pytest.raises(TypeError, match="did not receive a request"):
        handler(100)
