"""Real WebSocket clients: the `websockets` library (asyncio and sync) and headless Chromium."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from engine_util import served, wait_until
from ws_util import ws_url

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def ws_server():
    yield from served("ws_apps:app")


def test_permessage_deflate_is_negotiated_and_round_trips(ws_server):
    with connect(ws_url(ws_server, "/echo"), open_timeout=20) as ws:  # the client offers it by default
        extensions = ws.response.headers["Sec-WebSocket-Extensions"]
        assert extensions.startswith("permessage-deflate")
        assert "server_max_window_bits=12" in extensions and "client_max_window_bits=12" in extensions
        text = "compressible " * 50000
        ws.send(text)
        assert ws.recv(timeout=20) == text
        data = os.urandom(300000)
        ws.send(data)
        assert ws.recv(timeout=20) == data


def test_permessage_deflate_can_be_turned_off(make_server):
    proc = make_server(app="ws_apps:app", settings={"ws_per_message_deflate": False})
    with connect(ws_url(proc, "/echo"), open_timeout=20) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv(timeout=20) == "plain"


def test_large_messages_up_to_the_limit_and_1009_past_it(make_server):
    proc = make_server(app="ws_apps:app", settings={"ws_max_message_size": 2 * 1024 * 1024})
    with connect(ws_url(proc, "/echo"), open_timeout=20, max_size=None, compression=None) as ws:
        big = os.urandom(2 * 1024 * 1024)
        ws.send(big)
        assert ws.recv(timeout=30) == big
        ws.send(big + b"!")
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=30)
    assert info.value.rcvd.code == 1009


def test_client_ping_gets_its_pong(ws_server):
    with connect(ws_url(ws_server, "/echo"), open_timeout=20) as ws:
        pong = ws.ping(b"are you there")
        assert pong.wait(timeout=20)


def test_many_concurrent_asyncio_clients(ws_server):
    async def one(i: int) -> list[str]:
        async with websockets.connect(ws_url(ws_server, f"/echo?id=many-{i}"), open_timeout=30) as ws:
            got = []
            for j in range(10):
                await ws.send(f"{i}-{j}")
                got.append(await asyncio.wait_for(ws.recv(), 30))
            return got

    async def main() -> list[list[str]]:
        return await asyncio.gather(*(one(i) for i in range(100)))

    results = asyncio.run(main())
    assert results == [[f"{i}-{j}" for j in range(10)] for i in range(100)]
    # Each handler saw its client leave with the code it sent (1000 from `async with`).
    wait_until(lambda: all(httpx.get(f"{ws_server.url}/events?id=many-{i}", timeout=20).json()[-1:] ==
                           [{"disconnect": 1000, "reason": ""}] for i in (0, 50, 99)),
               what="the handlers to see the close")


PAGE = """<!doctype html><html><body><p id="out">pending</p><script>
const ws = new WebSocket("ws://" + location.host + "/echo?id=chromium");
ws.onopen = () => ws.send("hello from chromium");
ws.onmessage = (e) => { document.getElementById("out").textContent = "echo:" + e.data; ws.close(4000, "got " + e.data); };
</script><script src="/closed?id=chromium"></script></body></html>"""


def test_chromium_page_talks_over_a_websocket(make_server, tmp_path):
    assert CHROMIUM.exists(), "Debian's chromium is needed (make test installs it: apt-get install chromium)"
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    proc = make_server(app="ws_apps:app", env={"WS_TEST_PAGE": str(page)})
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           f"{proc.url}/page"]
    out = subprocess.run(cmd, capture_output=True, timeout=180)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-3000:]
    # The page's last script is served only once the app has seen the socket close, so the page's
    # load event, and the DOM chromium dumps, come after the echo and the close. (Without it, under
    # load, --virtual-time-budget could run out first: chromium left with 1001, "going away".)
    events = httpx.get(f"{proc.url}/events?id=chromium", timeout=20).json()
    assert events[-1:] == [{"disconnect": 4000, "reason": "got hello from chromium"}]
    assert b'<p id="out">echo:hello from chromium</p>' in out.stdout, out.stdout[-2000:]
