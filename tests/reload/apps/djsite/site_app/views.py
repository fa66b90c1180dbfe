"""The views: ``/`` renders a template from a database query, and names the code's version."""

import os

from django.shortcuts import render

from site_app.models import Post
from site_app.version import VERSION


def index(request):
    response = render(request, "site_app/index.html",
                      {"version": VERSION, "posts": Post.objects.order_by("-id")[:5], "count": Post.objects.count()})
    response["X-App-Version"] = VERSION
    response["X-Worker-Pid"] = str(os.getpid())
    return response
