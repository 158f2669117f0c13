"""Bad input gets a clear 4xx, under generated input: whatever a client sends (any header
value, any body, method or content type, any size, many headers), the package
answers below 500, leaves no record behind for a request it refuses, and
replays a request it accepted byte for byte.

Requests are built as WSGI environs (header values are Latin-1 text there, as
a WSGI server hands them over) and sent through Django's test client, which
re-raises any exception a view let escape. Each example runs in a savepoint
that is rolled back, so no state leaks from one example to the next.

The response side of docs/http.rst, a body over ``MAX_RESPONSE_BYTES`` and a
streaming response, is pinned with exact expectations by
``test_http_behaviour.py::TestLargeAndStreamingResponses`` and
``test_guarantees.py::TestG2Atomic::test_a_response_that_cannot_be_stored_commits_neither``;
it is not repeated here.
"""

from __future__ import annotations

import base64
import json
import operator
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import urlencode

import pytest
from django.db import transaction
from django.http import HttpResponse
from django.test import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from example_project.wallet.models import Charge, Order, Wallet
from idempotency.conf import settings as idempotency_settings
from idempotency.models import IdempotencyKey
from tests.helpers import new_key
from tests.testapp.models import Execution, Item

# On every database: the servers check what their columns take (NUL bytes,
# lengths, lone surrogates), which is where a hostile value could reach them.
pytestmark = pytest.mark.django_db

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "tag:django-idempotency,2026:"
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440  # Django's default, which the tests use
BOUNDARY = "hyp0thesis"


def bounded(max_examples: int) -> settings:
    # No example database: a run leaves nothing behind in the work tree. CI
    # draws the same examples on every run, so that its verdict depends on
    # the code alone; elsewhere every run explores new ones.
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@dataclass(frozen=True)
class Endpoint:
    path: str
    protected: frozenset[str]  # the methods the package guards on this view
    body: bytes = b'{"amount": 1}'  # a payload the view accepts
    required: bool = True


FUNCTION = Endpoint("/function/", frozenset(UNSAFE))
GENERIC_ITEMS = Endpoint("/generic/items/", frozenset({"POST"}), b'{"name": "n", "quantity": 1}')
EXAMPLE_CHARGES = Endpoint("/example/charges/", frozenset({"POST"}))
ENDPOINTS = [
    FUNCTION,
    Endpoint("/charge/", frozenset({"POST", "PUT"})),
    Endpoint("/nested-atomic/", frozenset({"POST"})),
    Endpoint("/anonymous/", frozenset({"POST"})),
    Endpoint("/optional/", frozenset({"POST"}), required=False),
    Endpoint("/custom-scope/", frozenset({"POST"})),
    Endpoint("/items/", frozenset({"POST"}), b'{"name": "n", "quantity": 1}'),
    GENERIC_ITEMS,
    EXAMPLE_CHARGES,
    Endpoint("/example/orders/", frozenset({"POST"}), b'{"product": "p", "quantity": 1}'),
]


# Strategies ---------------------------------------------------------------

LATIN1 = st.characters(min_codepoint=0, max_codepoint=0xFF)
VISIBLE_ASCII = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


def repeated(chars: list[str], low: int, high: int) -> st.SearchStrategy[str]:
    return st.builds(operator.mul, st.sampled_from(chars), st.integers(low, high))


