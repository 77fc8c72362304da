"""`EventQueries`: `<prefix>/events/query` as MQTT request/response, with the parameters and answer of `GET /events`.

In: JSON `{"id"?, "source"?, "since"?, "until"?, "q"?, "kind"?, "limit"?}`. Out: `{"id", "events": [...], "error":
null}` to the MQTT 5 response topic (with the asker's correlation data) when it lies under
`mqtt.response_topic_prefixes`, else to `<prefix>/events/result`; a bad request gets `"error": {"type":
"bad_payload", "message"}` there, a response topic outside the prefixes a `forbidden_response_topic` error, a store
that cannot be read `store_unavailable`. Every request gets exactly one answer. It listens on a transport of its
own (the daemon gives it a connection), so event queries never wait behind questions.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ..tasks import cancel_and_wait
from ..topics import Topics, valid_reply_topic
from .query import EventQuery, EventQueryError
from .store import EventStore, StoreUnavailableError

__all__ = ["EventQueries", "MAX_REQUEST_BYTES"]

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096
_ID_MAX_CHARS = 128


class EventQueries:
    """Takes requests off `transport` (subscribe, messages, publish) and answers them from `store`."""

    def __init__(self, store: EventStore, transport: Any, prefix: str) -> None:
        self.store = store
        self.transport = transport
        self.topics = Topics(prefix)
        self.answered = 0
        self.refused = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.transport.subscribe(self.topics.events_query)
        self._task = asyncio.get_running_loop().create_task(self._consume(), name="events-query")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _consume(self) -> None:
        async for msg in self.transport.messages():
            if msg.topic != self.topics.events_query or msg.retain:
                continue
            try:
                await self.handle(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("events: could not answer a query")

    async def handle(self, msg: Any) -> dict[str, Any]:
        """Answer one request message; returns the answer sent."""
        reply_to, correlation = self.topics.events_result, msg.correlation_data
        error: dict[str, str] | None = None
        request_id: Any = None
        if msg.response_topic:
            allowed = getattr(self.transport, "response_topic_allowed", None)
            if (allowed(msg.response_topic) if allowed is not None else valid_reply_topic(msg.response_topic)):
                reply_to = msg.response_topic
            else:
                error = {"type": "forbidden_response_topic", "message": "the response topic must lie under "
                         f"mqtt.response_topic_prefixes; this answer went to {reply_to}"}
        events: list[dict[str, Any]] = []
        if error is None:
            try:
                request_id, query = _parse(msg.payload)
                events = [e.as_dict() for e in await self.store.aquery(query)]
            except EventQueryError as exc:
                error = {"type": "bad_payload", "message": str(exc)}
            except StoreUnavailableError as exc:
                error = {"type": "store_unavailable", "message": str(exc)}
        if error is None:
            self.answered += 1
        else:
            self.refused += 1
            logger.warning("events: refused a query on %s: %s", msg.topic, error["message"])
        answer = {"id": request_id, "events": events, "error": error}
        await self.transport.publish(reply_to, json.dumps(answer, ensure_ascii=False).encode("utf-8"),
                                     correlation_data=correlation)
        return answer


def _parse(payload: bytes) -> tuple[Any, EventQuery]:
    """(request id, query) of a request payload; `EventQueryError` says what is wrong."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise EventQueryError(f"the request is {len(payload)} bytes; the limit is {MAX_REQUEST_BYTES}")
    try:
        text = payload.decode("utf-8").strip() or "{}"
        data = json.loads(text, parse_constant=lambda c: None)
    except UnicodeDecodeError:
        raise EventQueryError("the request is not UTF-8; send a JSON object") from None
    except (ValueError, RecursionError):
        raise EventQueryError("the request is not valid JSON; send a JSON object such as {\"q\": \"parcel\"}") from None
    if not isinstance(data, dict):
        raise EventQueryError("the request must be a JSON object")
    request_id = data.pop("id", None)
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (str, int))
                                   or len(str(request_id)) > _ID_MAX_CHARS):
        raise EventQueryError(f"id must be a string or an integer of at most {_ID_MAX_CHARS} characters")
    return request_id, EventQuery.from_mapping(data)
