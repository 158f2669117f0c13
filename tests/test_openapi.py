"""OpenAPI with drf-spectacular (idempotency.openapi): protected operations
document the key header, the replay header and the problem responses, and
nothing else changes. The example project's schema is generated, validated
with openapi-spec-validator, and fuzzed with schemathesis against the
example served by gunicorn."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core import checks
from django.test import override_settings
from django.urls import path
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import validate
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import api_view
from rest_framework.response import Response
from rest_framework.views import APIView

from idempotency.checks import check_openapi
from idempotency.decorators import idempotent
from idempotency.keys import InvalidKey, parse_key
from idempotency.mixins import IdempotentMixin
from idempotency.openapi import KEY_PATTERN, IdempotencySchemaMixin
from tests import servers
from tests.testapp.models import Execution

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = "application/problem+json"
PROBLEM_STATUSES = {"400", "409", "413", "422", "503"}


class ExecutionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Execution
        fields = ["id", "key"]


@extend_schema(
    request=ExecutionSerializer,
    responses={201: ExecutionSerializer, 400: OpenApiResponse(description="Invalid fields.")},
)
@api_view(["POST", "PUT"])
@idempotent(methods=["POST"])
def function_view(request):
    """Create one."""
    return Response(status=201)


class OptionalView(IdempotentMixin, APIView):
    idempotency_required = False
    idempotency_ttl = timedelta(hours=6)

    @extend_schema(request=ExecutionSerializer, responses={200: ExecutionSerializer})
    def post(self, request):
        return Response()

    @extend_schema(responses={200: ExecutionSerializer})
    def get(self, request):
        return Response()


class UndocumentedViewSet(IdempotentMixin, viewsets.ModelViewSet):
    serializer_class = ExecutionSerializer
    queryset = Execution.objects.none()


class RedisView(APIView):
    @extend_schema(request=ExecutionSerializer, responses={201: ExecutionSerializer, 500: None})
    @idempotent(backend="redis")
    def post(self, request):
        return Response(status=201)


class OwnHeaderView(IdempotentMixin, APIView):
    @extend_schema(
        request=ExecutionSerializer,
        responses={201: ExecutionSerializer},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key", location=OpenApiParameter.HEADER, description="Ours."
            )
        ],
    )
    def post(self, request):
        return Response(status=201)

    @extend_schema(
        request=ExecutionSerializer,
        responses={204: None},
        parameters=[
            OpenApiParameter("Idempotency-Key", location=OpenApiParameter.HEADER, exclude=True)
        ],
    )
    def delete(self, request):
        return Response(status=204)


class UpdateOnlyViewSet(mixins.UpdateModelMixin, viewsets.GenericViewSet):
    serializer_class = ExecutionSerializer
    queryset = Execution.objects.none()

    @idempotent
    def update(self, request, *args, **kwargs):
        return super().update(request, *args, **kwargs)


class ObjectOptionsView(IdempotentMixin, APIView):
    """Options chosen by the object the URL names."""

    def get_idempotency_options(self):
        Execution.objects.get(pk=self.kwargs["pk"])  # no URL arguments in the schema's view
        return super().get_idempotency_options()

    @extend_schema(request=ExecutionSerializer, responses={201: ExecutionSerializer})
    def post(self, request, pk):
        return Response(status=201)


class ProblemSerializer(serializers.Serializer):
    title = serializers.CharField()


class OwnProblemsView(IdempotentMixin, APIView):
    @extend_schema(
        request=ExecutionSerializer,
        responses={
            201: ExecutionSerializer,
            (400, "application/problem+json"): OpenApiResponse(ProblemSerializer),
        },
    )
    def post(self, request):
        return Response(status=201)


@extend_schema(exclude=True)
@api_view(["POST"])
@idempotent
def hidden_view(request):
    return Response(status=201)


PATTERNS = [
    path("function/", function_view),
    path(
        "update-only/<int:pk>/",
        UpdateOnlyViewSet.as_view({"put": "update", "patch": "partial_update"}),
    ),
    path("object-options/<int:pk>/", ObjectOptionsView.as_view()),
    path("own-problems/", OwnProblemsView.as_view()),
    path("hidden/", hidden_view),
    path("optional/", OptionalView.as_view()),
    path("redis/", RedisView.as_view()),
    path("own-header/", OwnHeaderView.as_view()),
    path("undocumented/", UndocumentedViewSet.as_view({"get": "list", "post": "create"})),
    path(
        "undocumented/<int:pk>/",
        UndocumentedViewSet.as_view({"get": "retrieve", "delete": "destroy"}),
    ),
]


class CustomSchema(IdempotencySchemaMixin, SpectacularAutoSchema):
    """A project's own schema class, with the mixin first."""


