"""The example project's URLs plus its charge handler without ``@idempotent``."""

from django.urls import include, path
from rest_framework.decorators import api_view

from example_project.wallet import views
from idempotency.decorators import OPTIONS_ATTRIBUTE


def _undecorated(view):
    """The function under ``@api_view`` and ``@idempotent``: the same handler,
    the same code, with nothing of this package around it."""
    decorated = view.cls.post.__closure__[0].cell_contents  # DRF's handler closure
    if not hasattr(decorated, OPTIONS_ATTRIBUTE):
        raise RuntimeError(f"{view.__name__} is not an @idempotent handler under @api_view")
    return api_view(["POST"])(decorated.__wrapped__)


urlpatterns = [
    path("api/undecorated/charges/", _undecorated(views.charge), name="charge-undecorated"),
    path("", include("example_project.urls")),
]
