from django.contrib import admin

from site_app.models import Post

admin.site.register(Post)
