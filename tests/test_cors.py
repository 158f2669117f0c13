"""The example project, served by gunicorn, takes a cross-origin call as a
browser makes one: a preflight request that asks to send the key, then the
call, whose replay header the page may read. The settings are the README's
("CORS")."""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator

import pytest

from tests import servers
from tests.helpers import new_key

PAGE = "http://localhost:8001"  # an origin the example project allows
DEMO = "Basic " + base64.b64encode(b"demo:demo").decode()


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Iterator[servers.Server]:
    with servers.example_project(tmp_path_factory.mktemp("cors")) as server:
        yield server


def call(
    server: servers.Server, method: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(servers.HOST, server.port, timeout=20)
    try:
        connection.request(method, "/api/charges/", body=body or None, headers=headers)
        response = connection.getresponse()
        answer = {name.lower(): value for name, value in response.getheaders()}
        return response.status, answer, response.read()
    finally:
        connection.close()


def listed(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",")}


def test_the_preflight_allows_the_key_from_an_allowed_origin(example):
    status, headers, _ = call(
        example,
        "OPTIONS",
        {
            "Origin": PAGE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == PAGE
    assert {"idempotency-key", "authorization", "content-type"} <= listed(
        headers["access-control-allow-headers"]
    )
    assert "post" in listed(headers["access-control-allow-methods"])


def test_another_origin_gets_no_permission(example):
    _, headers, _ = call(
        example,
        "OPTIONS",
        {
            "Origin": "http://elsewhere.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "idempotency-key",
        },
    )
    assert "access-control-allow-origin" not in headers


def test_the_page_can_read_whether_an_answer_is_a_replay(example):
    request = {
        "Origin": PAGE,
        "Authorization": DEMO,
        "Content-Type": "application/json",
        "Idempotency-Key": new_key(),
    }
    body = b'{"amount": 1}'
    first = call(example, "POST", request, body)
    again = call(example, "POST", request, body)
    for status, headers, _ in (first, again):
        assert status == 201
        assert headers["access-control-allow-origin"] == PAGE
        assert {"idempotent-replayed", "retry-after"} <= listed(
            headers["access-control-expose-headers"]
        )
    assert "idempotent-replayed" not in first[1]
    assert again[1]["idempotent-replayed"] == "true"
    assert again[2] == first[2]
