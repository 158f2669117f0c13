"""The request fingerprint: what makes a retry "the same request"."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest
from django.http.request import RawPostDataException
from django.utils.datastructures import MultiValueDict
from rest_framework.request import Request


def default_fingerprint(request: HttpRequest) -> str:
    """SHA-256 over the method, the path with its query string, and the body.

    JSON bodies are hashed in canonical form (sorted keys, no insignificant
    white space), so a client that re-serialises the same payload on retry is
    not refused. Multipart bodies, and uploads too large for Django to hold in
    memory (``DATA_UPLOAD_MAX_MEMORY_SIZE``), are hashed from what the parsers
    read: fields, and file contents read in chunks, because uploads are
    streamed to disk and the CSRF check may already have consumed the raw
    stream. Any other body over that limit is refused (``RequestDataTooBig``,
    a 413).

    ``request`` is a DRF ``Request`` or, for a plain Django view, Django's.
    """
    django_request: HttpRequest = getattr(request, "_request", request)
    parsed = request if isinstance(request, Request) else None
    method = django_request.method or ""
    digest = hashlib.sha256(f"{method}\n{django_request.get_full_path()}\n".encode())
    if django_request.content_type == "multipart/form-data":
        if parsed is not None:
            # DRF's request.POST, not Django's: Django parses POST requests only.
            _update_with_form(digest, parsed.POST, parsed.FILES)
            return digest.hexdigest()
        if method == "POST":
            if _form_lost(django_request):
                raise RawPostDataException("The form was cut short before it could be read.")
            _update_with_form(digest, django_request.POST, django_request.FILES)
            return digest.hexdigest()
        # Django leaves other methods' multipart bodies unparsed: the bytes.
    try:
        body = django_request.body
    except RawPostDataException:
        # Something read the stream before the handler (DRF's parser, when a
        # permission class looked at request.data): hash what DRF parsed. For
        # JSON that is the same canonical form as below.
        if parsed is None:
            raise
        _update_with_parsed(digest, parsed.data, parsed.FILES)
    except RequestDataTooBig:
        # Too large for Django to hold in memory. Only an upload that DRF
        # streams to disk may pass (files do not count against the limit, as
        # in Django's own forms); any other body DRF would read into memory
        # whatever the limit (DRF 3.15 does, for JSON), so it is refused.
        if parsed is None or not parsed.FILES:
            raise
        _update_with_parsed(digest, parsed.data, parsed.FILES)
    else:
        digest.update(_canonical_body(django_request.content_type or "", body))
    return digest.hexdigest()


def _form_lost(request: HttpRequest) -> bool:
    """Whether a multipart form's stream was consumed by a read that failed
    (the CSRF check reads the form, and swallows a client hanging up midway):
    Django would then give an empty form, which must not be run and stored
    as if the client had sent it."""
    return (
        not hasattr(request, "_post")
        and request._read_started  # type: ignore[attr-defined]
        and not hasattr(request, "_body")
    )


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


def _update_with_parsed(digest: Any, data: Any, files: Mapping[str, Any]) -> None:
    if isinstance(data, MultiValueDict):
        fields = {name: data.getlist(name) for name in data if name not in files}
        _update_with_form(digest, fields, files)
    else:
        digest.update(_canonical_json(data))
        _update_with_form(digest, {}, files)


def _update_with_form(digest: Any, fields: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    """Fields and files, from Django's or DRF's parsers: a ``MultiValueDict``
    or a plain dict (DRF's ``FileUploadParser``) of values or value lists."""
    for name in sorted(fields):
        for value in _values(fields, name):
            digest.update(json.dumps(["field", name, value], default=str).encode())
    for name in sorted(files):
        for upload in _values(files, name):
            content = hashlib.sha256()
            for chunk in upload.chunks():
                content.update(chunk)
            upload.seek(0)
            digest.update(
                json.dumps(["file", name, upload.name, upload.size, content.hexdigest()]).encode()
            )


def _values(mapping: Mapping[str, Any], name: str) -> list[Any]:
    if isinstance(mapping, MultiValueDict):
        return mapping.getlist(name)
    value = mapping[name]
    return value if isinstance(value, list) else [value]
