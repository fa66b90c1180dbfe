from django.contrib import admin

from .models import Post


@admin.register(Post)
class PostAdmin(admin.ModelAdmin):
    # No "created" column: corral and the peer it is compared with create the
    # same post a few milliseconds apart, and the pages must be byte-equal.
    list_display = ['title', 'attachment']
    search_fields = ['title', 'body']
