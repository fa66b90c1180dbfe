"""Datasette (an ASGI app from PyPI) on corral and on uvicorn: the same pages, API and exports.

A small SQLite database (authors, books with a foreign key to authors) is
built per run. Every request goes to both servers and the normalised answers
must be equal (realapps_util.Diff). Headless Chromium renders the table page
from each server, and the rendered DOMs must be equal too.

Allowed difference, the only one: Datasette reports how long its SQL took, in
the HTML footer ("Queries took 2.383ms") and in the JSON API ("query_ms":
2.38). That is a per-response measurement, different on every request to the
same server; :func:`timings` replaces just those two numbers.

corral's log must carry no ERROR and no traceback, HEAD requests to static
files and a browser included (issue 12, defect 4).
"""

from __future__ import annotations

import re
import socket
import sqlite3
import struct
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from realapps_util import APPS, CorralServer, Diff, UvicornServer, curl, reload_under_load

APP = "datasette_app:app"
CHROMIUM = Path("/usr/bin/chromium")
BOOKS = 2500  # more than Datasette's max_returned_rows (1000): the CSV stream takes several pages


def timings(body: bytes) -> bytes:
    """Datasette's own per-response SQL timings, and nothing else, made equal (see the module doc)."""
    body = re.sub(rb"Queries took [0-9.]+ms", b"Queries took Nms", body)
    return re.sub(rb'"query_ms": [0-9.e-]+', b'"query_ms": N', body)


def build_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript("""
            PRAGMA foreign_keys = ON;
            CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL, born INTEGER, country TEXT);
            CREATE TABLE books (
                id INTEGER PRIMARY KEY,
                title TEXT NOT NULL,
                year INTEGER,
                author_id INTEGER NOT NULL REFERENCES authors(id)
            );
            CREATE INDEX books_author ON books(author_id);
        """)
        db.executemany("INSERT INTO authors VALUES (?, ?, ?, ?)", [
            (1, "Ursula K. Le Guin", 1929, "US"), (2, "Italo Calvino", 1923, "IT"),
            (3, "Jorge Luis Borges", 1899, "AR"), (4, "Wisława Szymborska", 1923, "PL")])
        db.executemany("INSERT INTO books (title, year, author_id) VALUES (?, ?, ?)",
                       [(f"Book {i} \u2014 \"quoted\", with commas", 1900 + i % 120, 1 + i % 4)
                        for i in range(BOOKS)])


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("datasette")


@pytest.fixture(scope="module")
def env(tmp: Path) -> dict[str, str]:
    db = tmp / "library.db"
    build_database(db)
    return {"REALAPPS_DATASETTE_DB": str(db)}


