"""A real Django project in one module (settings, URLs, views) for the end-to-end tests."""

from __future__ import annotations

import hashlib
import os

import django
from django.conf import settings

DOWNLOAD = os.environ.get("CORRAL_TEST_DOWNLOAD", "/nonexistent")

settings.configure(
    DEBUG=False,
    SECRET_KEY="corral-tests-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    INSTALLED_APPS=[],
    DATABASES={},
    USE_TZ=True,
    FILE_UPLOAD_MAX_MEMORY_SIZE=256 * 1024,  # larger uploads go to temp files
    DATA_UPLOAD_MAX_MEMORY_SIZE=None,
    LOGGING_CONFIG=None,
)
django.setup()

from django.http import (  # noqa: E402
    FileResponse, Http404, HttpResponse, HttpResponseRedirect, JsonResponse, StreamingHttpResponse,
)
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


def index(request):
    return HttpResponse("hello from django")


@csrf_exempt
def form(request):
    return JsonResponse({"name": request.POST.get("name"), "tags": request.POST.getlist("tag"),
                         "method": request.method})


@csrf_exempt
def upload(request):
    f = request.FILES["file"]
    digest = hashlib.sha256()
    for chunk in f.chunks():
        digest.update(chunk)
    return JsonResponse({"filename": f.name, "size": f.size, "sha256": digest.hexdigest(),
                         "note": request.POST.get("note")})


def stream(request):
    n = int(request.GET.get("n", "5"))
    return StreamingHttpResponse((f"line {i}\n" for i in range(n)), content_type="text/plain")


def download(request):
    return FileResponse(open(DOWNLOAD, "rb"), as_attachment=True, filename="data.bin")


def go(request):
    return HttpResponseRedirect("/")


def missing(request):
    raise Http404("no such thing")


def boom(request):
    raise RuntimeError("django view failed")


def whoami(request):
    return JsonResponse({"uri": request.build_absolute_uri(), "remote": request.META.get("REMOTE_ADDR"),
                         "secure": request.is_secure(), "script_name": request.META.get("SCRIPT_NAME"),
                         "path": request.path, "path_info": request.path_info})


def sendfile_count(request):
    from wsgi_apps import SENDFILE_CALLS
    return JsonResponse({"calls": SENDFILE_CALLS[0]})


import wsgi_apps  # noqa: E402,F401  (wraps os.sendfile with a counter)

urlpatterns = [
    path("sendfile-count", sendfile_count),
    path("", index),
    path("form", form),
    path("upload", upload),
    path("stream", stream),
    path("download", download),
    path("redirect", go),
    path("missing", missing),
    path("boom", boom),
    path("whoami", whoami),
]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
