"""A minimal Django project in one module, served through Django's own ASGI handler."""

from __future__ import annotations

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="corral-engine-tests",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


def hello(request):
    return HttpResponse(b"hello from django", content_type="text/plain")


@csrf_exempt
def echo(request):
    return JsonResponse({"method": request.method, "length": len(request.body),
                         "path": request.path, "query": request.GET.get("q")})


urlpatterns = [path("hello", hello), path("echo", echo)]

application = get_asgi_application()
