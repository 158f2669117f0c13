"""pytest fixtures for projects that use django-idempotency, registered by
the package's ``pytest11`` entry point (with pytest-django):

* ``idempotent_client``: an :class:`~idempotency.testing.IdempotentAPIClient`;
* ``idempotency_keys_optional``: keys optional for the test, as without the
  package. Make it ``autouse`` in a ``conftest.py`` to keep an existing
  suite that posts without keys green while you add keys to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def idempotent_client() -> Any:
    """An IdempotentAPIClient: a new key with each unsafe request, and retry()."""
    from .testing import IdempotentAPIClient

    return IdempotentAPIClient()


@pytest.fixture
def idempotency_keys_optional() -> Iterator[None]:
    """Keys optional for the test, as without the package (autouse it in a
    conftest.py to keep an existing suite green)."""
    from .testing import keys_optional

    with keys_optional():
        yield
