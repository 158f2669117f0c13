"""Idempotency-Key support for Django REST framework.

Public API: ``idempotency.decorators.idempotent``,
``idempotency.mixins.IdempotentMixin``, ``idempotency.models.IdempotencyKey``
and the ``purge_idempotency_keys`` management command.
"""

__version__ = "0.1.0"
