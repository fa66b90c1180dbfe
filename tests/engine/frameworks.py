"""Small apps for the engine tests that are not part of apps.app's routes."""

from __future__ import annotations

from typing import Any


async def close_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2"), (b"Connection", b"close")]})
    await send({"type": "http.response.body", "body": b"ok"})


# ---------------------------------------------------------------- Starlette

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

_log = logging.getLogger("frameworks")
DOWNLOAD = os.path.join(tempfile.gettempdir(), f"corral-engine-download-{os.getpid()}.bin")
DISCONNECTS: dict[str, str] = {}


@contextlib.asynccontextmanager
async def _lifespan(app):
    with open(DOWNLOAD, "wb") as f:
        f.write(bytes(range(256)) * 4096 * 3)  # 3 MiB
    yield {"greeting": "hi"}
    _log.warning("starlette lifespan: shutdown")
    os.unlink(DOWNLOAD)


async def st_root(request: Request):
    return PlainTextResponse(f"{request.state.greeting} from starlette")


async def st_stream(request: Request):
    async def gen():
        for i in range(5):
            yield f"line {i}\n".encode()
            await asyncio.sleep(0.01)
    return StreamingResponse(gen(), media_type="text/plain")


async def st_download(request: Request):
    return FileResponse(DOWNLOAD, filename="data.bin")


async def st_upload(request: Request):
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return JSONResponse({"size": size, "sha256": digest.hexdigest()})


async def st_form(request: Request):
    form = await request.form()
    upload = form["file"]
    data = await upload.read()
    return JSONResponse({"name": upload.filename, "size": len(data), "field": form["field"]})


async def st_wait_disconnect(request: Request):
    key = request.query_params["id"]
    DISCONNECTS[key] = "waiting"
    for _ in range(600):
        if await request.is_disconnected():
            DISCONNECTS[key] = "disconnected"
            return PlainTextResponse("gone")
        await asyncio.sleep(0.05)
    DISCONNECTS[key] = "never noticed"
    return PlainTextResponse("timeout")


async def st_disconnects(request: Request):
    return JSONResponse(DISCONNECTS.get(request.query_params["id"]))


starlette_app = Starlette(routes=[
    Route("/", st_root),
    Route("/stream", st_stream),
    Route("/download", st_download),
    Route("/upload", st_upload, methods=["POST"]),
    Route("/form", st_form, methods=["POST"]),
    Route("/wait-disconnect", st_wait_disconnect),
    Route("/disconnects", st_disconnects),
], lifespan=_lifespan)


# ---------------------------------------------------------------- FastAPI

from fastapi import FastAPI, UploadFile  # noqa: E402
from fastapi.responses import StreamingResponse as FastStreamingResponse  # noqa: E402

fastapi_app = FastAPI()


@fastapi_app.get("/items/{item_id}")
async def fa_item(item_id: int, q: str | None = None):
    return {"item_id": item_id, "q": q}


@fastapi_app.post("/items")
async def fa_create(item: dict):
    return {"received": item}


@fastapi_app.post("/files")
async def fa_file(file: UploadFile):
    data = await file.read()
    return {"filename": file.filename, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@fastapi_app.get("/stream")
async def fa_stream():
    async def gen():
        for i in range(3):
            yield b"chunk-%d\n" % i
    return FastStreamingResponse(gen())


@fastapi_app.get("/sync")
def fa_sync():
    return {"sync": True}
