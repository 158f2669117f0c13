from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from django.views import defaults
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from example_project.wallet import views as wallet

urlpatterns = [
    path("", wallet.home, name="home"),
    path("remote/", wallet.remote, name="remote"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("api/", include("example_project.wallet.urls")),
    # The OpenAPI schema, and Swagger UI to read it in a browser. Public
    # here; a real project chooses who may read it (SERVE_PERMISSIONS).
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/schema/ui/", SpectacularSwaggerView.as_view(url_name="schema"), name="schema-ui"),
]


def not_found(request, exception):
    """Under /api/, a URL that names no order (/api/orders/x.y/) gets the
    same JSON 404 as an order that does not exist, as the schema says."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


handler404 = not_found
