from django.urls import include, path
from rest_framework.routers import DefaultRouter

from . import views

router = DefaultRouter()
router.register("orders", views.OrderViewSet, basename="order")

urlpatterns = [
    path("wallet/", views.wallet, name="wallet"),
    path("charges/", views.charge, name="charge"),
    path("", include(router.urls)),
]
