"""The URLconf: Django imports it (and the views it imports) on the first request, not at start."""

from django.contrib import admin
from django.urls import path

from site_app import views

urlpatterns = [
    path("", views.index),
    path("admin/", admin.site.urls),
]
