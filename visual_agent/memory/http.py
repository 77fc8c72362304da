"""`EventRoutes`: `GET /events` (the store's events as JSON) and `GET /events/<id>.jpg` (an event's thumbnail).

Registered with `WebRTCServer.add_route`, so the page server's guard applies first (Host/Origin checks and, with
`webrtc.auth_token`, the bearer token, as for `/metrics`); `webrtc` imports nothing of ours. Bad parameters get a
400 with a JSON `{"error"}` saying which and why; a store that cannot be read, a 503 with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .query import EventQuery, EventQueryError
from .schema import IMAGE_SLOTS
from .store import EventStore, StoreUnavailableError

__all__ = ["EVENTS_PATH", "EventRoutes"]

logger = logging.getLogger(__name__)

EVENTS_PATH = "/events"
_THUMBNAIL_PATH = EVENTS_PATH + r"/{event_id:[0-9]{1,15}}.jpg"
"""Only digits reach the handler: a traversal or any other name is a 404 of the router."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class EventRoutes:
    """The two routes over one store; `register(server.add_route)` before the server starts."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def register(self, add_route: Callable[[str, str, Handler], None]) -> None:
        add_route("GET", EVENTS_PATH, self.list_events)
        add_route("GET", _THUMBNAIL_PATH, self.thumbnail)

    async def list_events(self, request: web.Request) -> web.Response:
        params: dict[str, Any] = {}
        for key in request.query:
            values = request.query.getall(key)
            if len(values) > 1:
                return _error(400, f"{key[:40]!r} given {len(values)} times; give each parameter once")
            params[key] = values[0]
        try:
            query = EventQuery.from_mapping(params, strings=True)
            events = await self.store.aquery(query)
        except EventQueryError as exc:
            return _error(400, str(exc))
        except StoreUnavailableError as exc:
            return _error(503, str(exc))
        return web.json_response({"events": [e.as_dict() for e in events]})

    async def thumbnail(self, request: web.Request) -> web.Response:
        event_id = int(request.match_info["event_id"])
        n_text = request.query.get("n", "0")
        if not n_text.isdigit() or int(n_text) >= IMAGE_SLOTS:
            return _error(400, f"n must be an image number from 0 to {IMAGE_SLOTS - 1}")
        try:
            jpeg = await self.store.athumbnail(event_id, int(n_text))
        except StoreUnavailableError as exc:
            return _error(503, str(exc))
        if jpeg is None:
            return _error(404, f"no image {n_text} of event {event_id}")
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
