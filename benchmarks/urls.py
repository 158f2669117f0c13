"""The example project's URLs plus its charge handler without ``@idempotent``,
under ``@idempotent(backend="redis")``, and as an ``async def`` adrf handler
with and without ``@idempotent``."""

from adrf.decorators import api_view as async_api_view
from asgiref.sync import sync_to_async
from django.urls import include, path
from rest_framework.decorators import api_view

from example_project.wallet import views
from idempotency.decorators import OPTIONS_ATTRIBUTE, idempotent

from . import floor


def _handler(view):
    """The function under ``@api_view`` and ``@idempotent``."""
    decorated = view.cls.post.__closure__[0].cell_contents  # DRF's handler closure
    if not hasattr(decorated, OPTIONS_ATTRIBUTE):
        raise RuntimeError(f"{view.__name__} is not an @idempotent handler under @api_view")
    return decorated.__wrapped__


def _undecorated(view):
    """The same handler, the same code, with nothing of this package around it."""
    return api_view(["POST"])(_handler(view))


def _in_redis(view):
    """The same handler with its records in Redis (benchmarks/replay.py)."""
    return api_view(["POST"])(idempotent(backend="redis")(_handler(view)))


def _async(view):
    """The same handler as an ``async def`` one would run its transactional
    work: awaited through ``sync_to_async`` (benchmarks/async_overhead.py)."""
    handler = _handler(view)

    async def charge(request):
        return await sync_to_async(handler)(request)

    return charge


urlpatterns = [
    path("api/floor/charges/", floor.charge, name="charge-floor"),
    path("api/floor/replay/", floor.replay, name="replay-floor"),
    path("api/async/undecorated/charges/", async_api_view(["POST"])(_async(views.charge))),
    path("api/async/charges/", async_api_view(["POST"])(idempotent(_async(views.charge)))),
    path("api/undecorated/charges/", _undecorated(views.charge), name="charge-undecorated"),
    path("api/redis-store/charges/", _in_redis(views.charge), name="charge-redis-store"),
    path("", include("example_project.urls")),
]
