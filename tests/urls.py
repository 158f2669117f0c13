from django.contrib import admin
from django.urls import include, path
from rest_framework.routers import DefaultRouter

from tests.testapp import deferred, views

router = DefaultRouter()
router.register("items", views.ItemViewSet, basename="item")
router.register("optional-items", views.OptionalItemViewSet, basename="optional-item")
router.register("decorated-items", views.DecoratedItemViewSet, basename="decorated-item")
router.register("mixed-items", views.MixinWithDecoratedAction, basename="mixed-item")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("charge/", views.ChargeView.as_view()),
    path("function/", views.charge_function),
    path("optional/", views.optional_key),
    path("short-ttl/", views.short_ttl),
    path("custom-scope/", views.custom_scope),
    path("anonymous/", views.anonymous),
    path("throttled/", views.throttled),
    path("other-database/", views.other_database),
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
    path("", include(router.urls)),
    path("example/", include("example_project.wallet.urls")),
]
