"""Signals sent as protected requests are answered, for metrics and audit.

Every signal is sent with ``sender`` set to the view's dotted name and these
keyword arguments:

* ``view``: the same dotted name (a ViewSet's action included);
* ``scope``: the request's scope, or ``None`` before it is known;
* ``key_hash``: an HMAC of the key under ``SECRET_KEY``, never the key itself
  (for anonymous clients the key is a bearer secret), or ``None`` if the
  request had none;
* ``status``: the status of the answer (of the handler's own, for
  ``claimed``: ``None``, it has not run yet);
* ``store``: ``"database"``, ``"accelerator"`` or ``"redis"``, or ``None``
  for a key refused before any store was asked.

Receivers run in the request's thread; an exception in one is logged, never
raised into the request. ``claimed`` runs inside the claim's transaction,
before the handler; ``completed`` once the unit of work that stored the
response has ended (under ``ATOMIC_REQUESTS`` the request's own transaction
commits after it).
"""

from django.dispatch import Signal

#: The request claimed its key: the handler runs next.
claimed = Signal()
#: The handler's response is stored: retries will get its replay.
completed = Signal()
#: A stored response was replayed to a retry.
replayed = Signal()
#: 409: the key's first request is still in flight, or a concurrent
#: transaction won.
conflict = Signal()
#: 422: the key came back with another request.
key_reused = Signal()
#: 400: the key was missing or malformed, or the scope named no client.
key_refused = Signal()
