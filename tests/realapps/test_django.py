"""A real Django project on corral and on the server its users run, driven alike (issue 12).

``apps/blog`` is a ``django-admin startproject`` project with one app
(``posts``: a model with a ``FileField``, its migration, an admin, a list page,
a multipart upload, a file download and a streamed CSV export), on SQLite.
The fixture migrates a database and creates a superuser once; each server gets
its own copy of that database and its own ``MEDIA_ROOT``, so corral and the
peer start from the same state and end in the same state.

The scenario, as a browser user and an admin would go through it: the admin's
login page, a wrong password, a login with the CSRF token (cookie + form), an
object added through the admin's add form, the changelist, the app's own list
page, an upload through the app's form (httpx, and ``curl -F`` with
``Expect: 100-continue``) and its download, the streamed export, an export
cancelled mid-stream (no ERROR logged), the production 404, 403 and 500 pages,
the logout; then ``corral reload`` under load on a page that queries the
database. It runs as WSGI inline
(``threads: 0``, the default) and with ``threads: 4``, each against gunicorn's
sync worker, and as ASGI (``blog/asgi.py``) against uvicorn.

Allowed differences (all of them values the app makes unique per response, so
two runs of the same server differ in them too; see :func:`normalise_cookie`,
:func:`normalise_body` and :data:`EXPIRES`):

* the CSRF secret and the session id in ``Set-Cookie``, and those cookies'
  ``expires=`` dates (now + Max-Age, to the second);
* the time the ``messages`` cookie was signed (a timestamp signer, to the
  second) and so its signature; the messages it carries are compared;
* the masked CSRF token in the forms (``csrfmiddlewaretoken``), fresh per
  response;
* the ``Expires`` header of never-cache pages (the time of the response).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from realapps_util import (APPS, Answer, CorralServer, Diff, GunicornServer, Served, UvicornServer, curl,
                           leave_mid_response, reload_under_load, wait_requests_done)

PROJECT = APPS / "blog"
ADMIN = {"username": "admin", "password": "corral-realapps-Pa55"}

# An attachment above FILE_UPLOAD_MAX_MEMORY_SIZE (256 KiB): Django spools it to a temporary file.
ATTACHMENT = (hashlib.sha256(b"blog attachment").hexdigest().encode() + b"\n") * 12_000  # 780 KB
EXPORT_ROWS = 20_000  # /export.csv?rows=N: a streamed body of about 300 KB


class Interface(str, Enum):
    WSGI = "wsgi"
    ASGI = "asgi"


@dataclass(frozen=True)
class Mode:
    """How corral serves the project, and the server it is compared with."""

    id: str
    interface: Interface
    threads: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # more of corral's config keys

    @property
    def app(self) -> str:
        return f"blog.{self.interface.value}:application"


# wsgi-zygote-warmup: two workers forked from a zygote that imported the project and sent it the
# warm-up request (GET /, the post list: a database query) before forking (docs/zygote.md).
ZYGOTE_WARMUP = {"worker_start": "zygote", "preload": True, "preload_warmup": True, "workers": 2}
MODES = [Mode("wsgi-inline", Interface.WSGI, threads=0), Mode("wsgi-threads4", Interface.WSGI, threads=4),
         Mode("wsgi-zygote-warmup", Interface.WSGI, config=ZYGOTE_WARMUP), Mode("asgi", Interface.ASGI)]


# --------------------------------------------------------------------------- normalising


# The CSRF secret (32 characters) and the session key (32): random per server and per login.
_TOKEN_COOKIE = re.compile(r"^(csrftoken|sessionid)=[A-Za-z0-9]{32};")
# The messages cookie: the messages themselves (compared), then the time they were signed and the signature.
_SIGNED_MESSAGES = re.compile(r"^messages=([^;:]+):[0-9A-Za-z]+:[A-Za-z0-9_-]+;")
# A cookie's expiry is now + Max-Age, rendered to the second: the two servers set it at different moments.
_COOKIE_EXPIRES = re.compile(r"expires=[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")
# The masked CSRF token in each form (64 characters), fresh per response.
_FORM_TOKEN = re.compile(rb'name="csrfmiddlewaretoken" value="[A-Za-z0-9]{64}"')

EXPIRES = "expires"  # never_cache's Expires header: the time of the response.


def normalise_cookie(value: str) -> str:
    """A fresh csrftoken or sessionid cookie with its token and expiry blanked (a deleted one stays as is);
    the messages cookie with its signing time and signature blanked (the messages stay)."""
    if _SIGNED_MESSAGES.match(value):
        return _SIGNED_MESSAGES.sub(r"messages=\1:TIME:SIGNATURE;", value)
    if not _TOKEN_COOKIE.match(value):
        return value
    value = _TOKEN_COOKIE.sub(r"\1=TOKEN;", value)
    return _COOKIE_EXPIRES.sub("expires=DATE", value)


def normalise_body(body: bytes) -> bytes:
    return _FORM_TOKEN.sub(b'name="csrfmiddlewaretoken" value="TOKEN"', body)


def normalised(got: Answer) -> Answer:
    """An answer with the per-response values in ``Set-Cookie`` and ``Expires`` blanked."""
    headers = []
    for name, value in got.headers:
        if name.lower() == "set-cookie":
            value = normalise_cookie(value)
        elif name.lower() == EXPIRES:
            value = "DATE"
        headers.append((name, value))
    return Answer(got.status, headers, got.body)


def answer(response: httpx.Response) -> Answer:
    """What httpx got, normalised."""
    return normalised(Answer(response.status_code, response.headers.multi_items(), response.content))


def form_token(response: httpx.Response) -> str:
    """The CSRF token a browser would post back: the one in the page's form."""
    found = re.search(r'name="csrfmiddlewaretoken" value="([A-Za-z0-9]{64})"', response.text)
    assert found, f"no CSRF token in the form:\n{response.text[:2000]}"
    return found.group(1)


