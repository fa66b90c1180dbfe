"""A Django Channels project in one module: HTTP through Django, WebSockets through consumers.

For tests/engine/test_ws_frameworks.py. ``GET /recorded`` answers what the
consumers recorded (the close codes they were told about).
"""

from __future__ import annotations

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="corral-channels-tests",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
)
django.setup()

from channels.generic.websocket import AsyncJsonWebsocketConsumer, WebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path, re_path  # noqa: E402

RECORDED: dict[str, object] = {}


def recorded(request):
    return JsonResponse(RECORDED)


urlpatterns = [path("recorded", recorded)]


class EchoConsumer(WebsocketConsumer):
    """A sync consumer (Channels runs it in a thread): echo text and bytes."""

    def connect(self) -> None:
        self.accept(subprotocol=(self.scope["subprotocols"] or [None])[0])

    def receive(self, text_data=None, bytes_data=None) -> None:
        if text_data is not None:
            self.send(text_data=f"sync echo: {text_data}")
        else:
            self.send(bytes_data=bytes_data[::-1])

    def disconnect(self, code) -> None:
        RECORDED["echo"] = code


class RoomConsumer(AsyncJsonWebsocketConsumer):
    """An async JSON consumer in a group: a message to the room reaches every member."""

    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        if self.room == "forbidden":
            await self.close()  # before accept: the handshake is refused
            return
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def receive_json(self, content, **kwargs) -> None:
        await self.channel_layer.group_send(self.room, {"type": "room.message", "text": content["text"]})

    async def room_message(self, event) -> None:
        await self.send_json({"room": self.room, "text": event["text"]})

    async def disconnect(self, code) -> None:
        if self.room != "forbidden":
            await self.channel_layer.group_discard(self.room, self.channel_name)
            RECORDED[f"room-{self.room}"] = code


application = ProtocolTypeRouter({
    "http": get_asgi_application(),
    "websocket": URLRouter([
        path("ws/echo", EchoConsumer.as_asgi()),
        re_path(r"^ws/room/(?P<room>\w+)$", RoomConsumer.as_asgi()),
    ]),
})