@pytest.fixture(scope="module")
def corral(tmp: Path, env: dict[str, str]) -> Iterator[CorralServer]:
    with CorralServer(tmp, APP, app_dir=APPS, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def uvicorn(tmp: Path, env: dict[str, str]) -> Iterator[UvicornServer]:
    with UvicornServer(tmp, APP, app_dir=APPS, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def diff(corral: CorralServer, uvicorn: UvicornServer) -> Iterator[Diff]:
    d = Diff(corral, uvicorn)
    yield d
    print(f"\n[realapps] datasette: {d.compared} requests compared with uvicorn")


PAGES = [
    "/",                                                    # index
    "/library",                                             # database
    "/library/books",                                       # table (first page of 100)
    "/library/books?_next=100",                             # table, second page
    "/library/books/3",                                     # row
    "/library/authors/2",                                   # row with incoming foreign keys
    "/library/books?author_id=2&year__gt=1990",             # filtered table
    "/library/books?_facet=author_id&_sort_desc=year",      # facet, sorted
    "/library/books?_search=nothing",                       # a filter the table cannot apply
    "/library?sql=select+title%2C+year+from+books+where+year+%3E+%3Ay+limit+20&y=2000",  # SQL query
    "/library?sql=select+nonsense+from",                    # SQL error page
    "/library/nosuchtable",                                 # 404
]


@pytest.mark.parametrize("path", PAGES)
def test_html_pages(diff: Diff, path: str) -> None:
    ours, _ = diff.same("GET", path, body=timings)
    assert ours.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("path", PAGES)
def test_json_api(diff: Diff, path: str) -> None:
    """The ``.json`` of every page above (for the index: ``/.json``)."""
    base, _, query = path.partition("?")
    url = ("/.json" if base == "/" else base + ".json") + (f"?{query}" if query else "")
    ours, _ = diff.same("GET", url, body=timings)
    assert ours.headers["content-type"].startswith("application/json")
    diff.same("GET", url + ("&" if query else "?") + "_shape=objects", body=timings)


def test_json_labels_and_sql(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/library/books.json?_labels=on&_size=5&_shape=array", body=timings)
    assert ours.json()[0]["author_id"] == {"value": 1, "label": "Ursula K. Le Guin"}
    diff.same("GET", "/library.json?sql=select+count(*)+as+n+from+books", body=timings)
    diff.same("GET", "/-/versions.json")
    diff.same("GET", "/-/databases.json")


def test_csv_export_streamed(diff: Diff) -> None:
    ours, theirs = diff.same("GET", "/library/books.csv?_stream=on&_labels=on")
    rows = ours.text.splitlines()
    assert rows[0] == "id,title,year,author_id,author_id_label"
    assert len(rows) == BOOKS + 1
    # Streamed, not buffered: neither server knew the length up front.
    assert ours.headers.get("transfer-encoding") == theirs.headers.get("transfer-encoding") == "chunked"
    diff.same("GET", "/library/authors.csv")
    diff.same("GET", "/library.csv?sql=select+name+from+authors+order+by+born")


def test_no_errors_logged(diff: Diff) -> None:
    """Everything above (pages, API, exports) went by without an ERROR or traceback from corral.

    Datasette prints its own tracebacks for the 404s above (as rich boxes when `rich` is
    installed, as it is here: import-linter needs it), under uvicorn exactly as under corral, so
    the app's own are counted in uvicorn's log and only what corral adds is an error.
    """
    assert httpx.get(diff.ours.url + "/library", timeout=60).status_code == 200
    tracebacks = "Traceback (most recent call last)"
    ours = diff.ours.errors_logged()
    app_printed = [line for line in diff.theirs.log().splitlines() if tracebacks in line]
    assert [line for line in ours if tracebacks not in line] == []
    assert len([line for line in ours if tracebacks in line]) == len(app_printed)


STATIC = ["/-/static/app.css", "/-/static/codemirror-5.57.0.min.js", "/-/static/table.js", "/favicon.ico"]


def test_head_static_files(diff: Diff) -> None:
    """``curl -I`` on static files: the same head as uvicorn's, and no traceback for the body never sent."""
    logged = len(diff.ours.errors_logged())  # only this test's lines count here
    for path in STATIC:
        for _ in range(5):  # whether the client has gone before the body is sent is a race: try it a few times
            ours = curl(diff.ours.url + path, "-I")
            theirs = curl(diff.theirs.url + path, "-I")
            diff.compare(f"HEAD {path} (curl -I)", ours, theirs)
            assert ours.status == 200 and ours.body == b""
        # The same file by GET: the head announced the length of this body.
        response, _ = diff.same("GET", path)
        assert int(ours.header("content-length") or -1) == len(response.content)
    assert diff.ours.errors_logged()[logged:] == []


def test_a_download_the_client_leaves_midway_logs_nothing(diff: Diff) -> None:
    """A browser that stops loading a script (a tab closed, a page left): no traceback, as with uvicorn.

    Datasette sends a static file in 4 KiB chunks and prints every exception its handler catches
    with a traceback; an OSError from send() after the client left would be one (ASGI 2.4 allows
    it). corral finishes such a response quietly when the rest due is short (corral.engine.asgi).
    """
    logged, theirs_logged = len(diff.ours.errors_logged()), len(diff.theirs.log())
    path = "/-/static/codemirror-5.57.0.min.js"  # 256 KB
    for server in (diff.ours, diff.theirs):
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
                assert sock.recv(200).startswith(b"HTTP/1.1 200")
            # Closed with most of the file unread: a reset, as a browser's cancelled load.
        # Still serving, and the whole file to a client that stays.
        response = httpx.get(server.url + path, timeout=30)
        assert response.status_code == 200 and len(response.content) == 256115
    assert diff.ours.errors_logged()[logged:] == []
    assert "Traceback" not in diff.theirs.log()[theirs_logged:]


def test_chromium_renders_the_same(diff: Diff, tmp: Path) -> None:
    """Headless Chromium loads the table page (its CSS and JS too) from each server; the DOMs are equal."""
    assert CHROMIUM.exists(), "Debian's chromium is needed (make test installs it: apt-get install chromium)"
    logged = len(diff.ours.errors_logged())  # only this test's lines count here
    doms = [_chromium(server.url + "/library/books", tmp / f"profile-{server.kind}", "--dump-dom").stdout
            for server in (diff.ours, diff.theirs)]
    ours, theirs = (timings(dom.replace(f"127.0.0.1:{server.port}".encode(), b"127.0.0.1:PORT"))
                    for dom, server in zip(doms, (diff.ours, diff.theirs)))
    assert b'<table class="rows-and-columns">' in ours
    assert ours == theirs
    diff.compared += 1
    shot = tmp / "datasette-table-corral.png"
    _chromium(diff.ours.url + "/library/books", tmp / "profile-shot", f"--screenshot={shot}",
              "--window-size=1280,900")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 900)  # IHDR: the window asked for
    assert len(png) > 20_000, f"a near-empty screenshot ({len(png)} bytes): the page did not render"
    # A browser closes connections (an unfinished favicon fetch) as it exits: never an error.
    assert diff.ours.errors_logged()[logged:] == []


def _chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    # A profile of its own per run: Chromium refuses to share one between two running browsers.
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={profile}", *args, url]
    out = subprocess.run(cmd, capture_output=True, timeout=180)
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{out.stderr.decode(errors='replace')[-3000:]}"
    return out


def test_reload_under_load(diff: Diff) -> None:
    counts = reload_under_load(diff.ours, "/library/authors.json")
    print(f"\n[realapps] datasette reload under load: {counts}")
    assert counts["failed"] == 0, counts
    assert counts["ok"] > 0
    diff.same("GET", "/library/authors.json", body=timings)  # the new generation answers as before