def quoted(value: str) -> str:
    """The draft's structured-field string form of ``value``."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


KEYS = st.one_of(
    st.text(LATIN1, max_size=300),  # anything a WSGI server can hand over
    st.text(VISIBLE_ASCII, min_size=1, max_size=255),  # valid keys
    st.text(VISIBLE_ASCII, min_size=1, max_size=120).map(quoted),
    st.builds(
        "{}{}{}".format,
        st.sampled_from(["", " ", "\t", " \t "]),
        st.text(VISIBLE_ASCII, min_size=1, max_size=250),
        st.sampled_from(["", " ", "\t", "\r\n", "\x00"]),
    ),
    st.text(max_size=40),  # non-Latin-1 text, as an ASGI server or a test client may pass
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
    # A header sent several times, as servers join it, bare or quoted, and
    # a quoted key with parameters.
    st.lists(st.text(VISIBLE_ASCII, min_size=1, max_size=40), min_size=2, max_size=4).map(
        ",".join
    ),
    st.lists(st.text(VISIBLE_ASCII, min_size=1, max_size=40).map(quoted), min_size=2).map(
        ", ".join
    ),
    st.builds("{};{}".format, st.text(VISIBLE_ASCII, max_size=40).map(quoted), st.text(LATIN1)),
    repeated(["k", "\x00", "\xff", " ", '"', "\\"], 256, 200_000),  # huge
)

HEADER_VALUES = st.one_of(
    st.text(LATIN1, max_size=100),
    repeated(["a", "\x00", "\xff", ","], 1_000, 20_000),
)
HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            "HTTP_ACCEPT_LANGUAGE",
            "HTTP_ACCEPT_ENCODING",
            "HTTP_USER_AGENT",
            "HTTP_X_FORWARDED_FOR",
            "HTTP_X_TENANT",
            "HTTP_IF_MATCH",
            "HTTP_IF_NONE_MATCH",
            "HTTP_RANGE",
            "HTTP_ORIGIN",
            "HTTP_REFERER",
            "HTTP_CONTENT_LENGTH",
            "HTTP_CONTENT_TYPE",
            "HTTP_CONTENT_DISPOSITION",
            "HTTP_X_REQUESTED_WITH",
            "HTTP_X_CSRFTOKEN",
        ]
    ),
    st.from_regex(r"HTTP_X_[A-Z0-9_]{1,30}", fullmatch=True),
)
# Many headers at once; Accept is left to the environ test, because a
# refusal in content negotiation (406) comes before the key is looked at.
MANY_HEADERS = st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=40)

JSON_CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
        "application/json; charset=no-such-codec",
        "APPLICATION/JSON",
        "application/problem+json",
        "application/vnd.api+json",
    ]
)
FORM_CONTENT_TYPES = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=latin-1",
        "application/x-www-form-urlencoded; charset=no-such-codec",
    ]
)
MULTIPART_CONTENT_TYPES = st.sampled_from(
    [
        f"multipart/form-data; boundary={BOUNDARY}",
        f'multipart/form-data; boundary="{BOUNDARY}"',
        f"multipart/form-data; boundary={BOUNDARY}; charset=no-such-codec",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=" + "b" * 200,
        "multipart/form-data; boundary=other",
        "multipart/mixed; boundary=x",
    ]
)
CONTENT_TYPES = st.one_of(
    JSON_CONTENT_TYPES,
    FORM_CONTENT_TYPES,
    MULTIPART_CONTENT_TYPES,
    st.sampled_from(["", "text/plain", "application/octet-stream", "*/*", ";;;", "/", "a/b/c"]),
    st.text(LATIN1, max_size=80),
)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=15,
)
# Objects that the views' serializers accept, often enough to reach replays.
PLAUSIBLE_OBJECTS = st.fixed_dictionaries(
    {},
    optional={
        "amount": st.one_of(st.integers(1, 1000), st.integers(), st.text(max_size=5)),
        "name": st.text(max_size=120),
        "product": st.text(max_size=120),
        "quantity": st.integers(-5, 10**12),
        "description": st.text(max_size=220),
        "allowed": st.booleans(),
    },
)


def dump_json(value: Any, ensure_ascii: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


JSON_BODIES = st.one_of(
    st.builds(dump_json, st.one_of(PLAUSIBLE_OBJECTS, JSON_VALUES), st.booleans()),
    # Invalid UTF-8, truncated documents, byte order marks, stray bytes.
    st.builds(
        lambda head, junk: b'{"amount": "' + head + junk + b'"}',
        st.binary(max_size=20),
        st.sampled_from([b"\xff", b"\xfe", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\x00"]),
    ),
    st.builds(
        lambda doc, cut: doc[:cut], st.just(b'{"amount": [1, {"a": "b"}]}'), st.integers(0, 25)
    ),
    # Not 1e999999: it parses as infinity, which the echoing test views then
    # fail to render, with or without the package.
    st.sampled_from([b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"NaN", b"-Infinity", b"1e99"]),
    # Nested (past the recursion limit: test_deeply_nested_json), and
    # integers past the parser's digit limit.
    st.builds(lambda depth: b"[" * depth + b"]" * depth, st.integers(1, 400)),
    st.builds(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth, st.integers(1, 400)),
    st.builds(lambda digits: b"1" * digits, st.integers(1, 10_000)),
)
FORM_BODIES = st.one_of(
    st.builds(
        lambda fields: urlencode(fields).encode(),
        st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=8),
    ),
    st.builds(lambda fields: urlencode(fields).encode(), PLAUSIBLE_OBJECTS),
    st.binary(max_size=300),
    st.builds(lambda count: b"&".join([b"a=1"] * count), st.integers(900, 1_200)),
)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> bytes:
    """A multipart body, valid or broken along the way."""
    chunks = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.text(LATIN1, max_size=12))
        header = f'Content-Disposition: form-data; name="{name}"'
        if draw(st.booleans()):
            # /function/ echoes request.data, and DRF renders a file by
            # decoding its lines as UTF-8: binary files would break the echo,
            # not the package. Fields may be any bytes.
            header += f'; filename="{draw(st.text(LATIN1, max_size=12))}"'
            value = draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
            header += "\r\nContent-Type: " + draw(st.sampled_from(["text/plain", "x", ""]))
        else:
            value = draw(st.binary(max_size=200))
        chunks.append(f"--{BOUNDARY}\r\n{header}\r\n\r\n".encode("latin-1") + value + b"\r\n")
    ending = draw(
        st.sampled_from([f"--{BOUNDARY}--\r\n".encode(), b"", b"--", f"--{BOUNDARY}".encode()])
    )
    body = b"".join(chunks) + ending
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.binary(max_size=30))
    return body


def huge_json(size: int) -> bytes:
    return b'{"amount": 1, "description": "' + b"x" * size + b'"}'


def huge_form(size: int) -> bytes:
    return b"amount=1&description=" + b"x" * size


def huge_multipart(size: int) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="amount"\r\n\r\n'.encode()
        + b"y" * size
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


# Bodies past Django's limit. Bodies between MAX_RESPONSE_BYTES (1 MiB) and
# that limit are left out: the test views echo what they parsed, and a
# response over MAX_RESPONSE_BYTES is a documented 500 (see the module
# docstring), not a reaction to the request.
HUGE_SIZES = st.integers(DATA_UPLOAD_MAX_MEMORY_SIZE + 1, DATA_UPLOAD_MAX_MEMORY_SIZE + 200_000)
PAYLOADS = st.one_of(
    st.tuples(JSON_CONTENT_TYPES, JSON_BODIES),
    st.tuples(FORM_CONTENT_TYPES, FORM_BODIES),
    st.tuples(MULTIPART_CONTENT_TYPES, multipart_bodies()),
    st.tuples(CONTENT_TYPES, st.one_of(st.just(b""), st.binary(max_size=2_000))),
    st.tuples(CONTENT_TYPES, st.text(max_size=300).map(str.encode)),
    st.tuples(JSON_CONTENT_TYPES, HUGE_SIZES.map(huge_json)),
    st.tuples(FORM_CONTENT_TYPES, HUGE_SIZES.map(huge_form)),
    st.tuples(
        st.just(f"multipart/form-data; boundary={BOUNDARY}"), HUGE_SIZES.map(huge_multipart)
    ),
    st.tuples(CONTENT_TYPES, repeated(["\x00", "x", "{"], 1, 100_000).map(str.encode)),
    st.tuples(CONTENT_TYPES, HUGE_SIZES.map(b"x".__mul__)),
)

# Query strings as a WSGI server passes them: raw Latin-1. Names the test
# views act on (?raise=, ?status=, ...) are left out: those break the view on
# purpose.
VIEW_PARAMETERS = ("raise", "stream", "size", "status", "gate", "barrier")
QUERY_STRINGS = st.one_of(
    st.just(""),
    st.text(LATIN1, max_size=60),
    st.builds(urlencode, st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4)),
).filter(lambda query: not any(name in query.lower() for name in VIEW_PARAMETERS))

METHODS = st.one_of(
    st.sampled_from(
        [*UNSAFE, "GET", "HEAD", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "post", "Patch"]
    ),
    st.text(LATIN1, min_size=1, max_size=20),
)


def endpoint_and_method(
    other_methods: st.SearchStrategy[str],
) -> st.SearchStrategy[tuple[Endpoint, str]]:
    """An endpoint, with one of the methods it guards most of the time."""

    def methods(endpoint: Endpoint) -> st.SearchStrategy[str]:
        guarded = st.sampled_from(sorted(endpoint.protected))
        return st.one_of(guarded, guarded, guarded, other_methods)

    return st.sampled_from(ENDPOINTS).flatmap(
        lambda endpoint: st.tuples(st.just(endpoint), methods(endpoint))
    )


# Mostly absent: a refusal in content negotiation (406) comes before the package.
ACCEPT = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.sampled_from(["application/json", "*/*", "text/html", "application/problem+json"]),
    HEADER_VALUES,
)
# A Content-Length that is not a number is test_a_content_length_that_is_not_a_number's.
CONTENT_LENGTHS = st.sampled_from(["exact", "absent", "", "-1", "0", "short", "long"])


# Helpers ----------------------------------------------------------------


@contextmanager
def rolled_back() -> Iterator[None]:
    """Run one example in a savepoint and undo everything it wrote."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def state() -> tuple[int, int]:
    """(records, effects): the key table, and every row a handler may write."""
    effects = sum(model.objects.count() for model in (Execution, Item, Wallet, Charge, Order))
    return IdempotencyKey.objects.count(), effects


