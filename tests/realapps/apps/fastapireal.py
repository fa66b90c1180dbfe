"""A FastAPI app as its users write one, for tests/realapps/test_fastapi.py (served by corral and uvicorn).

It uses the parts of FastAPI and Starlette that lean on the server: path and
query parameters with pydantic validation (422), a header dependency that
answers 401, form and file uploads (python-multipart), a StreamingResponse,
Server-Sent Events from an endless generator, and BackgroundTasks that run
after the response went out. ``REALAPPS_FASTAPI_OUT`` names the directory the
background tasks write into.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Annotated, AsyncIterator

from fastapi import BackgroundTasks, Depends, FastAPI, File, Form, Header, HTTPException, Query, UploadFile
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

OUT = Path(os.environ.get("REALAPPS_FASTAPI_OUT", "."))
TOKEN = "s3cret-token"

app = FastAPI(title="realapps")

# Streams that ended, by how: the test waits for a client's departure to reach the app.
sse_state = {"started": 0, "closed": 0}


class Item(BaseModel):
    name: str = Field(min_length=1, max_length=50)
    price: float = Field(gt=0)
    tags: list[str] = []


class Stored(Item):
    id: int


ITEMS: dict[int, Stored] = {1: Stored(id=1, name="hammer", price=9.5, tags=["tools"])}


def caller(x_token: Annotated[str | None, Header()] = None) -> str:
    """The header-based auth dependency: 401 (with a challenge) without the right token."""
    if x_token != TOKEN:
        raise HTTPException(status_code=401, detail="missing or wrong X-Token",
                            headers={"WWW-Authenticate": "Token"})
    return "tester"


@app.get("/")
async def root() -> dict[str, str]:
    return {"app": "realapps-fastapi"}


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, object]:
    item = ITEMS.get(item_id)
    if item is None:
        raise HTTPException(status_code=404, detail=f"item {item_id} not found")
    return {"item": item.model_dump(), "q": q, "limit": limit}


@app.post("/items", status_code=201)
async def create_item(item: Item, user: Annotated[str, Depends(caller)]) -> Stored:
    # A fixed id: the same request to two servers makes the same answer.
    stored = Stored(id=100 + len(item.name), **item.model_dump())
    return stored


@app.get("/me")
def me(user: Annotated[str, Depends(caller)]) -> dict[str, str]:  # a sync endpoint: run in the threadpool
    return {"user": user}


@app.post("/form")
async def form(name: Annotated[str, Form()], count: Annotated[int, Form()],
               extras: Annotated[list[str], Form()] = []) -> dict[str, object]:  # noqa: B006 (FastAPI idiom)
    return {"name": name, "count": count, "extras": extras}


@app.post("/upload")
async def upload(file: Annotated[UploadFile, File()], note: Annotated[str, Form()] = "") -> dict[str, object]:
    data = await file.read()
    return {"filename": file.filename, "content_type": file.content_type, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "note": note}


@app.get("/stream")
async def stream(lines: int = 50) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(lines):
            if i % 10 == 0:
                await asyncio.sleep(0.01)  # a real await: the response goes out in several writes
            yield json.dumps({"line": i}).encode() + b"\n"
    return StreamingResponse(body(), media_type="application/x-ndjson")


@app.get("/events")
async def events() -> StreamingResponse:
    """Server-Sent Events until the client leaves (it never ends on its own)."""
    async def body() -> AsyncIterator[str]:
        sse_state["started"] += 1
        n = 0
        try:
            while True:
                yield f"id: {n}\nevent: tick\ndata: {json.dumps({'n': n})}\n\n"
                n += 1
                await asyncio.sleep(0.02)
        finally:
            sse_state["closed"] += 1
    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@app.get("/events/state")
async def events_state() -> dict[str, int]:
    return sse_state


def write_marker(name: str, content: str) -> None:
    """A background task (sync: Starlette runs it in its threadpool) that runs after the response was sent.

    It first waits for the test's go-ahead (``NAME.go``), which the test gives
    only once it holds the response: a server that ran the task before sending
    the response would leave the request hanging, and the file unwritten.
    """
    deadline = time.monotonic() + 60
    while not (OUT / f"{name}.go").exists():
        if time.monotonic() > deadline:
            content = "the go-ahead never came: was the response held back until the task ran?"
            break
        time.sleep(0.02)
    (OUT / f"{name}.tmp").write_text(content)
    (OUT / f"{name}.tmp").rename(OUT / name)  # appears whole: the test polls for it


@app.post("/background/{name}", status_code=202)
async def background(name: str, tasks: BackgroundTasks) -> dict[str, str]:
    if not name.isalnum():
        raise HTTPException(status_code=400, detail="name must be alphanumeric")
    tasks.add_task(write_marker, name, f"written after the response for {name}")
    return {"queued": name}


@app.get("/text", response_class=PlainTextResponse)
async def text() -> str:
    return "plain text\n"
