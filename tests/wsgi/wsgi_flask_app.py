"""A real Flask app for the end-to-end tests (forms, uploads, streaming, files, redirects, errors)."""

from __future__ import annotations

import hashlib
import os

from flask import Flask, Response, abort, jsonify, redirect, request, send_file, stream_with_context, url_for

app = Flask(__name__)
DOWNLOAD = os.environ.get("CORRAL_TEST_DOWNLOAD", "/nonexistent")


@app.get("/")
def index():
    return "hello from flask"


@app.post("/form")
def form():
    return jsonify(name=request.form.get("name"), tags=request.form.getlist("tag"), args=request.args.to_dict())


@app.post("/upload")
def upload():
    f = request.files["file"]
    digest = hashlib.sha256()
    size = 0
    while chunk := f.stream.read(65536):
        digest.update(chunk)
        size += len(chunk)
    return jsonify(filename=f.filename, size=size, sha256=digest.hexdigest(), note=request.form.get("note"))


@app.post("/json")
def echo_json():
    return jsonify(got=request.get_json(), length=request.content_length)


@app.get("/stream")
def stream():
    @stream_with_context
    def generate():
        for i in range(int(request.args.get("n", 5))):
            yield f"line {i}\n"
    return Response(generate(), mimetype="text/plain")


@app.get("/download")
def download():
    return send_file(DOWNLOAD, as_attachment=True, download_name="data.bin")


@app.get("/redirect")
def go():
    return redirect(url_for("index"))


@app.get("/missing")
def missing():
    abort(404)


@app.get("/boom")
def boom():
    raise RuntimeError("flask view failed")


@app.get("/whoami")
def whoami():
    return jsonify(url=request.url, remote=request.remote_addr, scheme=request.scheme,
                   script_root=request.script_root, path=request.path)


@app.get("/sendfile-count")
def sendfile_count():
    from wsgi_apps import SENDFILE_CALLS  # imported at start-up below: it counts os.sendfile calls
    return jsonify(calls=SENDFILE_CALLS[0])


import wsgi_apps  # noqa: E402,F401  (wraps os.sendfile with a counter)
