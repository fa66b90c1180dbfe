"""WebSockets (RFC 6455) for ASGI apps, on the HTTP engine's connections.

* ``handshake``: the opening handshake, checked before the app is called
  (400/426 answered by the engine), permessage-deflate negotiation, the 101.
* ``asgi``: ``WebSocketCycle``, the ASGI ``websocket`` scope and events (spec
  2.4, with the ``websocket.http.response`` extension). The HTTP protocol
  creates one instead of an HTTP cycle for a request whose ``Upgrade`` header
  offers ``websocket`` (``EngineContext.websocket_class``).
* ``connection``: ``WebSocketConnection``, the transport's protocol after the
  101: frames through websockets' sans-IO ``ServerProtocol``, flow control
  both ways, keepalive pings and the closing handshake.

Frames are parsed and written by the ``websockets`` library (its C speedups
unmask), not by hand: see docs/websockets.md for why.
"""

from corral.engine.websocket.asgi import WebSocketCycle

__all__ = ["WebSocketCycle"]
