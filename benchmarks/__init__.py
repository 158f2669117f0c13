"""Benchmarks of django-idempotency: run them as ``python -m benchmarks.<name>``
from the repository root (docs/performance.rst)."""
