from django.urls import path

from . import views

urlpatterns = [
    path('', views.post_list, name='post-list'),
    path('posts/<int:pk>/', views.post_detail, name='post-detail'),
    path('posts/<int:pk>/attachment/', views.attachment, name='post-attachment'),
    path('upload/', views.upload, name='upload'),
    path('export.csv', views.export_csv, name='export-csv'),
    path('boom/', views.boom, name='boom'),
]