def request(
    method: str,
    path: str,
    key: str | None,
    content_type: str | None,
    body: bytes,
    *,
    query: str = "",
    content_length: str = "exact",
    headers: dict[str, str] | None = None,
    raise_request_exception: bool = True,
) -> Callable[[], HttpResponse]:
    """Sends the same request, built as a raw WSGI environ, each time it is
    called: through a fresh client (no cookie from one request reaches the
    next) and with a fresh input stream."""
    length = {
        "exact": str(len(body)),
        "short": str(len(body) // 2),
        "long": str(len(body) + 100),
    }.get(content_length, content_length)

    def send() -> HttpResponse:
        environ: dict[str, Any] = {
            **(headers or {}),
            "REQUEST_METHOD": method,
            "QUERY_STRING": query,
            "wsgi.input": BytesIO(body),
            "HTTP_AUTHORIZATION": BASIC_AUTH,
        }
        if content_type is not None:
            environ["CONTENT_TYPE"] = content_type
        if content_length != "absent":
            environ["CONTENT_LENGTH"] = length
        if key is not None:
            environ["HTTP_IDEMPOTENCY_KEY"] = key
        client = Client(raise_request_exception=raise_request_exception)
        return client.generic(method, path, **environ)

    return send


BASIC_AUTH = "Basic " + base64.b64encode(b"alice:pw").decode()


def is_problem(response: HttpResponse) -> bool:
    return response.get("Content-Type") == PROBLEM_CONTENT_TYPE


def assert_problem_document(response: HttpResponse) -> dict[str, Any]:
    document = json.loads(response.content)
    assert set(document) == {"type", "title", "status", "detail"}, document
    assert document["type"].startswith(TYPE_PREFIX)
    assert document["status"] == response.status_code
    assert isinstance(document["title"], str)
    assert document["title"]
    assert isinstance(document["detail"], str)
    return document


def check(
    response: HttpResponse,
    before: tuple[int, int],
    *,
    guarded: bool,
    resend: Callable[[], HttpResponse],
) -> None:
    """The properties every request must have.

    ``guarded``: the package protects this request (a method it guards on a
    view that requires a key, or that got one). A guarded request that is
    refused must leave nothing behind, and one that succeeds exactly one
    record, which a retry replays. Any other request must leave no record;
    its view may run unprotected and keep its effects.
    """
    status = response.status_code
    # Shown by --hypothesis-show-statistics: what the examples reached.
    event("replayed" if guarded and 200 <= status < 300 else f"{status} guarded={guarded}")
    assert status < 500, response.content[:500]
    assert "Idempotent-Replayed" not in response
    after = state()
    if is_problem(response):
        assert 400 <= status < 500
        event(assert_problem_document(response)["type"])
    if not guarded:
        assert after[0] == before[0]
        return
    if 400 <= status < 500:
        # Refused, by the package or by the view: nothing stored, nothing done.
        assert after == before, (status, response.content[:300])
        return
    assert 200 <= status < 300, status
    assert after[0] == before[0] + 1
    retry = resend()
    assert retry.status_code == status
    assert retry.content == response.content
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.get("Content-Type") == response.get("Content-Type")
    assert state() == after  # the handler did not run again


@pytest.fixture
def alice(user):
    # The example wallet charges from a balance: give it one, so that a valid
    # charge succeeds (and is replayed) instead of answering 402.
    Wallet.objects.create(user=user, balance=10**9)
    return user


# Tests ------------------------------------------------------------------


def key_must_be_refused(raw: str) -> bool:
    """Empty, or a character outside visible ASCII once the optional white
    space around it is gone; when not quoted, too long, a list (a comma) or
    parameters (a semicolon)."""
    value = raw.strip(" \t")
    if not value or any(not "!" <= char <= "~" for char in value):
        return True
    return not value.startswith('"') and (len(value) > 255 or "," in value or ";" in value)


def key_must_be_accepted(raw: str) -> bool:
    value = raw.strip(" \t")
    return 0 < len(value) <= 255 and not value.startswith('"') and not key_must_be_refused(raw)


@bounded(150)
@given(
    key=KEYS,
    headers=MANY_HEADERS,
    endpoint=st.sampled_from([FUNCTION, GENERIC_ITEMS, EXAMPLE_CHARGES]),
)
def test_any_key_header_value(alice, key, headers, endpoint):
    send = request("POST", endpoint.path, key, "application/json", endpoint.body, headers=headers)
    with rolled_back():
        before = state()
        response = send()
        if key_must_be_refused(key):
            assert response.status_code == 400
            assert json.loads(response.content)["type"] == TYPE_PREFIX + "key-malformed"
        elif key_must_be_accepted(key):
            assert response.status_code == 201, response.content[:300]
            assert IdempotencyKey.objects.get().key == key.strip(" \t")
        check(response, before, guarded=True, resend=send)


@bounded(30)
@given(
    key=st.text(VISIBLE_ASCII, min_size=1, max_size=253).filter(
        lambda k: k[0] != '"' and "," not in k and ";" not in k
    )
)
def test_the_quoted_key_is_the_bare_key(alice, key):
    # A bare value that starts with a double quote is read as the quoted
    # form; a bare comma makes a list and a bare semicolon parameters (the
    # quoted form may hold either).
    with rolled_back():
        first = request("POST", FUNCTION.path, quoted(key), "application/json", b"{}")()
        assert first.status_code == 201
        assert IdempotencyKey.objects.get().key == key
        bare = request("POST", FUNCTION.path, key, "application/json", b"{}")()
        assert bare["Idempotent-Replayed"] == "true"
        assert bare.content == first.content


@bounded(250)
@given(
    # Methods a view does not allow are test_any_wsgi_environ's.
    target=endpoint_and_method(st.nothing()),
    payload=PAYLOADS,
    key=st.uuids().map(str),
)
def test_any_body_and_content_type(alice, target, payload, key):
    endpoint, method = target
    content_type, body = payload
    send = request(method, endpoint.path, key, content_type, body)
    with rolled_back():
        before = state()
        response = send()
        if is_problem(response):
            document = assert_problem_document(response)
            if document["type"] == TYPE_PREFIX + "response-too-large":
                # The documented 500 (docs/http.rst): a view whose
                # fingerprint ignores the body, under a DRF that reads JSON past
                # Django's limit (3.15), echoed a body larger than
                # MAX_RESPONSE_BYTES. Nothing may be left behind.
                assert len(body) > idempotency_settings.MAX_RESPONSE_BYTES
                assert state() == before
                return
            # A fresh, valid key: only the body can be at fault.
            assert document["type"] in (
                TYPE_PREFIX + "body-malformed",
                TYPE_PREFIX + "body-too-large",
            )
        check(response, before, guarded=method in endpoint.protected, resend=send)


@bounded(200)
@given(
    target=endpoint_and_method(METHODS),
    key=st.one_of(st.none(), st.uuids().map(str), KEYS),
    content_type=st.one_of(st.none(), st.just("application/json"), CONTENT_TYPES),
    body=st.one_of(st.binary(max_size=500), st.sampled_from([e.body for e in ENDPOINTS])),
    content_length=CONTENT_LENGTHS,
    query=QUERY_STRINGS,
    accept=ACCEPT,
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=60),
)
def test_any_wsgi_environ(
    alice, target, key, content_type, body, content_length, query, accept, headers
):
    endpoint, method = target
    if accept is not None:
        headers = {**headers, "HTTP_ACCEPT": accept}
    send = request(
        method,
        endpoint.path,
        key,
        content_type,
        body,
        query=query,
        content_length=content_length,
        headers=headers,
    )
    with rolled_back():
        before = state()
        response = send()
        guarded = method.upper() in endpoint.protected and (key is not None or endpoint.required)
        if method.upper() not in UNSAFE:
            assert not is_problem(response), "the package acted on a safe or unknown method"
        check(response, before, guarded=guarded, resend=send)