def schema_of(schema_class: str = "idempotency.openapi.AutoSchema") -> dict[str, Any]:
    rest_framework = {**django_settings.REST_FRAMEWORK, "DEFAULT_SCHEMA_CLASS": schema_class}
    with override_settings(REST_FRAMEWORK=rest_framework):
        schema = SchemaGenerator(patterns=PATTERNS).get_schema(request=None, public=True)
    # As it is served: plain JSON, which the validator reads.
    document = json.loads(json.dumps(schema, default=str))
    validate(document)
    return document


def key_header(operation: dict[str, Any]) -> dict[str, Any] | None:
    found = [
        parameter
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "header" and parameter["name"] == "Idempotency-Key"
    ]
    assert len(found) <= 1
    return found[0] if found else None


def problem_types(response: dict[str, Any]) -> set[str]:
    examples = response["content"][PROBLEM]["examples"]
    return {example["value"]["type"].rsplit(":", 1)[1] for example in examples.values()}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return schema_of()


def test_a_protected_operation_documents_the_header_and_every_problem(schema):
    operation = schema["paths"]["/function/"]["post"]
    header = key_header(operation)
    assert header is not None
    assert header["required"] is True
    assert header["schema"]["pattern"] == KEY_PATTERN
    assert "kept for 1 day after its request completes" in header["description"]
    responses = operation["responses"]
    assert list(responses) == ["201", "400", "409", "413", "422", "503"]
    for status in PROBLEM_STATUSES:
        content = responses[status]["content"][PROBLEM]
        assert content["schema"] == {"$ref": "#/components/schemas/IdempotencyProblem"}
        for example in content["examples"].values():
            assert example["value"]["status"] == int(status)
    assert problem_types(responses["400"]) == {
        "key-missing",
        "key-malformed",
        "scope-missing",
        "body-malformed",
    }
    # The view's own 400 and the package's, side by side.
    assert responses["400"]["description"].startswith("Invalid fields. Or: The Idempotency-Key")
    assert problem_types(responses["409"]) == {"in-flight", "transaction-conflict"}
    assert problem_types(responses["413"]) == {"body-too-large"}
    assert problem_types(responses["422"]) == {"key-reused"}
    assert problem_types(responses["503"]) == {"database-unavailable"}
    for status in ("409", "503"):
        assert responses[status]["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert "Retry-After" not in responses["422"].get("headers", {})
    assert responses["201"]["headers"]["Idempotent-Replayed"]["schema"]["enum"] == ["true"]
    assert "Idempotent-Replayed" not in responses["409"].get("headers", {})
    problem = schema["components"]["schemas"]["IdempotencyProblem"]
    assert problem["required"] == ["type", "title", "status", "detail"]


def test_only_the_protected_methods_are_documented(schema):
    # @idempotent(methods=["POST"]) on a view that also takes PUT.
    put = schema["paths"]["/function/"]["put"]
    assert key_header(put) is None
    assert set(put["responses"]) == {"201", "400"}
    assert put["responses"]["400"] == {"description": "Invalid fields."}
    assert "Idempotent-Replayed" not in json.dumps(put)
    # Safe methods of a protected class.
    for operation in (
        schema["paths"]["/optional/"]["get"],
        schema["paths"]["/undocumented/"]["get"],
        schema["paths"]["/undocumented/{id}/"]["get"],
    ):
        assert key_header(operation) is None
        assert set(operation["responses"]) == {"200"}
    assert key_header(schema["paths"]["/undocumented/{id}/"]["delete"])["required"] is True


def test_the_mixin_describes_no_operation():
    """drf-spectacular takes a view's description from the first docstring in
    its MRO: the mixin has none to lend a view without its own."""
    assert IdempotentMixin.__doc__ is None
    schema = schema_of()
    for operation in schema["paths"]["/undocumented/"].values():
        assert "description" not in operation
    assert schema["paths"]["/function/"]["post"]["description"] == "Create one."


def test_an_optional_key_is_documented_as_optional(schema):
    operation = schema["paths"]["/optional/"]["post"]
    header = key_header(operation)
    assert "required" not in header  # OpenAPI's default: optional
    assert "Optional: a request without it runs unprotected" in header["description"]
    assert "kept for 6 hours after" in header["description"]
    assert "key-missing" not in problem_types(operation["responses"]["400"])


def test_a_redis_view_documents_its_own_outage_and_no_replayed_500(schema):
    responses = schema["paths"]["/redis/"]["post"]["responses"]
    assert problem_types(responses["503"]) == {"redis-unavailable"}
    assert problem_types(responses["409"]) == {"in-flight"}
    assert "headers" not in responses["500"]  # a 500 is never stored...
    with override_settings(IDEMPOTENCY={"STORE_SERVER_ERRORS": True}):
        stored = schema_of()["paths"]["/redis/"]["post"]["responses"]
    assert "Idempotent-Replayed" in stored["500"]["headers"]  # ...unless it is


def test_the_projects_own_header_declaration_wins(schema):
    operations = schema["paths"]["/own-header/"]
    assert key_header(operations["post"])["description"] == "Ours."
    assert set(operations["post"]["responses"]) >= PROBLEM_STATUSES
    assert key_header(operations["delete"]) is None


def test_a_wait_is_documented():
    assert (
        "a retry while it runs gets 409"
        in key_header(schema_of()["paths"]["/function/"]["post"])["description"]
    )
    with override_settings(IDEMPOTENCY={"WAIT": 5}):
        header = key_header(schema_of()["paths"]["/function/"]["post"])
    assert "waits up to 5 seconds for its response, and gets 409 if" in header["description"]


def test_the_header_setting_names_the_parameter():
    with override_settings(IDEMPOTENCY={"HEADER": "X-Request-Key"}):
        operation = schema_of()["paths"]["/function/"]["post"]
    names = [parameter["name"] for parameter in operation["parameters"]]
    assert names == ["X-Request-Key"]
    assert "X-Request-Key" in operation["responses"]["422"]["description"]


def test_patch_is_protected_by_update_s_decorator(schema):
    """DRF's partial_update() calls update(), and so runs under its protection."""
    operations = schema["paths"]["/update-only/{id}/"]
    assert key_header(operations["put"])["required"] is True
    assert key_header(operations["patch"])["required"] is True
    assert set(operations["patch"]["responses"]) >= PROBLEM_STATUSES


def test_options_that_need_the_url_fall_back_to_the_class(schema):
    assert key_header(schema["paths"]["/object-options/{id}/"]["post"])["required"] is True


def test_a_projects_own_problem_documents_stay(schema):
    content = schema["paths"]["/own-problems/"]["post"]["responses"]["400"]["content"]
    assert set(content) == {PROBLEM}
    assert content[PROBLEM]["schema"] == {
        "oneOf": [
            {"$ref": "#/components/schemas/Problem"},
            {"$ref": "#/components/schemas/IdempotencyProblem"},
        ]
    }
    assert "key-missing" in content[PROBLEM]["examples"]


def test_an_excluded_operation_stays_out(schema):
    assert "/hidden/" not in schema["paths"]


def test_responses_the_project_keeps_elsewhere_or_by_range():
    from idempotency.openapi import responses

    class Registry:
        def register_on_missing(self, component):
            self.component = component

    documented = {
        "default": {"description": "Anything."},
        "2XX": {"description": "Done."},
        "5XX": {"description": "Failed."},
        "422": {"$ref": "#/components/responses/Mine"},
    }
    registry = Registry()
    answered = responses(documented, UndocumentedViewSet._idempotency_options, registry)
    assert list(answered) == ["2XX", "400", "409", "413", "422", "503", "5XX", "default"]
    assert answered["422"] == {"$ref": "#/components/responses/Mine"}  # left alone
    assert "Idempotent-Replayed" in answered["default"]["headers"]
    assert "Idempotent-Replayed" in answered["2XX"]["headers"]
    assert "headers" not in answered["5XX"]
    assert registry.component.name == "IdempotencyProblem"


@pytest.mark.parametrize(
    ("ttl", "words"),
    [
        (timedelta(days=2), "2 days"),
        (timedelta(hours=1), "1 hour"),
        (timedelta(minutes=90), "90 minutes"),
        (timedelta(seconds=61), "61 seconds"),
        (timedelta(seconds=1), "1 second"),
    ],
)
def test_the_ttl_in_words(ttl, words):
    from idempotency.openapi import key_parameter
    from idempotency.options import Options

    parameter = key_parameter(Options(ttl=ttl))
    assert f"kept for {words} after its request completes" in parameter.description


def test_a_project_schema_class_with_the_mixin_documents_the_same(schema):
    assert schema_of(f"{__name__}.CustomSchema") == schema


def test_drf_spectacular_alone_documents_nothing_of_this():
    operation = schema_of("drf_spectacular.openapi.AutoSchema")["paths"]["/undocumented/"]["post"]
    assert "Idempotency" not in json.dumps(operation)


@given(
    st.text(
        alphabet=st.sampled_from(
            [chr(code) for code in range(0x20, 0x7F)] + ["\t", "\u00e9", "\\", '"', ",", ";"]
        ),
        max_size=260,
    ).flatmap(
        lambda text: st.sampled_from(
            [text, f'"{text}"', f" {text}\t", text.replace("\\", '"'), "k" * 255 + text]
        )
    )
)
def test_the_documented_pattern_accepts_exactly_the_keys_the_server_accepts(raw):
    try:
        parse_key(raw)
        accepted = True
    except InvalidKey:
        accepted = False
    # The value of a header has no spaces or tabs around it (RFC 9110).
    assert bool(re.match(KEY_PATTERN, raw.strip(" \t"))) is accepted


@pytest.mark.parametrize(
    ("schema_class", "warned"),
    [
        ("drf_spectacular.openapi.AutoSchema", True),
        ("idempotency.openapi.AutoSchema", False),
        (f"{__name__}.CustomSchema", False),
        ("rest_framework.schemas.openapi.AutoSchema", False),
    ],
)
def test_a_schema_class_that_leaves_protection_out_is_reported(schema_class, warned):
    rest_framework = {**django_settings.REST_FRAMEWORK, "DEFAULT_SCHEMA_CLASS": schema_class}
    with override_settings(
        INSTALLED_APPS=[*django_settings.INSTALLED_APPS, "drf_spectacular"],
        REST_FRAMEWORK=rest_framework,
    ):
        messages = check_openapi()
    assert [message.id for message in messages] == (["idempotency.W005"] if warned else [])
    if warned:
        assert isinstance(messages[0], checks.Warning)
        assert "idempotency.openapi.AutoSchema" in messages[0].hint


def test_without_drf_spectacular_installed_nothing_is_checked():
    rest_framework = {
        **django_settings.REST_FRAMEWORK,
        "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    }
    with override_settings(REST_FRAMEWORK=rest_framework):
        assert check_openapi() == []


def example_schema(directory: Path) -> dict[str, Any]:
    """The example project's schema, as ``manage.py spectacular`` writes it,
    failing on any warning."""
    output = directory / "schema.json"
    subprocess.run(
        [
            sys.executable,
            "manage.py",
            "spectacular",
            "--validate",
            "--fail-on-warn",
            "--format=openapi-json",
            f"--file={output}",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": f"sqlite:///{directory / 'unused.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "example_project.settings",
        },
        check=True,
        timeout=120,
    )
    return json.loads(output.read_text())


def test_the_example_projects_schema(tmp_path):
    schema = example_schema(tmp_path)
    validate(schema)
    protected = {
        ("/api/charges/", "post"),
        ("/api/charges/wait/", "post"),
        ("/api/orders/", "post"),
        ("/api/orders/{id}/", "put"),
        ("/api/orders/{id}/", "patch"),
        ("/api/orders/{id}/", "delete"),
    }
    seen = set()
    for route, operations in schema["paths"].items():
        for method, operation in operations.items():
            seen.add((route, method))
            header = key_header(operation)
            if (route, method) in protected:
                assert header is not None
                assert header["required"] is True
                assert set(operation["responses"]) >= PROBLEM_STATUSES, (route, method)
            else:
                assert header is None, (route, method)
                assert not PROBLEM_STATUSES & set(operation["responses"]), (route, method)
    assert protected < seen
    charge = schema["paths"]["/api/charges/"]["post"]["responses"]
    # The view's own 400 (invalid fields) and the package's, side by side.
    assert set(charge["400"]["content"]) == {"application/json", PROBLEM}
    assert "Idempotent-Replayed" in charge["402"]["headers"]


def test_schemathesis_finds_the_example_as_its_schema_says(tmp_path):
    """Fuzzed by schemathesis (bounded, seeded: tests/schemathesis.toml), every
    answer of the example project matches its schema: statuses, content
    types, problem documents and headers, and a key is refused as malformed
    exactly when the documented pattern does not admit it."""
    tally = tmp_path / "tally.txt"
    with servers.example_project(tmp_path, settings="tests.example_settings") as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file=tests/schemathesis.toml",
                "run",
                f"http://{servers.HOST}:{server.port}/api/schema/",
                "--auth=demo:demo",
                "--workers=1",
                "--no-color",
                # A longer run (docs/development.rst): more examples, more phases.
                *shlex.split(os.environ.get("SCHEMATHESIS_ARGS", "")),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_TALLY": str(tally)},
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    met = {line.split()[1] for line in tally.read_text().splitlines()}
    statuses = {line.split()[0] for line in tally.read_text().splitlines()}
    prefix = "tag:django-idempotency,2026:"
    # The run reached the handlers and the package's own answers.
    assert {"200", "201", "400"} <= statuses
    assert {prefix + "key-malformed", prefix + "key-missing"} <= met
