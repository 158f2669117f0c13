"""A view whose scope is a dotted path into its own module, to a function
defined below it: not importable yet when the view is decorated."""

from rest_framework.decorators import api_view

from idempotency.decorators import idempotent

from .views import behave


@api_view(["POST"])
@idempotent(scope="tests.testapp.deferred.scope_below")
def deferred_scope(request):
    return behave(request, "deferred-scope")


def scope_below(request) -> str:
    return "below"