@bounded(20)
@given(
    depth=st.integers(1, 100_000),
    closed=st.booleans(),
    content_type=st.sampled_from(["application/json", "application/vnd.api+json"]),
)
def test_deeply_nested_json(alice, depth, closed, content_type):
    """JSON nested past the recursion limit, where the package canonicalises
    JSON bodies. The view takes the body as a file: DRF's own JSON parser lets
    RecursionError escape (a 500 with or without the package), so a view that
    parses JSON would not tell the package's share apart."""
    body = b"[" * depth + (b"]" * depth if closed else b"")
    send = request("PUT", "/upload/a.bin", new_key(), content_type, body)
    with rolled_back():
        before = state()
        response = send()
        assert response.status_code == 201
        check(response, before, guarded=True, resend=send)


@pytest.mark.parametrize("content_length", ["abc", "1e9"])
def test_a_content_length_that_is_not_a_number(alice, content_length):
    def send(path, key):
        return request(
            "POST", path, key, "application/json", b"{}", content_length=content_length
        )()

    # Without a key this view runs unprotected: DRF reads the body as empty.
    assert send("/optional/", None).status_code == 201
    before = state()
    response = send(FUNCTION.path, new_key())
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert json.loads(response.content)["detail"] == (
        "The request body could not be read: Content-Length is not a number."
    )
    assert state() == before
