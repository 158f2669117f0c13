"""The request fingerprint: what makes a retry "the same request" (CONTRACT section 4)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.http import HttpRequest
from django.http.request import RawPostDataException
from django.utils.datastructures import MultiValueDict
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
    method = django_request.method or ""
    digest = hashlib.sha256(f"{method}\n{django_request.get_full_path()}\n".encode())
    if django_request.content_type == "multipart/form-data":
        _update_with_form(digest, django_request.POST, django_request.FILES)
        return digest.hexdigest()
    try:
        body = django_request.body
    except RawPostDataException:
        # Something read the stream before the handler: DRF's parser, when a
        # permission class looked at request.data. Hash what it parsed; for
        # JSON that is the same canonical form as below.
        _update_with_parsed(digest, request.data)
    else:
        digest.update(_canonical_body(django_request.content_type or "", body))
    return digest.hexdigest()


def _canonical_body(content_type: str, body: bytes) -> bytes:
    if not body or not (content_type == "application/json" or content_type.endswith("+json")):
        return body
    try:
        return _canonical_json(json.loads(body))
    except (ValueError, RecursionError):
        # Not valid JSON (or nested too deeply to parse): hash it as it came.
        # The view's parser will refuse it, so nothing gets stored.
        return body


def _canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def _update_with_parsed(digest: Any, data: Any) -> None:
    if isinstance(data, MultiValueDict):
        _update_with_form(digest, data, MultiValueDict())
    else:
        digest.update(_canonical_json(data))


def _update_with_form(
    digest: Any, fields: MultiValueDict[str, Any], files: MultiValueDict[str, Any]
) -> None:
    for name in sorted(fields):
        for value in fields.getlist(name):
            digest.update(json.dumps(["field", name, value], default=str).encode())
    for name in sorted(files):
        for upload in files.getlist(name):
            content = hashlib.sha256()
            for chunk in upload.chunks():
                content.update(chunk)
            upload.seek(0)
            digest.update(
                json.dumps(["file", name, upload.name, upload.size, content.hexdigest()]).encode()
            )
