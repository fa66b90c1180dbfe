import csv
import os

from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from .forms import PostForm
from .models import Post


def post_list(request):
    return render(request, 'posts/list.html', {'posts': Post.objects.all()})


def post_detail(request, pk):
    return render(request, 'posts/detail.html', {'post': get_object_or_404(Post, pk=pk)})


def upload(request):
    """A new post with its attachment, from a multipart form (stored under MEDIA_ROOT)."""
    if request.method == 'POST':
        form = PostForm(request.POST, request.FILES)
        if form.is_valid():
            post = form.save()
            return redirect('post-detail', pk=post.pk)
    else:
        form = PostForm()
    return render(request, 'posts/upload.html', {'form': form})


def attachment(request, pk):
    post = get_object_or_404(Post, pk=pk)
    if not post.attachment:
        raise Http404('This post has no attachment.')
    return FileResponse(post.attachment.open('rb'), as_attachment=True,
                        filename=os.path.basename(post.attachment.name))


class Echo:
    """A file-like object whose write() returns the value: csv.writer's rows, one by one."""

    def write(self, value):
        return value


def export_csv(request):
    """The posts as CSV, streamed (Django's documented way to stream a large CSV).

    ``?rows=N`` appends N generated rows, for a response larger than the buffers.
    """
    try:
        extra = max(0, min(int(request.GET.get('rows', '0')), 100_000))
    except ValueError:
        extra = 0
    writer = csv.writer(Echo())

    def rows():
        yield writer.writerow(['id', 'title', 'attachment'])
        for post in Post.objects.order_by('id'):
            yield writer.writerow([post.pk, post.title, post.attachment.name])
        for n in range(extra):
            yield writer.writerow(['row', n, n * n])

    return StreamingHttpResponse(rows(), content_type='text/csv',
                                 headers={'Content-Disposition': 'attachment; filename="posts.csv"'})


def boom(request):
    """An unhandled exception: the production 500 page, and one ERROR in the log."""
    raise RuntimeError('boom: the real-apps suite asked for a server error')