# --------------------------------------------------------------------------- the project and its servers


def manage(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """``python manage.py ARGS`` for the project with its data in ``data_dir``."""
    out = subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, capture_output=True, text=True,
                         timeout=300, env={**_environ(data_dir), **(env or {})})
    assert out.returncode == 0, f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _environ(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "BLOG_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "blog.settings"}


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with the migrated database and the superuser: the state both servers start from."""
    data = tmp_path_factory.mktemp("blog-migrated")
    manage(data, "migrate", "--noinput")
    manage(data, "createsuperuser", "--noinput", "--username", ADMIN["username"], "--email", "admin@example.com",
           env={"DJANGO_SUPERUSER_PASSWORD": ADMIN["password"]})
    return data


def copy_state(migrated: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    shutil.copy2(migrated / "db.sqlite3", to / "db.sqlite3")
    return to


@dataclass
class Site:
    """corral and its peer serving the project, each with its own copy of the state, and a browser on each."""

    mode: Mode
    corral: CorralServer
    peer: Served
    diff: Diff
    data: tuple[Path, Path]
    browsers: tuple[httpx.Client, httpx.Client] = field(init=False)

    def __post_init__(self) -> None:
        # Cookies are kept per client, as each server's browser would; redirects are compared, not followed.
        self.browsers = self.diff.clients()

    def both(self, method: str, path: str, *, token: tuple[str, str] | None = None,
             data: dict[str, Any] | None = None, **request: Any) -> tuple[httpx.Response, httpx.Response]:
        """One request to each server, compared normalised; ``token``: each server's own CSRF form token."""
        answers = []
        for side, client in enumerate(self.browsers):
            fields = dict(data or {})
            if token is not None:
                fields["csrfmiddlewaretoken"] = token[side]
            answers.append(client.request(method, path, data=fields or None, **request))
        ours, theirs = answers
        self.diff.compare(f"{method} {path}", answer(ours), answer(theirs), body=normalise_body)
        return ours, theirs

    @staticmethod
    def tokens(pair: tuple[httpx.Response, httpx.Response]) -> tuple[str, str]:
        """Each server's CSRF token from the form it served, for the POST that follows."""
        return form_token(pair[0]), form_token(pair[1])

    def close(self) -> None:
        for client in self.browsers:
            client.close()


@pytest.fixture(scope="module", params=MODES, ids=[mode.id for mode in MODES])
def site(request: pytest.FixtureRequest, migrated: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Site]:
    mode: Mode = request.param
    tmp = tmp_path_factory.mktemp(f"blog-{mode.id}")
    ours_data = copy_state(migrated, tmp / "corral-data")
    theirs_data = copy_state(migrated, tmp / "peer-data")
    env = {"DJANGO_SETTINGS_MODULE": "blog.settings"}
    corral = CorralServer(tmp, mode.app, app_dir=PROJECT, interface=mode.interface.value, threads=mode.threads,
                          env={**env, "BLOG_DATA_DIR": str(ours_data)}, **mode.config)
    try:
        peer_env = {**env, "BLOG_DATA_DIR": str(theirs_data)}
        if mode.interface is Interface.WSGI:
            peer: Served = GunicornServer(tmp, mode.app, app_dir=PROJECT, env=peer_env)
        else:
            peer = UvicornServer(tmp, mode.app, app_dir=PROJECT, env=peer_env)
    except BaseException:
        corral.stop()
        raise
    site = Site(mode, corral, peer, Diff(corral, peer), (ours_data, theirs_data))
    try:
        yield site
    finally:
        site.close()
        peer.stop()
        corral.stop()
        print(f"\n[realapps django {mode.id}] {site.diff.compared} requests compared with {peer.kind}")


# --------------------------------------------------------------------------- the scenario, in order


def test_workers_come_from_a_zygote_only_where_the_mode_says(site: Site) -> None:
    zygotes = site.corral.status()["zygotes"]
    if not site.mode.config.get("preload_warmup"):
        assert zygotes == []
        return
    # The list page ran its query in the zygote, which left no database connection open (it would
    # have refused to fork and named the fd), and the preloaded zygote serves the workers.
    assert "warm-up in the zygote: GET / (Host: 127.0.0.1) -> 200, 10 requests in " in site.corral.log(), \
        site.corral.log()
    assert [(z["state"], z["preloaded"]) for z in zygotes] == [("ready", True)], zygotes


def test_admin_redirects_to_login(site: Site) -> None:
    ours, _ = site.both("GET", "/admin/")
    assert ours.status_code == 302
    assert ours.headers["location"] == "/admin/login/?next=/admin/"


def test_login_page_sets_csrf_cookie(site: Site) -> None:
    ours, theirs = site.both("GET", "/admin/login/?next=/admin/")
    assert ours.status_code == 200
    assert "csrftoken" in site.browsers[0].cookies and "csrftoken" in site.browsers[1].cookies
    assert form_token(ours) != form_token(theirs)  # two servers, two secrets: the scenario uses each its own


def test_wrong_password_is_refused(site: Site) -> None:
    page = site.both("GET", "/admin/login/?next=/admin/")
    ours, _ = site.both("POST", "/admin/login/?next=/admin/", token=site.tokens(page),
                        data={"username": ADMIN["username"], "password": "wrong", "next": "/admin/"})
    assert ours.status_code == 200
    assert b"Please enter the correct username and password" in ours.content


def test_login(site: Site) -> None:
    page = site.both("GET", "/admin/login/?next=/admin/")
    ours, _ = site.both("POST", "/admin/login/?next=/admin/", token=site.tokens(page),
                        data={**ADMIN, "next": "/admin/"})
    assert ours.status_code == 302, ours.text[:2000]
    assert ours.headers["location"] == "/admin/"
    assert "sessionid" in site.browsers[0].cookies
    index, _ = site.both("GET", "/admin/")
    assert index.status_code == 200
    assert b"Site administration" in index.content and b"/admin/posts/post/" in index.content


def test_add_post_through_admin(site: Site) -> None:
    form = site.both("GET", "/admin/posts/post/add/")
    assert form[0].status_code == 200
    # As a browser posts the admin's multipart form when no file is chosen: an empty file part.
    ours, _ = site.both("POST", "/admin/posts/post/add/", token=site.tokens(form),
                        data={"title": "First post", "body": "Written in the admin.\nTwo lines.", "_save": "Save"},
                        files={"attachment": ("", b"", "application/octet-stream")})
    assert ours.status_code == 302, ours.text[:3000]
    assert ours.headers["location"] == "/admin/posts/post/"


def test_post_listed_in_admin_changelist(site: Site) -> None:
    ours, _ = site.both("GET", "/admin/posts/post/")
    assert ours.status_code == 200
    assert b"First post" in ours.content
    assert b"was added successfully" in ours.content  # the message the add left in its cookie
    search, _ = site.both("GET", "/admin/posts/post/?q=first")
    assert b"First post" in search.content


def test_post_listed_on_app_page(site: Site) -> None:
    ours, _ = site.both("GET", "/")
    assert ours.status_code == 200
    assert b'<a href="/posts/1/">First post</a>' in ours.content
    detail, _ = site.both("GET", "/posts/1/")
    assert b"<p>Written in the admin.<br>Two lines.</p>" in detail.content


def test_upload_without_csrf_token_is_forbidden(site: Site) -> None:
    ours, _ = site.both("POST", "/upload/", data={"title": "no token", "body": "x"})
    assert ours.status_code == 403
    assert b"CSRF verification failed" in ours.content


def test_upload_and_download(site: Site) -> None:
    form = site.both("GET", "/upload/")
    ours, _ = site.both("POST", "/upload/", token=site.tokens(form),
                        data={"title": "With a file", "body": "See the attachment."},
                        files={"attachment": ("notes.txt", ATTACHMENT, "text/plain")})
    assert ours.status_code == 302, ours.text[:3000]
    assert ours.headers["location"] == "/posts/2/"
    for data in site.data:  # stored under MEDIA_ROOT by each server alike
        assert (data / "media" / "attachments" / "notes.txt").read_bytes() == ATTACHMENT
    detail, _ = site.both("GET", "/posts/2/")
    assert f"attachments/notes.txt</a> ({len(ATTACHMENT)} bytes)".encode() in detail.content
    download, _ = site.both("GET", "/posts/2/attachment/")
    assert download.status_code == 200
    assert download.content == ATTACHMENT
    assert download.headers["content-disposition"] == 'attachment; filename="notes.txt"'
    site.both("HEAD", "/posts/2/attachment/")
    listed, _ = site.both("GET", "/")
    assert b'<a href="/posts/2/">With a file</a> (attachment)' in listed.content


def test_upload_with_curl(site: Site, tmp_path: Path) -> None:
    """``curl -F`` with a 3 MB file (so curl sends ``Expect: 100-continue``), the CSRF cookie and form token."""
    big = tmp_path / "report.txt"
    big.write_bytes(ATTACHMENT * 4)
    forms = site.both("GET", "/upload/")
    answers = []
    for side, server in enumerate((site.corral, site.peer)):
        answers.append(normalised(curl(
            server.url + "/upload/", "-b", f"csrftoken={site.browsers[side].cookies['csrftoken']}",
            "-F", f"csrfmiddlewaretoken={form_token(forms[side])}", "-F", "title=From curl",
            "-F", "body=Sent with curl -F.", "-F", f"attachment=@{big}")))
    site.diff.compare("POST /upload/ (curl -F, 3 MB)", *answers)
    assert answers[0].status == 302 and answers[0].header("location") == "/posts/3/", answers[0]
    download, _ = site.both("GET", "/posts/3/attachment/")
    assert download.content == big.read_bytes()


def test_streaming_export(site: Site) -> None:
    ours, theirs = site.both("GET", f"/export.csv?rows={EXPORT_ROWS}")
    assert ours.status_code == 200
    lines = ours.content.decode().splitlines()
    assert lines[:4] == ["id,title,attachment", "1,First post,", "2,With a file,attachments/notes.txt",
                         "3,From curl,attachments/report.txt"]
    assert lines[-1] == f"row,{EXPORT_ROWS - 1},{(EXPORT_ROWS - 1) ** 2}"
    # A StreamingHttpResponse has no length: HTTP/1.1 streams it chunked (not close-delimited) on both.
    assert ours.headers.get("transfer-encoding") == theirs.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in ours.headers


def test_download_cancelled_mid_stream(site: Site) -> None:
    """A user cancelling a long export is an ordinary event: no ERROR, and the next request is served."""
    before = site.corral.status()["requests_total"]
    for _ in range(3):
        assert leave_mid_response(site.corral, "/export.csv?rows=1000000") >= 64 * 1024
    wait_requests_done(site.corral, before + 3)
    assert site.corral.errors_logged() == [], site.corral.log()
    ours, _ = site.both("GET", "/export.csv?rows=3")
    assert ours.status_code == 200


def test_not_found_pages(site: Site) -> None:
    for path in ("/no/such/page/", "/posts/999/", "/posts/1/attachment/"):
        ours, _ = site.both("GET", path)
        assert ours.status_code == 404, path


def test_logout(site: Site) -> None:
    index = site.both("GET", "/admin/")
    # Django 5 logs out with a POST carrying the CSRF token (the admin's header form has it).
    ours, _ = site.both("POST", "/admin/logout/", token=site.tokens(index))
    assert ours.status_code == 200
    assert b"Logged out" in ours.content
    assert "sessionid" not in site.browsers[0].cookies
    again, _ = site.both("GET", "/admin/")
    assert again.status_code == 302


def test_no_errors_logged(site: Site) -> None:
    """Everything so far was an ordinary request: nothing at ERROR in corral's log (workers' and app's)."""
    assert site.corral.errors_logged() == [], site.corral.log()


def test_server_error_page(site: Site) -> None:
    ours, _ = site.both("GET", "/boom/")
    assert ours.status_code == 500
    assert b"Server Error (500)" in ours.content
    # Django logs the exception through its own handler (LOGGING in settings.py), once, under either server.
    # (Under corral the record also propagates to the root logger, which corral's worker configures, so the
    # journal gets it a second time in corral's format: reported, not asserted here.)
    logged = "ERROR django.request: Internal Server Error: /boom/"
    assert site.corral.log().count(logged) == 1, site.corral.log()
    assert site.peer.log().count(logged) == 1, site.peer.log()


def test_reload_under_load(site: Site) -> None:
    counts = reload_under_load(site.corral, "/")  # the list page: a query per request
    print(f"\n[realapps django {site.mode.id}] reload under load: {counts}")
    assert counts["failed"] == 0, counts
    assert counts["ok"] > 0
    ours, _ = site.both("GET", "/")  # the new generation sees the same database
    assert b"With a file" in ours.content

