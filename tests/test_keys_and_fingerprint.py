"""Units under the protocol: reading the key and fingerprinting the request."""

from __future__ import annotations

import hashlib

import pytest
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from idempotency.fingerprint import default_fingerprint
from idempotency.keys import InvalidKey, is_missing, normalise_scope, parse_key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("abc", "abc"),
        ("  abc\t", "abc"),
        ('"abc"', "abc"),
        ('"a\\"b"', 'a"b'),
        ('"a\\\\b"', "a\\b"),
        ('a"b', 'a"b'),
        ("!~", "!~"),
        ("k" * 255, "k" * 255),
        ('"' + "k" * 255 + '"', "k" * 255),
    ],
)
def test_parse_key(raw, key):
    assert parse_key(raw) == key


@pytest.mark.parametrize(
    "raw",
    [
        "",
        '""',
        "k" * 256,
        '"' + "k" * 256 + '"',
        "a b",
        '"a b"',
        "\u00e9",
        '"a\\',
        '"a\\x"',
        '"a"b"',
    ],
)
def test_parse_key_refuses(raw):
    with pytest.raises(InvalidKey):
        parse_key(raw)


@pytest.mark.parametrize(
    ("scope", "missing"),
    [
        (None, True),
        (False, True),
        ("", True),
        ("  \t", True),
        (b"", True),
        ([], True),
        ({}, True),
        ("auth.user:1", False),
        (0, False),  # a primary key may be 0
        (42, False),
        (b"tenant", False),
        (("tenant", 1), False),
    ],
)
def test_is_missing(scope, missing):
    assert is_missing(scope) is missing


def test_normalise_scope():
    assert normalise_scope(42) == "42"
    assert normalise_scope("s" * 255) == "s" * 255
    long = "s" * 256
    assert normalise_scope(long) == "sha256:" + hashlib.sha256(long.encode()).hexdigest()
    # Characters a database may refuse: NUL (PostgreSQL), a lone surrogate
    # (utf8mb4, and any UTF-8 encoder), other control characters.
    for scope in ["a\x00", "\udcff", "tab\there"]:
        digest = hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()
        assert normalise_scope(scope) == f"sha256:{digest}"
    assert normalise_scope("user:42 caf\u00e9 \U0001f600") == "user:42 caf\u00e9 \U0001f600"
    hash_like = "sha256:" + "0" * 64
    assert normalise_scope(hash_like) == (
        "sha256:" + hashlib.sha256(hash_like.encode()).hexdigest()
    )


@pytest.mark.parametrize("scope", [object(), {"a": 1}, True, b"tenant", 1.5, ["a"]])
def test_normalise_scope_refuses_values_whose_text_may_change(scope):
    with pytest.raises(TypeError):
        normalise_scope(scope)


factory = APIRequestFactory()


def fingerprint(body: bytes, content_type: str = "application/json", path: str = "/x/") -> str:
    return default_fingerprint(
        Request(factory.post(path, body, content_type=content_type), parsers=[JSONParser()])
    )


def expected(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b"\n" + path.encode() + b"\n" + body).hexdigest()


def test_json_is_canonical():
    assert fingerprint(b'{"b": [1, 2], "a": "\\u00e9"}') == fingerprint(
        b'{"a":"\xc3\xa9","b":[1,2]}'
    )
    assert fingerprint(b'{"a": 1}') == expected("POST", "/x/", b'{"a":1}')


def test_json_suffix_types_are_canonical():
    assert fingerprint(b'{"a": 1}', "application/merge-patch+json") == fingerprint(b'{"a":1}')


def test_non_json_is_hashed_as_sent():
    assert fingerprint(b'{"a": 1}', "text/plain") == expected("POST", "/x/", b'{"a": 1}')


@pytest.mark.parametrize(
    "body", [b"[" * 100_000, b'{"a": ', b'"\xff"', b'{"n": 1' + b"0" * 5000 + b"}"]
)
def test_json_that_cannot_be_parsed_is_hashed_as_sent(body):
    assert fingerprint(body) == expected("POST", "/x/", body)


def test_method_path_and_query_count():
    assert fingerprint(b"{}", path="/x/?a=1") != fingerprint(b"{}", path="/x/?a=2")
    assert fingerprint(b"{}", path="/x/") != fingerprint(b"{}", path="/y/")
    put = Request(factory.put("/x/", b"{}", content_type="application/json"))
    assert default_fingerprint(put) != fingerprint(b"{}")


def test_form_bodies_read_after_the_stream_was_consumed():
    django_request = factory.post("/x/", {"a": "1", "b": ["2", "3"]})
    django_request.POST  # noqa: B018 - as the CSRF check does, consuming the stream
    same = factory.post("/x/", {"b": ["2", "3"], "a": "1"})
    assert default_fingerprint(Request(django_request)) == default_fingerprint(Request(same))
    other = factory.post("/x/", {"a": "1", "b": ["3", "2"]})
    assert default_fingerprint(Request(django_request)) != default_fingerprint(Request(other))
