from django.db import models


class Post(models.Model):
    title = models.CharField(max_length=200)
    body = models.TextField()
    created = models.DateTimeField(auto_now_add=True)
    attachment = models.FileField(upload_to='attachments/', blank=True)

    class Meta:
        ordering = ['-created', '-id']

    def __str__(self):
        return self.title
