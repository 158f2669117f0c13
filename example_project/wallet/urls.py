from django.urls import include, path
from rest_framework.routers import DefaultRouter

from . import views

router = DefaultRouter()
router.register("orders", views.OrderViewSet, basename="order")

urlpatterns = [
    path("wallet/", views.wallet, name="wallet"),
    path("charges/", views.charge, name="charge"),
    path("charges/wait/", views.charge_waiting, name="charge-waiting"),
    path("", include(router.urls)),
]
