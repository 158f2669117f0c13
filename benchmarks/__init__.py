"""Benchmarks of django-idempotency: run them as ``python -m benchmarks.<name>``
from the repository root (README.rst, "Performance")."""
