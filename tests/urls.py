from adrf.routers import SimpleRouter as AsyncRouter
from django.contrib import admin
from django.urls import include, path
from rest_framework.routers import DefaultRouter

from tests.testapp import async_views, deferred, hostile_views, views

router = DefaultRouter()
router.register("items", views.ItemViewSet, basename="item")
router.register("optional-items", views.OptionalItemViewSet, basename="optional-item")
router.register("decorated-items", views.DecoratedItemViewSet, basename="decorated-item")
router.register("mixed-items", views.MixinWithDecoratedAction, basename="mixed-item")
async_router = AsyncRouter()
async_router.register("async/charges", async_views.AdrfCharges, basename="async-charge")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("charge/", views.ChargeView.as_view()),
    path("function/", views.charge_function),
    path("optional/", views.optional_key),
    path("waiting/", views.WaitingView.as_view()),
    path("short-ttl/", views.short_ttl),
    path("custom-scope/", views.custom_scope),
    path("anonymous/", views.anonymous),
    path("throttled/", views.throttled),
    path("other-database/", views.other_database),
    path("read-only-elsewhere/", views.read_only_elsewhere),
    path("nested-atomic/", views.nested_atomic),
    path("peeking/", views.peeking),
    path("stream-json/", views.stream_json),
    path("constant-a/", views.constant_a),
    path("constant-b/", views.constant_b),
    path("upload/<str:filename>", views.upload),
    path("taken-over/", views.taken_over),
    path("principal/", views.principal),
    path("rolls-back/", views.rolls_back),
    path("write-skew/", views.write_skew),
    path("deferred-scope/", deferred.deferred_scope),
    path("missing-scope/", views.missing_scope),
    path("by-session-key/", views.by_session_key),
    path("by-session/", views.by_session),
    path("start-session/", views.start_session),
    path("redis/charge/", views.redis_charge),
    path("redis/mixin/", views.RedisChargeView.as_view()),
    path("generic/items/", views.ItemCreateView.as_view()),
    path("generic/items/<int:pk>/", views.ItemUpdateView.as_view()),
    path("async/function/", async_views.adrf_function),
    path("async/mixin/", async_views.AdrfCharge.as_view()),
    path("async/redis/", async_views.AdrfDecorated.as_view()),
    path("django/function/", async_views.django_function),
    path("django/async-function/", async_views.django_async_function),
    path("django/view/", async_views.DjangoCharge.as_view()),
    path("django/async-view/", async_views.DjangoAsyncCharge.as_view()),
    path("django/stream/", async_views.django_stream),
    path("django/form/", async_views.DjangoFormView.as_view()),
    path("async/ping/", async_views.ping),
    path("django/no-scope/", async_views.django_no_scope),
    path("django/upload/", async_views.django_upload),
    path("echo-key/", async_views.echo_key),
    path("django/echo-key/", async_views.django_echo_key),
    path("", include(async_router.urls)),
    path("", include(router.urls)),
    path("example/", include("example_project.wallet.urls")),
]

# tests/test_hostile_async.py
urlpatterns += [
    path(f"hostile/{name}/", getattr(hostile_views, name))
    for name in (
        "async_redis_slow",
        "sync_redis_slow",
        "async_db_slow",
        "sync_db_slow",
        "async_background",
        "async_background_unprotected",
        "async_gather",
        "async_unsafe_thread",
        "async_stream",
        "async_killed",
        "csrf_checked",
        "plain_multipart",
        "twice",
    )
]
