"""A schemathesis check of the key header itself (tests/schemathesis.toml
loads this module): whatever key schemathesis sends, the server refuses it
as malformed exactly when the documented pattern does not admit it.

Schemathesis' own checks of valid and invalid data are off in the
configuration: they judge the example's serializers against what
drf-spectacular can say of them (a blank string after DRF trims it), not
this package. This check is their counterpart for the header it adds.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import schemathesis

MALFORMED = "tag:django-idempotency,2026:key-malformed"
# Answers given before the key is read: authentication, permissions, a
# method the view does not take.
BEFORE_THE_KEY = {401, 403, 405}


@schemathesis.check
def key_refused_exactly_as_documented(ctx: Any, response: Any, case: Any) -> bool | None:
    header = next(
        (
            parameter
            for parameter in case.operation.definition.raw.get("parameters", [])
            if parameter.get("in") == "header"
            and "pattern" in parameter.get("schema", {})
            and parameter["name"].lower() == "idempotency-key"
        ),
        None,
    )
    if header is None:
        return None
    kind = _problem_type(response)
    tally = os.environ.get("SCHEMATHESIS_TALLY")
    if tally:
        # What the run met, for the test that starts it to check.
        with open(tally, "a") as file:
            file.write(f"{response.status_code} {kind or '-'}\n")
    if response.status_code in BEFORE_THE_KEY:
        return None
    sent = next(
        (
            value
            for name, value in (case.headers or {}).items()
            if name.lower() == "idempotency-key"
        ),
        None,
    )
    if sent is None:
        return None
    # A header's value has no spaces or tabs around it (RFC 9110): servers
    # strip them, and the pattern describes what is left.
    admitted = re.search(header["schema"]["pattern"], sent.strip(" \t")) is not None
    refused = response.status_code == 400 and kind == MALFORMED
    if admitted and refused:
        raise AssertionError(f"The key {sent!r} matches the documented pattern, but was refused")
    if not admitted and not refused:
        raise AssertionError(
            f"The key {sent!r} does not match the documented pattern, but got "
            f"{response.status_code} instead of 400 key-malformed"
        )
    return True


def _problem_type(response: Any) -> str | None:
    try:
        return json.loads(response.content).get("type")
    except (ValueError, AttributeError):
        return None
