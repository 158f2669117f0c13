"""``@idempotent`` and ``IdempotentMixin`` on every kind of DRF view."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import RequestFactory
from model_bakery import baker
from rest_framework import viewsets
from rest_framework.decorators import api_view
from rest_framework.views import APIView

from idempotency.conf import DEFERRED_PATHS, DeferredPath
from idempotency.decorators import idempotent
from idempotency.mixins import IdempotentMixin
from idempotency.models import IdempotencyKey
from tests.helpers import executions, keyed_request, new_key
from tests.testapp.models import Execution, Item

pytestmark = pytest.mark.django_db


def assert_runs_once(client, method, url, data=None, label=None):
    """Send a request twice with one key: one run, then an identical replay."""
    key = new_key()
    first = keyed_request(client, method, url, key, data)
    retry = keyed_request(client, method, url, key, data)
    assert first.status_code < 300, first.content
    assert retry.status_code == first.status_code
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert executions(key, label) == 1
    return first


def test_apiview_method(client):
    assert_runs_once(client, "post", "/charge/", {"amount": 1}, label="apiview")


def test_apiview_put_method(client):
    assert_runs_once(client, "put", "/charge/", {"amount": 1}, label="apiview-put")


def test_apiview_undecorated_method_is_untouched(client):
    response = client.get("/charge/", headers={"Idempotency-Key": "k"})
    assert response.json() == {"executions": 0}


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_api_view_function(client, method):
    assert_runs_once(client, method, "/function/", {"amount": 1}, label="function")


def test_create_api_view(client):
    first = assert_runs_once(client, "post", "/generic/items/", {"name": "pen"}, label="create")
    assert first.status_code == 201
    assert Item.objects.count() == 1


@pytest.mark.parametrize("method", ["put", "patch"])
def test_update_api_view(client, method):
    item = baker.make(Item, name="pen", quantity=1)
    assert_runs_once(
        client, method, f"/generic/items/{item.pk}/", {"name": "pencil"}, label="update"
    )


class TestModelViewSet:
    def test_create(self, client):
        assert_runs_once(client, "post", "/items/", {"name": "pen"}, label="create")
        assert Item.objects.count() == 1

    @pytest.mark.parametrize("method", ["put", "patch"])
    def test_update_and_partial_update(self, client, method):
        item = baker.make(Item, name="pen")
        assert_runs_once(client, method, f"/items/{item.pk}/", {"name": "ink"}, label="update")

    def test_destroy_replays_its_204(self, client):
        item = baker.make(Item)
        first = assert_runs_once(client, "delete", f"/items/{item.pk}/", label="destroy")
        assert first.status_code == 204
        assert not Item.objects.exists()

    def test_extra_action(self, client):
        item = baker.make(Item, quantity=1)
        assert_runs_once(client, "post", f"/items/{item.pk}/restock/", {"amount": 5}, "restock")
        item.refresh_from_db()
        assert item.quantity == 6

    def test_list_and_retrieve_pass_through(self, client):
        item = baker.make(Item)
        assert client.get("/items/").status_code == 200
        assert client.get(f"/items/{item.pk}/").status_code == 200
        assert not IdempotencyKey.objects.exists()

    def test_key_required_on_every_unsafe_method(self, client):
        item = baker.make(Item)
        for method, url in [
            ("post", "/items/"),
            ("put", f"/items/{item.pk}/"),
            ("patch", f"/items/{item.pk}/"),
            ("delete", f"/items/{item.pk}/"),
            ("post", f"/items/{item.pk}/restock/"),
        ]:
            response = keyed_request(client, method, url, data={"name": "x"})
            assert response.status_code == 400, (method, url)
        assert not Execution.objects.exists()


class TestDecoratedViewSet:
    def test_decorated_create(self, client):
        assert_runs_once(client, "post", "/decorated-items/", {"name": "pen"})
        assert Item.objects.count() == 1

    def test_decorated_extra_action(self, client):
        item = baker.make(Item)
        assert_runs_once(client, "post", f"/decorated-items/{item.pk}/archive/", label="archive")

    def test_undecorated_actions_are_untouched(self, client):
        item = baker.make(Item)
        url = f"/decorated-items/{item.pk}/"
        assert keyed_request(client, "patch", url, data={"name": "x"}).status_code == 200


class TestMixinOptions:
    def test_class_attributes_apply(self, client):
        # required=False, methods=["POST"], scope by tenant header.
        keyed_request(client, "post", "/optional-items/", data={"name": "a"})
        keyed_request(client, "post", "/optional-items/", data={"name": "a"})
        assert Item.objects.count() == 2
        assert not IdempotencyKey.objects.exists()
        first = client.post(
            "/optional-items/",
            {"name": "b"},
            format="json",
            headers={"Idempotency-Key": "k1", "X-Tenant": "acme"},
        )
        assert first.status_code == 201
        assert IdempotencyKey.objects.get().scope == "tenant:acme"

    def test_methods_outside_the_option_pass_through(self, client):
        item = baker.make(Item)
        response = keyed_request(client, "put", f"/optional-items/{item.pk}/", "k", {"name": "x"})
        assert response.status_code == 200
        assert not IdempotencyKey.objects.exists()

    def test_a_decorated_action_keeps_its_own_options(self, client):
        # The mixin requires a key; the decorated action says required=False.
        assert keyed_request(client, "post", "/mixed-items/bulk/").status_code == 200
        assert keyed_request(client, "post", "/mixed-items/bulk/").status_code == 200
        assert Execution.objects.filter(label="bulk").count() == 2
        assert keyed_request(client, "post", "/mixed-items/").status_code == 400

    def test_get_idempotency_options_hook(self):
        class View(IdempotentMixin, APIView):
            idempotency_ttl = 60

        assert View().get_idempotency_options().get_ttl() == timedelta(seconds=60)


class TestMisuse:
    def test_decorator_above_api_view_raises_with_the_right_order(self):
        with pytest.raises(TypeError) as excinfo:

            @idempotent
            @api_view(["POST"])
            def charge(request):
                return HttpResponse()

        assert str(excinfo.value) == (
            "@idempotent was placed above @api_view, where it would wrap the whole view and "
            "run before authentication. Place it underneath, next to the function:\n\n"
            '    @api_view(["POST"])\n'
            "    @idempotent\n"
            "    def charge(request):\n"
            "        ..."
        )

    def test_decorator_with_options_above_api_view_raises_too(self):
        with pytest.raises(TypeError, match="Place it underneath"):
            idempotent(ttl=5)(api_view(["POST"])(lambda request: HttpResponse()))

    def test_decorating_a_class_raises(self):
        with pytest.raises(TypeError) as excinfo:

            @idempotent
            class View(APIView):
                pass

        assert str(excinfo.value) == (
            "@idempotent decorates handler methods and functions, not classes such as View. "
            "To protect every unsafe method of a view class, add "
            "idempotency.mixins.IdempotentMixin to its bases."
        )

    def test_django_request_in_a_drf_view_is_refused(self):
        """Protection on a DRF view's method that gets Django's request (a
        dispatch() by another name) would run before DRF authenticates."""

        class Early(APIView):
            @idempotent
            def handle(self, request):
                return HttpResponse()

        with pytest.raises(TypeError) as excinfo:
            Early().handle(RequestFactory().post("/"))
        assert str(excinfo.value) == (
            "@idempotent on tests.test_views.TestMisuse.test_django_request_in_a_drf_view_is_"
            "refused.<locals>."
            "Early.handle did not receive a request. It protects DRF handler methods, "
            "@api_view functions and plain Django view functions and methods, which receive "
            "the request as their first argument after self."
        )

    def test_mixin_after_the_view_class_raises(self):
        with pytest.raises(TypeError) as excinfo:

            class Items(viewsets.ModelViewSet, IdempotentMixin):
                pass

        assert str(excinfo.value) == (
            "Items lists IdempotentMixin after a DRF view class. List it first, as in: "
            "class Items(IdempotentMixin, ModelViewSet)."
        )

    @pytest.mark.parametrize(
        ("options", "error", "message"),
        [
            ({"ttl": 0}, ValueError, "ttl must be positive."),
            ({"ttl": float("inf")}, ValueError, "ttl must be at most 100 years."),
            ({"ttl": timedelta(days=36501)}, ValueError, "ttl must be at most 100 years."),
            ({"ttl": timedelta(seconds=-1)}, ValueError, "ttl must be positive."),
            ({"ttl": "60"}, TypeError, "ttl must be a timedelta or a number of seconds."),
            ({"ttl": True}, TypeError, "ttl must be a timedelta or a number of seconds."),
            ({"required": "yes"}, TypeError, "required must be True or False."),
            ({"scope": 3}, TypeError, "scope must be a callable or a dotted path to one."),
            (
                {"fingerprint": 3},
                TypeError,
                "fingerprint must be a callable or a dotted path to one.",
            ),
            (
                {"methods": "POST"},
                TypeError,
                'methods must be a list of method names, such as ["POST"].',
            ),
            (
                {"methods": ["GET"]},
                ValueError,
                "methods must name some of POST, PUT, PATCH and DELETE.",
            ),
            (
                {"methods": []},
                ValueError,
                "methods must name some of POST, PUT, PATCH and DELETE.",
            ),
            ({"backend": "memcached"}, ValueError, 'backend must be "database" or "redis".'),
            ({"wait": -1}, ValueError, "wait must not be negative."),
            ({"wait": 601}, ValueError, "wait must be at most 10 minutes."),
            ({"wait": float("nan")}, ValueError, "wait must be at most 10 minutes."),
            ({"wait": "5"}, TypeError, "wait must be a timedelta or a number of seconds."),
            ({"wait": False}, TypeError, "wait must be a timedelta or a number of seconds."),
        ],
    )
    def test_bad_options_raise_when_the_view_is_defined(self, options, error, message):
        with pytest.raises(error) as excinfo:
            idempotent(**options)
        assert str(excinfo.value) == message
        mixin_options = {f"idempotency_{name}": value for name, value in options.items()}
        with pytest.raises(error):
            type("View", (IdempotentMixin, APIView), mixin_options)

    @pytest.mark.parametrize("option", ["scope", "fingerprint"])
    def test_a_dotted_path_that_cannot_be_imported_raises_when_the_view_is_defined(self, option):
        def handler(self, request):
            return HttpResponse()

        with pytest.raises(ImproperlyConfigured) as excinfo:
            idempotent(**{option: "tests.testapp.views.typo"})(handler)
        assert str(excinfo.value).startswith(
            f"The {option} of @idempotent on tests.test_views.TestMisuse.test_a_dotted_path_"
            "that_cannot_be_imported_raises_when_the_view_is_defined.<locals>.handler "
            "'tests.testapp.views.typo' cannot be imported: "
        )
        with pytest.raises(ImproperlyConfigured) as excinfo:
            type("Charges", (IdempotentMixin, APIView), {f"idempotency_{option}": "nope"})
        assert str(excinfo.value).startswith(
            f"The {option} of tests.test_views.Charges 'nope' cannot be imported: "
        )

    def test_a_dotted_path_to_something_not_callable_raises(self):
        with pytest.raises(ImproperlyConfigured) as excinfo:
            type(
                "Charges",
                (IdempotentMixin, APIView),
                {"idempotency_scope": "tests.testapp.views.GATES"},
            )
        assert str(excinfo.value) == (
            "The scope of tests.test_views.Charges 'tests.testapp.views.GATES' is not a callable."
        )

    def test_a_path_into_a_module_still_being_imported_is_resolved_later(self, client):
        # tests.testapp.deferred names a function defined below its view: it
        # is resolved by the first request (and checked by manage.py check).
        assert (
            DeferredPath(
                "The scope of @idempotent on tests.testapp.deferred.deferred_scope",
                "tests.testapp.deferred.scope_below",
            )
            in DEFERRED_PATHS
        )
        response = client.post("/deferred-scope/", {}, headers={"Idempotency-Key": "k"})
        assert response.status_code == 201
        assert IdempotencyKey.objects.get().scope == "below"

    def test_bare_and_called_forms_are_equivalent(self):
        def handler(self, request):
            return HttpResponse()

        bare = idempotent(handler)
        called = idempotent()(handler)
        assert bare.__name__ == called.__name__ == "handler"
        assert bare.idempotency_options == called.idempotency_options


def test_a_drf_request_outside_an_apiview_raises(user):
    from rest_framework.request import Request
    from rest_framework.response import Response
    from rest_framework.test import APIRequestFactory

    @idempotent
    def handler(request):
        return Response({"ok": True})

    django_request = APIRequestFactory().post(
        "/", {}, format="json", headers={"Idempotency-Key": "k"}
    )
    with pytest.raises(TypeError) as excinfo:
        handler(Request(django_request))
    assert str(excinfo.value) == (
        "A handler protected by @idempotent returned a DRF Response, which only a Django REST "
        "framework view can render. Return a Django HttpResponse (or JsonResponse) from a "
        "plain Django view."
    )
    assert not IdempotencyKey.objects.exists()
