"""A small Flask app as its users write them, for corral's real-apps suite (issue 12).

Served by corral and by gunicorn's sync worker side by side; the suite sends
both the same requests. It covers what Flask apps do on a WSGI server: sync
and ``async def`` views, ``asyncio.run()`` in a view, files with ``send_file``
(ranges, conditional requests), a streamed generator that needs the request
context, a request body read as a stream (chunked uploads), a form with a
redirect, and the error handlers for 404 and 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

from flask import (Flask, Response, abort, jsonify, redirect, render_template, request, send_file,
                   send_from_directory, stream_with_context, url_for)

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"

app = Flask(__name__)

ITEMS = {1: {"id": 1, "name": "hammer", "price": 12.5}, 2: {"id": 2, "name": "saw", "price": 23.0},
         3: {"id": 3, "name": "chisel", "price": 8.75}}


def report_bytes(size: int = 2 * 1024 * 1024) -> bytes:
    """A deterministic binary 'report' larger than any server buffer."""
    block = hashlib.sha256(b"corral realapps report").digest() * 64  # 2 KiB
    return (block * (size // len(block) + 1))[:size]


REPORT = report_bytes()


# ------------------------------------------------------------------ sync views


@app.get("/")
def index():
    return render_template("index.html", items=ITEMS.values())


@app.get("/api/items")
def list_items():
    limit = request.args.get("limit", default=len(ITEMS), type=int)
    items = sorted(ITEMS.values(), key=lambda item: item["id"])[:limit]
    return jsonify(items=items, count=len(items))


@app.get("/api/items/<int:item_id>")
def get_item(item_id: int):
    if item_id not in ITEMS:
        abort(404, description=f"no item {item_id}")
    return jsonify(ITEMS[item_id])


@app.route("/echo", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def echo():
    """What the app saw of the request: the WSGI environ as Flask exposes it."""
    return jsonify(method=request.method, path=request.path, query=request.query_string.decode(),
                   args=request.args.to_dict(flat=False), json=request.get_json(silent=True),
                   url=request.url, host=request.host, scheme=request.scheme,
                   remote_addr=request.remote_addr, content_type=request.content_type,
                   headers=sorted(request.headers.items()), cookies=request.cookies.to_dict())


# ------------------------------------------------------------------ async: Flask's async views, asyncio.run()


async def square(n: int) -> int:
    await asyncio.sleep(0.001)
    return n * n


@app.get("/async")
async def async_view():
    """An ``async def`` view: Flask runs it with asgiref's AsyncToSync, which needs a thread with no running loop."""
    squares = await asyncio.gather(*(square(n) for n in range(6)))
    return jsonify(squares=squares, view="async")


@app.get("/asyncio-run")
def asyncio_run_view():
    """A sync view that runs a coroutine of its own, as apps calling async client libraries do."""
    async def total() -> int:
        return sum(await asyncio.gather(*(square(n) for n in range(10))))

    return jsonify(total=asyncio.run(total()), view="asyncio.run")


# ------------------------------------------------------------------ files


@app.get("/files/<path:name>")
def files(name: str):
    """``send_from_directory``: ETag, Last-Modified, Range and conditional requests handled by Werkzeug."""
    return send_from_directory(FILES, name)


@app.get("/report.bin")
def report():
    return send_file(io.BytesIO(REPORT), mimetype="application/octet-stream", as_attachment=True,
                     download_name="report.bin")


# ------------------------------------------------------------------ streaming


@app.get("/stream")
def stream():
    """A generator that reads the request while the response streams (hence ``stream_with_context``)."""
    lines = request.args.get("lines", default=50, type=int)

    def generate():
        word = request.args.get("word", "line")
        for n in range(lines):
            yield f"{n:05d} {word} {request.path}\n"

    return Response(stream_with_context(generate()), mimetype="text/plain")


# ------------------------------------------------------------------ request bodies


@app.post("/upload")
def upload():
    """Hashes the body as it streams in: works for a chunked upload with no Content-Length too."""
    digest = hashlib.sha256()
    size = 0
    while chunk := request.stream.read(64 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return jsonify(sha256=digest.hexdigest(), size=size, content_length=request.content_length,
                   transfer_encoding=request.headers.get("Transfer-Encoding"))


@app.post("/attachments")
def attachments():
    """A multipart form with files, parsed by Werkzeug from the (possibly chunked) body."""
    files = {}
    for name, storage in request.files.items(multi=True):
        data = storage.read()
        files.setdefault(name, []).append({"filename": storage.filename, "content_type": storage.content_type,
                                           "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return jsonify(form=request.form.to_dict(flat=False), files=files)


@app.route("/contact", methods=["GET", "POST"])
def contact():
    errors: dict[str, str] = {}
    if request.method == "POST":
        name = request.form.get("name", "").strip()
        message = request.form.get("message", "").strip()
        if not name:
            errors["name"] = "Please tell us your name."
        if not message:
            errors["message"] = "The message is empty."
        if not errors:
            return redirect(url_for("thanks", name=name, topics=request.form.getlist("topic")))
    return render_template("contact.html", errors=errors, form=request.form), 400 if errors else 200


@app.get("/thanks")
def thanks():
    return render_template("thanks.html", name=request.args.get("name", ""),
                           topics=request.args.getlist("topics"))


@app.get("/old-home")
def old_home():
    return redirect(url_for("index"), code=301)


# ------------------------------------------------------------------ errors


@app.get("/boom")
def boom():
    raise ZeroDivisionError("boom: the real-apps suite asked for a server error")


@app.errorhandler(404)
def not_found(error):
    if request.path.startswith("/api/"):
        return jsonify(error="not found", detail=error.description), 404
    return render_template("404.html", path=request.path), 404


@app.errorhandler(500)
def server_error(error):
    return render_template("500.html"), 500
