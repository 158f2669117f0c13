"""The request fingerprint: what makes a retry "the same request" (CONTRACT section 4)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.http import HttpRequest
from django.http.request import RawPostDataException
from rest_framework.request import Request


def default_fingerprint(request: Request) -> str:
    """SHA-256 over the method, the path with its query string, and the body.

    JSON bodies are hashed in canonical form (sorted keys, no insignificant
    white space), so a client that re-serialises the same payload on retry is
    not refused. Multipart bodies are hashed from their parsed fields and
    file contents, because Django may already have consumed the raw stream
    (the CSRF check reads ``request.POST``) and because reading a large upload
    into memory just to hash it would defeat Django's streaming upload
    handlers.
    """
    django_request: HttpRequest = request._request
    digest = hashlib.sha256()
    digest.update(django_request.method.encode() if django_request.method else b"")
    digest.update(b"\n")
    digest.update(django_request.get_full_path().encode())
    digest.update(b"\n")
    if django_request.content_type == "multipart/form-data":
        _update_with_form(digest, django_request)
        return digest.hexdigest()
    try:
        body = django_request.body
    except RawPostDataException:
        _update_with_form(digest, django_request)
    else:
        digest.update(_canonical_body(django_request.content_type, body))
    return digest.hexdigest()


def _canonical_body(content_type: str | None, body: bytes) -> bytes:
    if not body or not _is_json(content_type):
        return body
    try:
        return json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        # Not valid JSON (or nested too deeply to parse): hash it as it came.
        # The view's parser will refuse it, so nothing gets stored.
        return body


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type == "application/json" or content_type.endswith("+json")


def _update_with_form(digest: Any, request: HttpRequest) -> None:
    for name in sorted(request.POST):
        for value in request.POST.getlist(name):
            digest.update(json.dumps(["field", name, value]).encode())
    for name in sorted(request.FILES):
        for upload in request.FILES.getlist(name):
            content = hashlib.sha256()
            for chunk in upload.chunks():
                content.update(chunk)
            upload.seek(0)
            digest.update(
                json.dumps(["file", name, upload.name, upload.size, content.hexdigest()]).encode()
            )
