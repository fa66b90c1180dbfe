"""WSGI apps for tests/wsgi/test_wsgi_hardening*.py, importable by corral, gunicorn and wsgiref alike."""

from __future__ import annotations

import json
from typing import Any, Callable


def environ_keys(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Every environ key, with its value for the string ones (the type's name for the others)."""
    # Only CONTENT_LENGTH bytes: wsgiref hands over the raw socket stream, where read() waits for EOF.
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    data = {key: value if isinstance(value, str) else type(value).__name__ for key, value in environ.items()}
    data["<body>"] = body.decode("latin-1")
    out = json.dumps(data, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


def upload(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Reads the whole body and says how long it was."""
    size = 0
    stream = environ["wsgi.input"]  # corral's input ends at the body's end (wsgi.input_terminated)
    while chunk := stream.read(65536):
        size += len(chunk)
    out = json.dumps({"length": size}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
